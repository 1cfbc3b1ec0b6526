"""The stored site configuration: versioned ``SiteConfigured`` events in JetStream (stream ``EWS_CONFIG``).

The site file seeds version 1 on the first start; from then on the last event of the subject
``ews.<site>.site-configured.config`` is the configuration in force, and every service follows it live
(``LiveSite``). Writes are optimistic: a new version is published with JetStream's
``Nats-Expected-Last-Subject-Sequence`` header, so two concurrent edits of the same version cannot both
land (the loser gets ``VersionConflict``) — the server enforces it, no lock of ours.

When the site file changes on disk while the stored configuration still comes from the file (nobody
changed it from the browser or the API since), the next start imports the file as a new version: editing
the YAML file and restarting keeps working. Once the configuration was changed from the API, the stored
one stays the truth and a changed file is only reported (``ews site import FILE`` applies it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError
from pydantic import ValidationError

from .events import SiteConfigured
from .site import Site
from .streams import CONFIG
from .subjects import Kind, subject
from .yamlfile import LocatedError

log = logging.getLogger("ews.config")

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when Nats-Expected-Last-Subject-Sequence does not match


class ConfigInvalid(ValueError):
    """A configuration that cannot be applied; ``str()`` is one line starting with the field path
    (``devices[3].address: …``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class VersionConflict(Exception):
    """The configuration changed since the version the writer read."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the configuration is at version {current}")
        self.current = current


def field_path(loc: tuple[Any, ...]) -> str:
    """``("devices", 3, "address")`` -> ``devices[3].address``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validate_document(
    document: Any, profiles: Mapping[str, Any] | None = None, site_id: str | None = None
) -> Site:
    """The site document (parsed JSON or YAML) as a ``Site``, or ``ConfigInvalid`` naming the first field
    at fault. With ``profiles``, every device is checked against its profile too; with ``site_id`` the
    site id must stay that one (subjects, streams and history are keyed by it)."""
    if not isinstance(document, dict):
        raise ConfigInvalid(
            "", "the configuration is a mapping of settings (site, name, gateways, devices …)"
        )
    try:
        site = Site.model_validate(document)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedError):
            loc = loc + cause.loc
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "missing (required)"
        elif err["type"] == "extra_forbidden":
            message = "unknown setting"
        raise ConfigInvalid(field_path(loc) or "(top level)", message) from None
    if site_id is not None and site.site != site_id:
        raise ConfigInvalid("site", f"the site id is {site_id!r} and cannot change (events are keyed by it)")
    if profiles is not None:
        from .profiles import ProfileError, check_device

        for n, device in enumerate(site.devices):
            try:
                check_device(device, profiles)
            except ProfileError as exc:
                raise ConfigInvalid(f"devices[{n}].profile", str(exc)) from None
    return site


def retire_removed(old: Site, new: Site) -> Site:
    """``new`` with the devices ``old`` had and ``new`` has not kept as retired devices (their history
    still counts), and retired devices that came back (same id) no longer retired."""
    from .site import RetiredDevice

    kept = {d.id for d in new.devices} | {v.id for v in new.virtual_devices}
    retired = [r for r in new.retired_devices if r.id not in kept]
    known = {r.id for r in retired}
    for d in old.devices:
        if d.id not in kept and d.id not in known:
            retired.append(
                RetiredDevice(
                    id=d.id,
                    name=d.name,
                    medium=d.medium or "electricity",
                    gateway=d.gateway,
                    panel=d.panel,
                    zone=d.zone,
                    circuit=d.circuit,
                    exclude_from_total=d.exclude_from_total,
                    retired_on=datetime.now(old.tz).date(),
                )
            )
    if retired == list(new.retired_devices):
        return new
    return Site.model_validate({**new.model_dump(), "retired_devices": [r.model_dump() for r in retired]})


def check_tariff_changes(old: Site, new: Site, today: date) -> None:
    """Costs are computed as hours are accounted and never rewritten: a tariff in force today or earlier
    may not be changed or removed, and a new one takes effect tomorrow at the earliest (``today`` is the
    site's local date)."""
    before = {t.effective_from: t for t in old.tariffs}
    after = {t.effective_from: t for t in new.tariffs}
    for n, tariff in enumerate(new.tariffs):
        if tariff.effective_from <= today and before.get(tariff.effective_from) != tariff:
            what = "changed" if tariff.effective_from in before else "added"
            raise ConfigInvalid(
                f"tariffs[{n}].effective_from",
                f"a tariff {what} from {tariff.effective_from} would rewrite costs already counted; "
                f"give a date after today ({today}); prices in force until then stay",
            )
    for day in before:
        if day <= today and day not in after:
            raise ConfigInvalid(
                "tariffs",
                f"the tariff from {day} is in force or past: it cannot be removed (its costs are counted)",
            )


def document_of(site: Site) -> dict[str, Any]:
    """The site as a document of the site file's schema (defaults left out, as a person writes it)."""
    return site.model_dump(mode="json", exclude_defaults=True)


def parse_text(text: str | bytes) -> Any:
    """A JSON or YAML body (JSON is YAML); ``ConfigInvalid`` with the line when it is neither."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigInvalid("", f"not valid JSON or YAML{where} ({problem})") from None


def to_yaml(document: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, width=110)


def digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


# --- what changed ------------------------------------------------------------------------------------

_KEYED = {"tariffs": "effective_from"}


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "…"


def changes_between(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """One line per change: added/removed items of id-keyed lists, changed fields of the others."""
    if old is None:
        return ["created"]
    lines: list[str] = []
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) for x in a + b):
            ident = _KEYED.get(key, "id")
            before = {str(x.get(ident)): x for x in a}
            after = {str(x.get(ident)): x for x in b}
            for name in dict.fromkeys([*before, *after]):
                if name not in before:
                    lines.append(f"{key}.{name}: added")
                elif name not in after:
                    lines.append(f"{key}.{name}: removed")
                elif before[name] != after[name]:
                    x, y = before[name], after[name]
                    for field in dict.fromkeys([*x, *y]):
                        if x.get(field) != y.get(field):
                            lines.append(
                                f"{key}.{name}.{field}: {_short(x.get(field))} → {_short(y.get(field))}"
                            )
            if set(before) == set(after) and list(before) != list(after):
                lines.append(f"{key}: order changed")
        else:
            lines.append(f"{key}: {_short(a)} → {_short(b)}")
    return lines


# --- the store ---------------------------------------------------------------------------------------


class ConfigStore:
    """Read, write and follow one site's configuration in JetStream (a nats-py JetStream context)."""

    def __init__(self, js: JetStreamContext, site_id: str, stream: str | None = None) -> None:
        self.js = js
        self.site_id = site_id
        self.stream = stream or CONFIG.name  # EWS_CONFIG, or the site's copy at the hub (streamnames)
        self.subject = subject(site_id, Kind.SITE_CONFIGURED, "config")

    async def _last(self) -> tuple[SiteConfigured | None, int]:
        try:
            raw = await self.js.get_last_msg(self.stream, self.subject)
        except NotFoundError:
            return None, 0
        return SiteConfigured.model_validate_json(raw.data), raw.seq

    async def latest(self) -> SiteConfigured | None:
        return (await self._last())[0]

    async def put(
        self,
        site: Site,
        *,
        expected: int | None,
        changed_by: str,
        how: str,
        file_digest: str = "",
    ) -> SiteConfigured:
        """Store ``site`` as the next version. ``expected``: the version the writer read (None: whatever is
        there). Raises ``VersionConflict`` when another version landed in between."""
        last, seq = await self._last()
        current = last.version if last is not None else 0
        if expected is not None and expected != current:
            raise VersionConflict(current)
        document = document_of(site)
        if last is not None and last.document == document and how != "restore":
            return last  # nothing changed: no new version
        event = SiteConfigured(
            site=self.site_id,
            version=current + 1,
            changed_by=changed_by,
            how=how,
            changes=changes_between(
                Site.model_validate(last.document).model_dump(mode="json") if last else None,
                site.model_dump(mode="json"),
            ),
            document=document,
            file_digest=file_digest,
        )
        try:
            await self.js.publish(
                self.subject,
                event.model_dump_json().encode(),
                stream=self.stream,
                headers={**event.headers(), "Nats-Expected-Last-Subject-Sequence": str(seq)},
                timeout=5.0,
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                latest = await self.latest()
                raise VersionConflict(latest.version if latest else 0) from None
            raise
        return event

    async def history(self) -> list[SiteConfigured]:
        """Every version, oldest first."""
        return [event for _, event in await self.timeline()]

    async def timeline(self) -> list[tuple[int, SiteConfigured]]:
        """Every version with the time it was stored in the stream (ns since the epoch), oldest first."""
        sub = await self.js.pull_subscribe(
            self.subject,
            stream=self.stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0),
        )
        from .intake import delivery

        out: list[tuple[int, SiteConfigured]] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:
                    break
                for msg in msgs:
                    where = delivery(msg.reply)
                    ns = where.stored_ns if where else int(msg.metadata.timestamp.timestamp() * 1e9)
                    out.append((ns, SiteConfigured.model_validate_json(msg.data)))
                    await msg.ack()
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

    async def open(self, file_site: Site, file_text: str | bytes, where: object) -> SiteConfigured:
        """The configuration in force at start-up, seeding it from the site file on the first start and
        re-importing a changed file while nobody changed the configuration another way (module doc)."""
        file_sum = digest(file_text)
        for _ in range(5):
            last = await self.latest()
            if last is not None:
                if last.file_digest == file_sum or not file_sum:
                    return last
                if last.how != "site-file":
                    log.warning(
                        "%s changed, but the configuration in force (version %d) was changed by %s since: "
                        "it stays; `ews site import %s` applies the file",
                        where,
                        last.version,
                        last.changed_by,
                        where,
                    )
                    return last
            try:
                return await self.put(
                    file_site,
                    expected=last.version if last else 0,
                    changed_by="site file",
                    how="site-file",
                    file_digest=file_sum,
                )
            except VersionConflict:
                continue  # another service seeded it at the same moment: read theirs
        raise RuntimeError("the stored configuration kept changing during start-up")

    async def follow(
        self, after: int, on_change: Callable[[SiteConfigured], Awaitable[None] | None]
    ) -> FollowHandle:
        """Call ``on_change`` with every version newer than ``after``, in order, until the handle closes.
        An ordered consumer: nats-py recreates it after a reconnect without gaps."""

        async def handle(msg) -> None:
            try:
                event = SiteConfigured.model_validate_json(msg.data)
            except ValidationError as exc:
                log.error("ignoring a malformed configuration event (%s)", " ".join(str(exc).split())[:200])
                return
            if event.version <= handle.version:
                return
            handle.version = event.version
            try:
                result = on_change(event)
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:  # a consumer that fails to apply must not stop following
                log.error(
                    "configuration version %d not applied: %s",
                    event.version,
                    " ".join(str(exc).split()) or type(exc).__name__,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )

        handle.version = after  # type: ignore[attr-defined]
        sub = await self.js.subscribe(
            self.subject,
            stream=self.stream,
            cb=handle,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        return FollowHandle(sub)


class FollowHandle:
    def __init__(self, sub) -> None:
        self.sub = sub

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()


def site_of(event: SiteConfigured) -> Site:
    """The ``Site`` of a stored version (validated when it was stored)."""
    return Site.model_validate(event.document)


def read_site_file(path: Path) -> tuple[Site, bytes]:
    from .site import load_site

    return load_site(path), Path(path).read_bytes()


class LiveSite:
    """A service's view of the configuration in force: ``site`` is always the latest version, and
    ``listeners`` are called (in order) with each new one. ``open`` seeds it from the site file when
    the store is empty."""

    def __init__(self, store: ConfigStore, event: SiteConfigured) -> None:
        self.store = store
        self.event = event
        self.site = site_of(event)
        self.listeners: list[Callable[[Site, SiteConfigured], Awaitable[None] | None]] = []
        self._follow: FollowHandle | None = None
        self._nc = None  # the connection of ``connect``

    @property
    def version(self) -> int:
        return self.event.version

    @classmethod
    async def open(cls, js: JetStreamContext, site_path: Path) -> LiveSite:
        from .bus import ensure_streams_with

        await ensure_streams_with(js)
        file_site, text = read_site_file(site_path)
        store = ConfigStore(js, file_site.site)
        event = await store.open(file_site, text, site_path)
        live = cls(store, event)
        if event.version > 1 or event.how != "site-file":
            log.info("site %s: configuration version %d (%s)", live.site.site, event.version, event.how)
        return live

    @classmethod
    async def stored(cls, js: JetStreamContext, site_id: str, stream: str) -> LiveSite | None:
        """The configuration in force as stored in ``stream``, without a site file (the hub reads each site's
        copy, ``EWS_CONFIG_<site>``); None while no version is there yet."""
        store = ConfigStore(js, site_id, stream)
        event = await store.latest()
        return cls(store, event) if event is not None else None

    @classmethod
    async def connect(
        cls,
        nats_url: str,
        site_path: Path | None,
        name: str,
        retry: float = 1.0,
        stored: tuple[str, str] | None = None,
    ) -> LiveSite:
        """``open`` on a connection of its own (closed by ``close``), waiting for NATS as long as it takes
        (logged once): the service follows the configuration from the moment NATS answers. ``stored``
        (site id, stream): the stored configuration instead of the site file's (``stored``), waited for."""
        import nats

        from .text import one_line

        told = False
        while True:
            try:
                nc = await nats.connect(
                    nats_url,
                    name=f"{name}-config",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    allow_reconnect=True,
                )
                break
            except Exception as exc:
                if not told:
                    log.warning(
                        "%s: waiting for NATS at %s for the configuration (%s)", name, nats_url, one_line(exc)
                    )
                    told = True
                await asyncio.sleep(retry)
        try:
            if stored is None:
                assert site_path is not None
                live = await cls.open(nc.jetstream(), site_path)
            else:
                live = await cls._wait_stored(nc.jetstream(), *stored, name=name, retry=retry)
        except BaseException:
            await nc.close()
            raise
        live._nc = nc
        return live

    @classmethod
    async def _wait_stored(
        cls, js: JetStreamContext, site_id: str, stream: str, name: str, retry: float
    ) -> LiveSite:
        from .text import one_line

        told = False
        while True:
            try:
                live = await cls.stored(js, site_id, stream)
                why = f"no configuration in {stream} yet"
            except Exception as exc:
                live, why = None, one_line(exc)
            if live is not None:
                return live
            if not told:
                log.warning("%s: waiting for the configuration of site %s (%s)", name, site_id, why)
                told = True
            await asyncio.sleep(max(retry, 2.0))

    def on_change(self, listener: Callable[[Site, SiteConfigured], Awaitable[None] | None]) -> None:
        self.listeners.append(listener)

    async def follow(self) -> None:
        async def apply(event: SiteConfigured) -> None:
            site = site_of(event)
            self.event, self.site = event, site
            log.info(
                "site %s: configuration version %d by %s (%s)",
                site.site,
                event.version,
                event.changed_by,
                "; ".join(event.changes[:5]) + (" …" if len(event.changes) > 5 else ""),
            )
            for listener in self.listeners:
                result = listener(site, event)
                if asyncio.iscoroutine(result):
                    await result

        self._follow = await self.store.follow(self.event.version, apply)

    async def close(self) -> None:
        if self._follow is not None:
            await self._follow.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()


async def follow_configuration(
    nats_url: str,
    site_path: Path,
    name: str,
    current: Callable[[], Site],
    apply: Callable[[Site], Awaitable[None]],
) -> None:
    """For a service that starts from the site file without waiting for NATS (the poller keeps polling,
    the simulator keeps answering): once NATS answers, apply the configuration in force when it differs
    from ``current()``, then every new version. Runs until cancelled."""
    live = await LiveSite.connect(nats_url, site_path, name)
    try:
        if live.site != current():
            await apply(live.site)
        live.on_change(lambda site, event: apply(site))  # noqa: ARG005
        await live.follow()
        await asyncio.Event().wait()
    finally:
        await live.close()
