"""Which site a request is about: one site on a box or an edge, every site at the hub (DESIGN.md "Multi-site").

Every domain function and page reads the site it serves from ``site_state(request)``: a view of
``app.state`` for one site — ``site`` (the configuration in force), ``live`` (its ``LiveSite``; versions,
history), ``database`` (its ClickHouse database), ``names`` (its streams, ``ews_contracts.streamnames``) —
that gives everything else (``redis``, ``store``, ``profiles``, ``settings`` …) from the app's state.

- **A box or an edge** (the default): the one site of the site file, followed live (``app.state.site``,
  ``app.state.live``, ``app.state.database``: exactly as before the hub existed).
- **The hub** (``EWS_HUB=1``, no site file): ``HubSites`` finds the sites from the hub's streams
  (``hub_sites``: a site is there once its edge sourced ``EWS_READINGS_<site>`` and ``EWS_CONFIG_<site>``;
  checked every ``DISCOVER_EVERY`` seconds, so a new edge appears without anything configured), follows
  each one's configuration from ``EWS_CONFIG_<site>`` and reads its figures from ``hub_database(site)``.

The site of a request: ``?site=<id>`` (every site-scoped route takes it, ``SITE_PARAMETER``), else the
``ews_site`` cookie (set by a page opened with ``?site=``: the links, forms and HTMX requests of the pages
keep the chosen site without each carrying it), else the only site. Several sites and none chosen: 400
naming them from the JSON API, the first site on a page (its header names it, beside the picker); an
empty or malformed ``?site=``: 400 (site: not a site id); an unknown one: 404.

Identity: the codes, sessions and machine tokens belong to ``identity`` (``Settings.identity``): the
site's id on a box or an edge, ``hub`` at the hub (its own four roles, which see every site).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ews_contracts.hub import hub_database, hub_sites
from ews_contracts.site import ID_PATTERN, Site
from ews_contracts.siteconfig import LiveSite
from ews_contracts.streamnames import BOX, StreamNames, streams_for
from ews_contracts.text import one_line
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.params import Parameter
from litestar.types import Message, Scope

from .errors import ApiError
from .i18n import N_

log = logging.getLogger("ews.gateway-api.sites")

SITE_COOKIE = "ews_site"
API_PATH = "/api/"
DISCOVER_EVERY = 10.0  # seconds between two looks at the hub's streams for new sites

SITE_PARAMETER = {
    "site": Parameter(
        str | None,
        query="site",
        required=False,
        default=None,
        pattern=ID_PATTERN,
        max_length=64,
        description="The site (GET /api/v1/sites lists them). Optional where there is one site (a box, or a "
        "hub with one site); at a hub with several sites, required (400 without it); an unknown site: 404.",
    )
}


@dataclass(frozen=True)
class SiteEntry:
    """One site the gateway serves: its configuration followed live, its database and its streams."""

    id: str
    live: LiveSite | None  # None only on a box whose configuration is not loaded yet (before start-up)
    database: str
    names: StreamNames

    def site(self, fallback: Site | None = None) -> Site:
        return self.live.site if self.live is not None else fallback  # type: ignore[return-value]


class SiteState:
    """``app.state`` seen from one site (module doc): ``site``, ``live``, ``database``, ``names``; any other
    attribute is the app's."""

    def __init__(
        self, state: Any, live: LiveSite | None, database: str, names: StreamNames, box: bool
    ) -> None:
        self.__dict__.update(_state=state, live=live, database=database, names=names, _box=box)

    @property
    def site(self) -> Site:
        """The configuration in force now (a change applied during the request is seen at once)."""
        own = self.__dict__
        return own["_state"].site if own["_box"] else own["live"].site

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_state"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("site", "live", "database", "names"):
            raise AttributeError(f"{name} is the request's site's: change the app's state instead")
        setattr(self.__dict__["_state"], name, value)

    @property
    def site_id(self) -> str:
        return self.site.site


def is_hub(state: Any) -> bool:
    return getattr(state, "hub_sites", None) is not None


def box_state(state: Any) -> SiteState:
    """The one site of a box or an edge (``app.state.site`` and ``app.state.live``, followed live)."""
    live, database = getattr(state, "live", None), getattr(state, "database", "")  # (an app of a test: none)
    return SiteState(state, live, database, BOX, box=True)


def entry_state(state: Any, entry: SiteEntry) -> SiteState:
    assert entry.live is not None
    return SiteState(state, entry.live, entry.database, entry.names, box=False)


def all_site_states(state: Any) -> list[SiteState]:
    """Every site the gateway serves, by id."""
    if not is_hub(state):
        return [box_state(state)]
    return [entry_state(state, e) for e in state.hub_sites.entries()]


def _chosen(request: Request[Any, Any, Any]) -> tuple[str | None, bool]:
    """The site asked for and whether it came from the address (else the cookie)."""
    asked = request.query_params.get("site")
    if asked is not None:  # ?site= given, even empty (then refused: not a site id)
        return asked, True
    return request.cookies.get(SITE_COOKIE) or None, False


def site_state(request: Request[Any, Any, Any]) -> SiteState:
    """The site of ``request`` (module doc): 400 when several sites are served and none is chosen, 404 for
    an unknown ``?site=``, 503 at a hub no site has reached yet."""
    cached = request.scope.get("ews_site_state")  # type: ignore[typeddict-item]
    if cached is not None:
        return cached
    state = request.app.state
    asked, explicit = _chosen(request)
    if asked is not None and not re.match(ID_PATTERN, asked):
        if explicit:
            raise ApiError(
                400, "invalid-request", N_("site: not a site id (%(pattern)s)"), pattern=ID_PATTERN
            )
        asked = None  # a stale or tampered cookie: ignored
    if not is_hub(state):
        one = box_state(state)
        if asked and explicit and asked != one.site.site:
            raise ApiError(
                404,
                "unknown-site",
                N_("unknown site %(site)s: use %(choices)s"),
                site=repr(asked),
                choices=one.site.site,
            )
        found = one
    else:
        entries = {e.id: e for e in state.hub_sites.entries()}
        if asked and asked in entries:
            found = entry_state(state, entries[asked])
        elif asked and explicit:
            raise ApiError(
                404,
                "unknown-site",
                N_("unknown site %(site)s: use %(choices)s"),
                site=repr(asked),
                choices=", ".join(entries) or "-",
            )
        elif len(entries) == 1 or (entries and not request.url.path.startswith(API_PATH)):
            # one site; or a page (after signing in, a link of its own) with no site chosen yet: the first,
            # named in the header with the picker beside it — the JSON API says which it needs instead
            found = entry_state(state, next(iter(entries.values())))
        elif not entries:
            raise ApiError(
                503,
                "no-site-yet",
                N_("no site has reached the hub yet (an edge appears here once it is linked); try again"),
                headers={"Retry-After": "10"},
            )
        else:
            raise ApiError(
                400,
                "site-required",
                N_("choose a site with ?site=: %(choices)s"),
                choices=", ".join(entries),
            )
    request.scope["ews_site_state"] = found  # type: ignore[typeddict-unknown-key]
    return found


def optional_site_state(request: Request[Any, Any, Any]) -> SiteState | None:
    """``site_state`` for what is not about one site (``/me``, error pages): None where it would refuse."""
    try:
        return site_state(request)
    except ApiError:
        return None


def site_query(request: Request[Any, Any, Any]) -> str:
    """``site=<id>`` for the links of a page at a hub with several sites, else ``""``."""
    state = request.app.state
    if not is_hub(state) or len(state.hub_sites.entries()) < 2:
        return ""
    try:
        return f"site={site_state(request).site.site}"
    except ApiError:
        return ""


def require_own_site(state: Any) -> None:
    """409 for what changes a site from the hub (its configuration, imports, restores): the hub holds
    copies of the edges' streams and publishes to none of them (``StreamNames.owns_streams``); the change is
    made on the site's own server, and reaches the hub from there. (Commands are the exception: the hub
    sends them to the edge's own subject, ``domain.hubcommands``.)"""
    names = getattr(state, "names", None)
    if names is not None and not names.owns_streams:
        raise ApiError(
            409,
            "read-only-at-hub",
            N_(
                "site %(site)s is shown at the hub as its own server sends it: do this on the site's own server"
            ),
            site=state.site.site,
        )


async def keep_site_in_redirects(message: Message, scope: Scope) -> None:
    """The app's ``before_send`` hook: a redirect answering a request with ``?site=`` to an address of this
    server that names no site gets it (a page's form or shortcut keeps the chosen site)."""
    if message["type"] != "http.response.start" or not 300 <= message["status"] < 400:
        return
    asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("site")
    if not asked or not re.match(ID_PATTERN, asked[0]):
        return
    headers = MutableScopeHeaders.from_message(message)
    location = headers.get("location")
    if not location or not location.startswith("/") or location.startswith("//"):
        return
    parts = urlsplit(location)
    if "site" in parse_qs(parts.query):
        return
    query = f"{parts.query}&site={asked[0]}" if parts.query else f"site={asked[0]}"
    headers["location"] = urlunsplit(("", "", parts.path, query, parts.fragment))


def forget_summaries(state: Any, site_id: str | None = None) -> None:
    """Drop the cached consumption summaries (of one site, or all): its configuration changed."""
    cache = getattr(state, "summary_cache", None)
    if not cache:
        return
    for key in [k for k in cache if site_id is None or (isinstance(k, tuple) and k[0] == site_id)]:
        cache.pop(key, None)


class HubSites:
    """The hub's registry of sites (module doc): discovered from the stream names, each followed live."""

    def __init__(self, js: Any, on_change: Any = None) -> None:
        self.js = js
        self._sites: dict[str, SiteEntry] = {}
        self._failed: dict[str, str] = {}  # site -> the last reason it could not be opened (logged once)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def _changed(self, site_id: str, new_site: Site, event: Any) -> None:  # noqa: ARG002
        if self._on_change is not None:
            self._on_change(site_id)

    def entries(self) -> list[SiteEntry]:
        return [self._sites[k] for k in sorted(self._sites)]

    async def _stream_names(self) -> list[str]:
        names: list[str] = []
        offset = 0
        while True:
            resp = await self.js._api_request(  # nats-py lists names 1,024 at a time
                f"{self.js._prefix}.STREAM.NAMES", b'{"offset": %d}' % offset, timeout=self.js._timeout
            )
            page = resp.get("streams") or []
            names += page
            offset += len(page)
            if not page or offset >= int(resp.get("total", 0)):
                return names

    async def refresh(self) -> list[str]:
        """Look for new sites; returns the ids added."""
        added = []
        for site_id in hub_sites(await self._stream_names()):
            if site_id in self._sites:
                continue
            names = streams_for(site_id, hub=True)
            try:
                live = await LiveSite.stored(self.js, site_id, names.config)
                if live is None:
                    raise LookupError(f"no configuration in {names.config} yet")
                live.on_change(partial(self._changed, site_id))
                await live.follow()
            except Exception as exc:
                reason = one_line(exc)
                if self._failed.get(site_id) != reason:
                    log.warning("hub: site %s not served yet: %s", site_id, reason)
                    self._failed[site_id] = reason
                continue
            self._failed.pop(site_id, None)
            self._sites[site_id] = SiteEntry(site_id, live, hub_database(site_id), names)
            added.append(site_id)
            log.info(
                "hub: serving site %s (database %s, stream %s)", site_id, hub_database(site_id), names.config
            )
        return added

    async def _loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("hub: could not look for new sites: %s", one_line(exc))

    @contextlib.asynccontextmanager
    async def running(self, every: float = DISCOVER_EVERY) -> AsyncIterator[HubSites]:
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("hub: could not look for sites yet: %s", one_line(exc))
        self._task = asyncio.create_task(self._loop(every), name="hub-sites")
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            for entry in self._sites.values():
                if entry.live is not None:
                    await entry.live.close()


def configured_at(live: LiveSite | None) -> datetime | None:
    """When the configuration in force was stored (its event's time)."""
    if live is None:
        return None
    when = getattr(live.event, "occurred_at", None)
    return when.astimezone(UTC) if isinstance(when, datetime) else None
