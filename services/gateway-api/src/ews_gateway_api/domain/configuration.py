"""The site's configuration from a browser or a script (S4, M2): read, change, export, history, On/Off.

- ``GET /api/v1/site/config`` — the configuration in force: the site document (the site file's schema)
  plus ``version``; the ``ETag`` header is the version too.
- ``PUT /api/v1/site/config`` — a whole new document, JSON or YAML (``Content-Type: application/yaml``).
  ``If-Match: <version>`` (or ``version`` in the body) makes it conditional: 409 when another change
  landed since. Validated against the schema and the device profiles first: 400 whose ``detail`` starts
  with the field path (``devices[3].address: …``, also in ``extra.field``); nothing is applied. Stored
  as a ``SiteConfigured`` event (who, when, what changed), and every service applies it live.
- ``GET /api/v1/site/config.yaml`` — the same document as a YAML file (``ews site import`` takes it).
- ``GET /api/v1/site/config/history`` — every version (who, when, how, what changed), newest first;
  ``GET /api/v1/site/config/history/{version}`` — one version's document.
- ``POST /api/v1/site/config/test-device`` ``{"device": {…}, "gateway": {…}?}`` — reads the device once
  through the poller (the bus owner), before it is saved: its values, or why nothing could be read.
- ``PUT /api/v1/devices/{device_id}/enabled`` ``{"enabled": false}`` — a device Off (not polled) or On.

Guards: ``configure-site`` (administrator, installer).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from ews_contracts.events import ProbeReply, ProbeRequest, SiteConfigured
from ews_contracts.roles import Permission
from ews_contracts.site import Site
from ews_contracts.siteconfig import (
    ConfigInvalid,
    ConfigStore,
    VersionConflict,
    check_tariff_changes,
    document_of,
    parse_text,
    retire_removed,
    to_yaml,
    validate_document,
)
from ews_contracts.subjects import poller_rpc
from litestar import Request, Response, Router, get, post, put
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from pydantic import BaseModel, Field

from ..errors import ApiError
from ..guards import current_role, requires
from ..i18n import N_
from ..openapi import error
from ..sites import SITE_PARAMETER, require_own_site, site_state

log = logging.getLogger("ews.gateway-api")
MAX_BODY = 2 * 1024 * 1024  # a 255-device site is ~60 kB of YAML
_VERSION = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')


class Applied(BaseModel):
    version: int = Field(description="The version now in force.")
    changes: list[str] = Field(description="What changed, one line each.")


class VersionView(BaseModel):
    version: int
    occurred_at: datetime
    changed_by: str = Field(description="Role, or 'site file' / 'ews site import' / 'restore'.")
    how: str
    changes: list[str]


class EnabledBody(BaseModel):
    enabled: bool = Field(description="true: polled (On); false: not polled (Off).")


class EnabledView(BaseModel):
    device: str
    enabled: bool
    version: int


def _store(state: State) -> ConfigStore:
    live = getattr(state, "live", None)
    if live is None:
        raise ApiError(503, "unavailable", N_("the event bus (NATS) is unavailable; try again"))
    return live.store


def invalid(problem: ConfigInvalid) -> ApiError:
    error = ApiError(
        400, "invalid-configuration", N_("configuration not applied: %(problem)s"), problem=str(problem)
    )
    error.extra = {"field": problem.path}
    return error


def stale(conflict: VersionConflict, expected: int | None) -> ApiError:
    error = ApiError(
        409,
        "version-conflict",
        N_(
            "the configuration changed since version %(expected)s (now %(current)s): reload it and apply your change again"
        ),
        expected=expected,
        current=conflict.current,
    )
    error.extra = {"version": conflict.current}
    return error


def expected_version(if_match: str | None, document: dict[str, Any] | None = None) -> int | None:
    """The version a writer read: ``If-Match`` first, else ``version`` in the body; None: unconditional."""
    if if_match is not None and if_match.strip() != "*":
        found = _VERSION.match(if_match)
        if not found:
            raise ApiError(
                400, "invalid-request", N_('If-Match: expected the configuration\'s version (e.g. "3")')
            )
        return int(found.group(1))
    if document is not None and "version" in document:
        value = document["version"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid(ConfigInvalid("version", "a whole number (the version you read)"))
        return value
    return None


def config_document(state: State) -> dict[str, Any]:
    """The document in force with its version (what ``GET /api/v1/site/config`` answers)."""
    live = state.live
    return {"version": live.version, **live.event.document}


async def apply_document(
    state: State, document: Any, expected: int | None, role: str, how: str = "api"
) -> SiteConfigured:
    """Validate and store a new version (pages and the API). Raises ApiError 400/409/503."""
    require_own_site(state)
    store = _store(state)
    if isinstance(document, dict):
        document = revived({k: v for k, v in document.items() if k != "version"})
    try:
        site = validate_document(document, state.profiles, site_id=store.site_id)
        check_tariff_changes(state.live.site, site, datetime.now(site.tz).date())
        site = retire_removed(state.live.site, site)
        event = await store.put(site, expected=expected, changed_by=role, how=how)
    except ConfigInvalid as exc:
        raise invalid(exc) from None
    except VersionConflict as exc:
        raise stale(exc, expected) from None
    await _caught_up(state, event.version)
    return event


def revived(document: dict[str, Any]) -> dict[str, Any]:
    """A retired device whose id is a device again is no longer retired (its history continues)."""
    retired, devices = document.get("retired_devices"), document.get("devices")
    if not isinstance(retired, list) or not isinstance(devices, list):
        return document
    ids = {d.get("id") for d in devices if isinstance(d, dict)}
    return {
        **document,
        "retired_devices": [r for r in retired if not (isinstance(r, dict) and r.get("id") in ids)],
    }


async def _caught_up(state: State, version: int, timeout: float = 2.0) -> None:  # noqa: ASYNC109
    """Wait (briefly) until this process follows the version it just stored, so the next page shows it."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while state.live.version < version and loop.time() < deadline:  # noqa: ASYNC110 - no event for it
        await asyncio.sleep(0.02)


async def set_device_enabled(state: State, device_id: str, enabled: bool, role: str) -> EnabledView:
    """A device On/Off as a new version of the configuration (retried once when another change landed)."""
    require_own_site(state)
    for attempt in range(3):
        live = state.live
        site: Site = live.site
        n = next((i for i, d in enumerate(site.devices) if d.id == device_id), None)
        if n is None:
            if site.virtual_device(device_id) is not None:
                raise ApiError(
                    400,
                    "invalid-request",
                    N_("%(device)s is a virtual device: it is computed, not polled, so it has no On/Off"),
                    device=device_id,
                )
            raise ApiError(404, "unknown-device", N_("unknown device %(device)s"), device=device_id)
        if site.devices[n].enabled == enabled:
            return EnabledView(device=device_id, enabled=enabled, version=live.version)
        document = document_of(site)
        document["devices"][n]["enabled"] = enabled  # stored without defaults (document_of) either way
        try:
            event = await apply_document(state, document, live.version, role, how="device-enabled")
        except ApiError as exc:
            if exc.status_code == 409 and attempt < 2:
                await _caught_up(state, exc.extra["version"])
                continue
            raise
        return EnabledView(device=device_id, enabled=enabled, version=event.version)
    raise AssertionError("unreachable")


async def test_device(state: State, device: dict[str, Any], gateway: dict[str, Any] | None) -> ProbeReply:
    """Read a device once through the bus owner (the poller), before it is saved."""
    timeout = 15.0
    try:
        msg = await state.broker.request(
            ProbeRequest(device=device, gateway=gateway).model_dump(mode="json"),
            subject=poller_rpc(state.site.site, "test-device"),
            timeout=timeout,
        )
    except Exception as exc:
        log.warning(
            "test read: no answer from the poller: %s", " ".join(str(exc).split()) or type(exc).__name__
        )
        raise ApiError(
            503,
            "poller-unavailable",
            N_("the poller (the bus owner) did not answer; is it running?"),
            headers={"Retry-After": "5"},
        ) from None
    return ProbeReply.model_validate_json(msg.body)


async def history(state: State) -> list[SiteConfigured]:
    return list(reversed(await _store(state).history()))


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too-large", N_("the configuration is larger than %(limit)s"), limit="2 MB")
    if not raw.strip():
        raise invalid(ConfigInvalid("", "empty body: send the site document (JSON or YAML)"))
    try:
        return parse_text(raw)
    except ConfigInvalid as exc:
        raise invalid(exc) from None


_configure = [requires(Permission.CONFIGURE_SITE)]
_CONFLICT = error(
    "The configuration changed since the version read (version-conflict): `extra.version` is the current one."
)


@get("/site/config", guards=_configure, summary="The configuration in force, with its version")
async def get_config(request: Request) -> Response[dict[str, Any]]:
    document = config_document(site_state(request))
    return Response(document, headers={"ETag": f'"{document["version"]}"', "Cache-Control": "no-store"})


@put(
    "/site/config",
    guards=_configure,
    summary="Replace the configuration (JSON or YAML; If-Match: version)",
    status_code=200,
    opt={"content_types": ("application/json", "application/yaml", "application/x-yaml", "text/yaml")},
    request_max_body_size=MAX_BODY,
    responses={409: _CONFLICT},
)
async def put_config(request: Request) -> Response[Applied]:
    document = await _body(request)
    expected = expected_version(
        request.headers.get("if-match"), document if isinstance(document, dict) else None
    )
    event = await apply_document(site_state(request), document, expected, current_role(request) or "unknown")
    return Response(
        Applied(version=event.version, changes=event.changes), headers={"ETag": f'"{event.version}"'}
    )


@get(
    "/site/config.yaml",
    guards=_configure,
    summary="The configuration in force as a YAML site file",
    media_type="application/yaml",
    # the body is YAML text, but what it holds is the site document (the same as GET /site/config's)
    responses={
        200: ResponseSpec(
            dict[str, Any],
            media_type="application/yaml",
            description="The site document as YAML (an attachment named <site>-config-v<version>.yaml).",
            generate_examples=False,
        )
    },
)
async def get_config_yaml(request: Request) -> Response[str]:
    live = site_state(request).live
    text = f"# site configuration version {live.version} ({live.event.occurred_at:%Y-%m-%d %H:%M} UTC)\n"
    text += to_yaml(live.event.document)
    return Response(
        text,
        media_type="application/yaml; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{live.site.site}-config-v{live.version}.yaml"',
            "ETag": f'"{live.version}"',
            "Cache-Control": "no-store",
        },
    )


@get("/site/config/history", guards=_configure, summary="Every version of the configuration, newest first")
async def get_history(request: Request) -> list[VersionView]:
    return [
        VersionView(
            version=e.version,
            occurred_at=e.occurred_at,
            changed_by=e.changed_by,
            how=e.how,
            changes=e.changes,
        )
        for e in await history(site_state(request))
    ]


@get("/site/config/history/{version:int}", guards=_configure, summary="One version's document")
async def get_version(request: Request, version: int) -> dict[str, Any]:
    for event in await history(site_state(request)):
        if event.version == version:
            return {"version": event.version, **event.document}
    raise ApiError(404, "not-found", N_("no configuration version %(version)s"), version=version)


class TestDeviceBody(BaseModel):
    device: dict[str, Any] = Field(
        description="The device as in the site document (id, name, profile, gateway, address …).",
        examples=[
            {
                "id": "m9",
                "name": "New meter",
                "profile": "power-meter-access",
                "gateway": "gw1",
                "address": 40,
            }
        ],
    )
    gateway: dict[str, Any] | None = Field(default=None, description="Its gateway, when not saved yet.")


@post(
    "/site/config/test-device",
    guards=_configure,
    summary="Read a device once before saving it (through the poller, the bus owner)",
    status_code=200,
)
async def post_test_device(request: Request, data: TestDeviceBody) -> ProbeReply:
    return await test_device(site_state(request), data.device, data.gateway)


@put(
    "/devices/{device_id:str}/enabled",
    guards=_configure,
    summary="A device On (polled) or Off",
    status_code=200,
    responses={409: _CONFLICT},
)
async def put_enabled(request: Request, device_id: str, data: EnabledBody) -> EnabledView:
    return await set_device_enabled(
        site_state(request), device_id, data.enabled, current_role(request) or "unknown"
    )


router = Router(
    path="/api/v1",
    parameters=SITE_PARAMETER,
    route_handlers=[
        get_config,
        put_config,
        get_config_yaml,
        get_history,
        get_version,
        post_test_device,
        put_enabled,
    ],
    tags=["configuration"],
)
