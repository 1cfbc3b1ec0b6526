"""The Litestar application: discovers the domain modules, wires sessions, the bus, Redis and ClickHouse.

Every module of ``ews_gateway_api.domain`` (the JSON API) and ``ews_gateway_api.pages`` (the web pages)
that exports ``router`` is mounted (no central list); one that also exports ``lifespan`` (an async context manager factory taking the app) gets it entered after
the core lifespan, in module-name order, and exited in reverse.

``app.state`` (set by the core lifespan, available to every handler and domain lifespan):

- ``settings`` (``ews_contracts.settings.Settings``), ``site`` and ``live`` (the site's configuration in force,
  followed live; None at the hub), ``identity`` (whose codes, sessions and tokens: the site's id, or ``hub``),
  ``hub_sites`` (at the hub: every site it serves, ``sites.HubSites``; None on a box). Handlers read the site
  of a request with ``sites.site_state(request)``, never these directly;
- ``broker`` — a connected FastStream NATS broker (auth request/reply, publishing events);
- ``redis`` — a ``redis.asyncio`` client (live state, records; also backs the sessions store);
- ``store`` — the ClickHouse/chDB ``Store`` (``None`` while unreachable; see ``storage.require_store``)
  and ``database``, the analytics database name. The schema is the aggregator's business: the API
  answers ``/health`` without it and ``/api/v1/consumption`` with 503 until it exists.
"""

from __future__ import annotations

import gc
import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import ModuleType
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from ews_contracts.bus import ensure_hub_streams, ensure_streams, make_broker
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import Settings
from ews_contracts.siteconfig import LiveSite
from ews_contracts.text import one_line
from litestar import Litestar, MediaType, Request, Response, Router
from litestar.config.compression import CompressionConfig
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig
from litestar.stores.redis import RedisStore
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from . import domain, pages
from .bearer import bearer_middleware
from .errors import ApiError, detail_for, error_code, reader_language
from .guards import public
from .i18n import N_
from .openapi import document_errors
from .pages import _page
from .security import check_request, complete_allow, security_headers
from .sessions import SESSION_COOKIE, HashedKeyStore, session_config
from .sites import HubSites, forget_summaries, keep_site_in_redirects
from .storage import open_store
from .web import API_DOCS_PATH, TEMPLATES_DIR, ApiDocs

log = logging.getLogger("ews.gateway-api")
MAX_REQUEST_BODY = 1024 * 1024  # bytes; larger → 413 (routes that take files set their own limit)

Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


def discover() -> list[ModuleType]:
    """Every module (or package) of ``domain`` and ``pages`` that exports ``router``, by name."""
    found = []
    for package in (domain, pages):
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            if getattr(module, "router", None) is not None:
                found.append(module)
    return found


def is_page(request: Request[Any, Any, Any]) -> bool:
    """A web page (HTML errors) rather than the JSON API, the schema or a static file."""
    path = request.url.path
    return not path.startswith(("/api/", "/schema", "/static/", "/health", "/ready", "/metrics"))


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Pages get an error page in the person's language; the API a JSON body with a stable ``code`` and
    the ``detail`` in the reader's language (session, else Accept-Language)."""
    if is_page(request):
        return _page.error_page(request, exc)
    body: dict[str, Any] = {
        "status_code": exc.status_code,
        "code": error_code(exc),
        "detail": detail_for(request, exc),
    }
    if exc.extra:
        body["extra"] = exc.extra
    return Response(
        body,
        status_code=exc.status_code,
        headers={**(exc.headers or {}), "Content-Language": reader_language(request)},
        media_type=MediaType.JSON,
    )


def too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """A request body nested deeper than the decoder follows (e.g. 1,000 brackets): the client's error."""
    error = ApiError(400, "invalid-request", N_("the request body is nested too deeply"))
    return http_error(request, error)


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A bug or an unforeseen failure: logged on one line at ERROR (the request, its route template, the
    exception's type and message), the traceback only at DEBUG; answered with a page for a page, JSON for
    the API, that reveals nothing of it."""
    where = one_line(f"{request.method} {request.url.path}", limit=200)  # a %0A in the path stays one line
    template = request.scope.get("path_template")
    if template and template != request.url.path:
        where += f" (route {one_line(template, limit=200)})"
    log.error("%s: unhandled %s: %s", where, type(exc).__name__, one_line(exc))
    log.debug("%s: traceback of the %s above", where, type(exc).__name__, exc_info=exc)
    if is_page(request):
        return _page.error_page(request, exc)
    return Response(
        {"status_code": 500, "code": "internal-error", "detail": "internal error (logged); try again"},
        status_code=500,
        media_type=MediaType.JSON,
    )


def configure_templates(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.add_extension("jinja2.ext.i18n")
    env.add_extension("jinja2.ext.do")
    env.newstyle_gettext = True  # type: ignore[attr-defined]  # {% trans %} passes variables as keywords
    env.policies["ext.i18n.trimmed"] = True  # {% trans %} blocks: whitespace folded, msgids stay clean
    env.trim_blocks = True
    env.lstrip_blocks = True


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """400 whose one-line ``detail`` names the offending field (Litestar's only says 'Validation failed')."""
    if is_page(request):
        return _page.error_page(request, exc)
    detail = one_line(exc.detail, limit=2000)
    extra = exc.extra if isinstance(exc.extra, list) else []
    if extra and isinstance(extra[0], dict):
        first = extra[0]
        where = first.get("key") or first.get("source") or ""
        detail = f"{detail}: {where + ' ' if where else ''}{one_line(first.get('message', ''))}".strip()
    elif exc.detail.startswith("Validation failed") and extra:
        detail = f"{detail}: {one_line(str(extra[0]))}"
    return Response(
        {"status_code": 400, "code": "invalid-request", "detail": detail, "extra": extra},
        status_code=400,
        media_type=MediaType.JSON,
    )


def redis_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("%s %s: Redis unavailable: %s", request.method, request.url.path, one_line(str(exc)))
    return Response(
        {
            "status_code": 503,
            "code": "store-unavailable",
            "detail": "the session and live-state store (Redis) is unavailable; try again",
        },
        status_code=503,
        headers={"Retry-After": "5"},
        media_type=MediaType.JSON,
    )


def create_app(settings: Settings) -> Litestar:
    modules = discover()
    hub = settings.hub
    site = None if hub else settings.site  # the hub has no site file: it serves the sites it finds (sites.py)
    identity = settings.identity  # whose codes, sessions and tokens: the site's, or the hub's own
    redis_client = aioredis.from_url(settings.redis_url)

    @asynccontextmanager
    async def core(app: Litestar) -> AsyncIterator[None]:
        broker = make_broker(settings.nats_url, "gateway-api")
        await broker.connect()
        app.state.broker = broker
        try:
            async with AsyncExitStack() as stack:
                js = broker.connection.jetstream()
                if hub:
                    await ensure_hub_streams(js)  # the hub's own audit (token refusals)
                    # every site whose streams reach the hub, each followed live from EWS_CONFIG_<site>
                    registry = HubSites(js, on_change=lambda site_id: forget_summaries(app.state, site_id))
                    app.state.hub_sites = await stack.enter_async_context(registry.running())
                else:
                    await ensure_streams(broker)
                    # the configuration in force (seeded from the site file on the first start), followed live
                    live = await LiveSite.open(js, settings.site_path)
                    app.state.live = live
                    app.state.site = live.site

                    def follow(new_site, event) -> None:  # noqa: ARG001
                        app.state.site = new_site
                        forget_summaries(app.state)

                    live.on_change(follow)
                    await live.follow()
                app.state.store = await open_store(settings)
                # start-up objects (modules, site, profiles, templates) out of the collector's view: a full
                # collection then scans only what requests create (no 100 ms pause in the middle of a page)
                gc.collect()
                gc.freeze()
                log.info(
                    "gateway-api for %s: domains %s",
                    "every site of the hub" if hub else f"site {site.site}",
                    ", ".join(m.__name__.rsplit(".", 1)[-1] for m in modules),
                )
                yield
        finally:
            try:
                if getattr(app.state, "live", None) is not None:
                    await app.state.live.close()
                await broker.stop()
            finally:
                await redis_client.aclose()

    lifespans: list[Lifespan] = [core]
    lifespans += [m.lifespan for m in modules if callable(getattr(m, "lifespan", None))]
    handlers: list[ControllerRouterHandler] = [m.router for m in modules]

    app = Litestar(
        route_handlers=handlers,
        lifespan=lifespans,
        middleware=[
            session_config(settings.secure_cookies).middleware,
            # Authorization: Bearer <machine token> on /api/v1 (never the pages): bearer.py, guards.py
            bearer_middleware,
            # requests by route template (not raw path) and status, with a latency histogram (/metrics)
            PrometheusConfig(
                app_name="ews",
                prefix="ews_gateway_api",
                group_path=True,
                exclude=["^/metrics$", "^/static/"],
                buckets=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
            ).middleware,
        ],
        # security.py: cross-site requests and the API's content types refused (after the guards, before
        # the body is read); the security headers on every response, errors and static files included
        before_request=check_request,
        before_send=[security_headers, complete_allow, keep_site_in_redirects],
        request_max_body_size=MAX_REQUEST_BODY,
        stores={"sessions": HashedKeyStore(RedisStore(redis_client, namespace=f"ews:{identity}:session"))},
        logging_config=None,  # the process's logging (set up by `ews`) applies: one format for every service
        template_config=TemplateConfig(
            directory=TEMPLATES_DIR, engine=JinjaTemplateEngine, engine_callback=configure_templates
        ),
        compression_config=CompressionConfig(
            backend="gzip", gzip_compress_level=6, minimum_size=1024, exclude_opt_key="skip_compression"
        ),
        exception_handlers={
            HTTPException: http_error,
            RecursionError: too_deep,
            Exception: unexpected_error,
            ValidationException: validation_error,
            redis.exceptions.ConnectionError: redis_unavailable,
            redis.exceptions.TimeoutError: redis_unavailable,
        },
        openapi_config=OpenAPIConfig(
            title="Energy web server API",
            version="1.0.0",
            description=(
                "JSON API of the energy web server. Log in with POST /api/v1/auth/login (PIN, and the PUK "
                f"when the browser has not done its PUK step); the session lives in the HttpOnly cookie "
                f"'{SESSION_COOKIE}'. Programs use a machine token instead (created by the administrator: "
                "POST /api/v1/tokens, or Configuration → Machine tokens), sent as 'Authorization: Bearer "
                "ews_…' to /api/v1 only; it has its role's permissions except managing codes and tokens, and "
                "no session (Logout, the session's language and code changes answer 403). Anonymous calls "
                "and invalid tokens get 401, a role without the permission 403. Every error has a JSON body: "
                "status_code, a stable code, a one-line detail in the reader's language, and extra details "
                "when there are any."
            ),
            components=Components(
                security_schemes={
                    "session": SecurityScheme(
                        type="apiKey", name=SESSION_COOKIE, security_scheme_in="cookie"
                    ),
                    "bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="ews_<id>_<secret>",
                        description="A machine token (Configuration → Machine tokens, POST /api/v1/tokens).",
                    ),
                }
            ),
            security=[{"session": []}, {"bearer": []}],
            openapi_router=Router(
                path=API_DOCS_PATH, route_handlers=[], guards=[public], include_in_schema=False
            ),
            # the JSON and YAML documents and one viewer, vendored (offline LAN: no CDN)
            render_plugins=[ApiDocs(), JsonRenderPlugin(), YamlRenderPlugin()],
        ),
        state=None,
        debug=False,
    )
    document_errors(app)  # 401, 403, 404 … of every route, from its guards and parameters (openapi.py)
    app.state.settings = settings
    app.state.site = site
    app.state.identity = identity
    app.state.hub_sites = None  # at the hub: the sites it serves (sites.HubSites), set on start-up
    app.state.summary_cache = {}
    app.state.profiles = load_profiles(
        settings.profiles_dir
    )  # once: devices and commands read them per request
    app.state.redis = redis_client
    app.state.token_use_noted = {}  # bearer.py: token id -> when its use was last noted (monotonic)
    app.state.broker = None
    app.state.live = None
    app.state.store = None
    app.state.database = settings.clickhouse_database
    return app
