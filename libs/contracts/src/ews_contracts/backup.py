"""Backup and restore of one site: one ``.tar.gz`` with everything the site is made of.

Used by ``GET /api/v1/backup`` / ``POST /api/v1/restore`` (gateway-api) and ``ews backup`` / ``ews restore``
(CLI): both talk to NATS and Redis, nothing else (the ClickHouse projections are rebuilt from the restored
readings by the aggregator, see :mod:`ews_contracts.rebuild`).

The archive (format version 1), members in this order::

    backup.json                 identity, first so a foreign or newer archive is refused at once:
                                {format: "ews-backup", format_version, site, created_at, product_version}
    config/history.ndjson       every SiteConfigured event of the site (EWS_CONFIG), oldest first
    auth/codes.json             {"roles": {role: {pin, puk, default}}}: the argon2 hashes, never a code
    readings/000001.ndjson …    the site's messages of EWS_READINGS (readings and status changes) in
                                stream order, chunks of ≤ 16 MiB
    commands/000001.ndjson …    EWS_COMMANDS (kept for the record, never published again: see restore)
    audit/000001.ndjson …       EWS_AUDIT (idem)
    manifest.json               last: the identity again, counts, snapshot sequences, and every member
                                with its size, record count and SHA-256

A message is one line ``{"subject": …, "id": <Nats-Msg-Id or event_id>, "data": <payload, as a string>}``:
the payload is kept byte for byte. The archive is written as it is read (``Backup.chunks``): memory is
one chunk, nothing is spooled to disk, and the first bytes leave at once. Messages that are not a valid
event of the site (a stranger's malformed publish, which the services also ignore) are left out and
counted in ``skipped``; so every archive written here passes :func:`check_archive`.

Restore is two passes over the archive:

1. :func:`check_archive` (synchronous; run it in a thread) — gzip and tar integrity, identity (format
   version not newer than this code's, site id equal to this site's), every member known, every line
   parsed and validated as its event, the last configuration valid (and its devices against the
   profiles), the manifest's sizes, counts and checksums. Any problem is an ``ArchiveProblem`` naming it
   in one line, and nothing has been touched.
2. :func:`restore` — applies it: marks the aggregator for a rebuild (it stops accounting), republishes
   the configuration history with its original ids and publishes the backup's last version on top as a
   new version (``how="restore"``, so every running service applies it live; the older messages are then
   removed: the subject is never empty, so a service starting meanwhile never seeds one of its own), sets
   the code hashes in one Redis transaction, replaces the site's readings and statuses (purge, then
   republish with their original ids, each acknowledged; see ``streamio.Republisher`` for the duplicate
   window), then asks the aggregator to rebuild. JetStream has no transaction across subjects: a failure
   half-way (NATS gone) is reported, the aggregator still rebuilds from what the stream holds, and
   restoring the same archive again completes it (every step replaces rather than adds). Commands and
   audit records are *not* republished: a republished ``CommandRequested`` would reach the commands
   service again, and the audit trail is not rewritten (the restore itself is audited).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import secrets
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any

from nats.aio.client import Client
from nats.js.errors import APIError
from pydantic import ValidationError

from . import rebuild
from .bus import ensure_streams_with
from .events import (
    AuditRecorded,
    CommandCompleted,
    CommandExpired,
    CommandFailed,
    CommandRequested,
    DeviceStatusChanged,
    Event,
    ReadingTaken,
    SiteConfigured,
    new_id,
    utcnow,
)
from .roles import Role
from .siteconfig import WRONG_LAST_SEQUENCE, ConfigInvalid, changes_between, validate_document
from .streamio import Republisher, last_sequence, msg_id, read_stream
from .streams import AUDIT, COMMANDS, CONFIG, READINGS, StreamSpec
from .subjects import PREFIX, Kind, pattern, subject
from .text import one_line

log = logging.getLogger("ews.backup")

FORMAT = "ews-backup"
FORMAT_VERSION = 1  # the newest format this code reads and the one it writes
HEADER = "backup.json"
MANIFEST = "manifest.json"
CONFIG_MEMBER = "config/history.ndjson"
CODES_MEMBER = "auth/codes.json"
CHUNK_BYTES = 16 * 1024 * 1024  # a section's member is cut at this size (the memory a backup needs)
MAX_LINE = 4 * 1024 * 1024  # longest message line accepted on restore
MAX_JSON_MEMBER = 16 * 1024 * 1024  # backup.json, manifest.json, auth/codes.json
OUT_CHUNK = 256 * 1024  # compressed bytes handed out at a time
RENEW_EVERY = 60.0  # seconds between renewals of the rebuild marker during a restore
CLI_ROLE = "command-line"  # the audit records' role for `ews backup` / `ews restore`

EVENT_TYPES: dict[Kind, type[Event]] = {
    Kind.READING: ReadingTaken,
    Kind.STATUS: DeviceStatusChanged,
    Kind.COMMAND_REQUESTED: CommandRequested,
    Kind.COMMAND_COMPLETED: CommandCompleted,
    Kind.COMMAND_FAILED: CommandFailed,
    Kind.COMMAND_EXPIRED: CommandExpired,
    Kind.AUDIT: AuditRecorded,
    Kind.SITE_CONFIGURED: SiteConfigured,
}


@dataclass(frozen=True)
class Section:
    """Messages of a stream kept in chunked members ``<name>/NNNNNN.ndjson``."""

    name: str
    stream: StreamSpec
    restored: bool  # published again by a restore (readings), or only kept for the record

    def member(self, index: int) -> str:
        return f"{self.name}/{index:06d}.ndjson"


SECTIONS: tuple[Section, ...] = (
    Section("readings", READINGS, restored=True),
    Section("commands", COMMANDS, restored=False),
    Section("audit", AUDIT, restored=False),
)
COUNT_NAMES = {
    Kind.READING: "readings",
    Kind.STATUS: "statuses",
    Kind.COMMAND_REQUESTED: "commands",
    Kind.COMMAND_COMPLETED: "command_outcomes",
    Kind.COMMAND_FAILED: "command_outcomes",
    Kind.COMMAND_EXPIRED: "command_outcomes",
    Kind.AUDIT: "audit",
    Kind.SITE_CONFIGURED: "config_versions",
}


def product_version() -> str:
    try:
        return version("ews-contracts")
    except PackageNotFoundError:
        return "unknown"


def codes_key(site: str, role: str) -> str:
    """Redis key of a role's hashed codes (``ews_auth.codes.CodeStore.codes_key``)."""
    return f"{PREFIX}:{site}:auth:codes:{role}"


def backup_file_name(site: str, at: datetime) -> str:
    return f"ews-backup-{site}-{at.astimezone(UTC):%Y-%m-%d-%H%M%S}.tar.gz"


async def connect(nats_url: str, name: str) -> Client:
    """A connection of its own for one backup or restore (the fast header parser: a year of readings is
    millions of messages), failing after a few attempts instead of waiting forever."""
    from .natsclient import FastHeaderClient

    async def quiet(exc: Exception) -> None:  # nats-py logs every connection error with a traceback
        log.debug("nats (%s): %s", name, one_line(exc))

    nc = FastHeaderClient()
    await nc.connect(
        nats_url,
        name=name,
        connect_timeout=5,
        allow_reconnect=True,
        max_reconnect_attempts=3,
        reconnect_time_wait=1.0,
        pending_size=64 * 1024 * 1024,
        error_cb=quiet,
    )
    return nc


def lock_key(site: str) -> str:
    return f"{PREFIX}:{site}:restore:lock"


LOCK_TTL = 900  # seconds; renewed while a restore republishes


class RestoreBusy(RuntimeError):
    """Another restore of this site is running."""


# --- problems ------------------------------------------------------------------------------------------

# English templates; the gateway-api has the same strings as catalogue msgids (its domain/backup.py).
PROBLEMS: dict[str, str] = {
    "empty": "no archive: send the .tar.gz of a backup (as the request body or a form's file)",
    "damaged": "damaged archive: %(reason)s",
    "not-a-backup": "not a backup of the energy web server: %(reason)s",
    "newer-format": (
        "newer format %(found)s: this version reads backups up to format %(supported)s "
        "(update the energy web server first)"
    ),
    "foreign-site": "foreign site %(found)s: this is site %(site)s",
    "invalid-member": "invalid archive member %(member)s, line %(line)s: %(reason)s",
}


class ArchiveProblem(ValueError):
    """An archive that cannot be restored: ``problem`` (a key of ``PROBLEMS``) and its ``params``;
    ``str()`` is the one English line."""

    def __init__(self, problem: str, **params: Any) -> None:
        self.problem = problem
        self.params = params
        super().__init__(PROBLEMS[problem] % params if params else PROBLEMS[problem])


def damaged(reason: str) -> ArchiveProblem:
    return ArchiveProblem("damaged", reason=reason)


class RestoreFailed(RuntimeError):
    """The archive was valid but applying it stopped (NATS or Redis failed); ``str()`` is one line."""


# --- records -------------------------------------------------------------------------------------------


def check_event(site: str, kinds: frozenset[Kind] | set[Kind], subj: str, data: bytes | str) -> Event:
    """The event a stored message is, checked: a known kind of ``kinds``, of this site, on the subject its
    payload says. ValueError (one line) otherwise."""
    parts = subj.split(".")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[3]:
        raise ValueError(f"subject {subj!r} is not ews.<site>.<kind>.<id>")
    if parts[1] != site:
        raise ValueError(f"message of site {parts[1]!r}")
    try:
        kind = Kind(parts[2])
    except ValueError:
        raise ValueError(f"unknown kind {parts[2]!r}") from None
    if kind not in kinds:
        raise ValueError(f"a {kind} message does not belong here")
    try:
        event = EVENT_TYPES[kind].model_validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"not a valid {EVENT_TYPES[kind].__name__}: {one_line(exc, 200)}") from None
    if event.site != site:
        raise ValueError(f"event of site {event.site!r} on this site's subject")
    if event.subject != subj:
        raise ValueError(f"the payload belongs on {event.subject!r}, not {subj!r}")
    return event


_quote = json.encoder.encode_basestring  # the C encoder of json.dumps(..., ensure_ascii=False) for a str


def record_line(subj: str, ident: str, data: str) -> bytes:
    """``{"subject":…,"id":…,"data":…}`` and a newline (what ``json.dumps`` writes, 5× faster)."""
    return f'{{"subject":{_quote(subj)},"id":{_quote(ident)},"data":{_quote(data)}}}\n'.encode()


def parse_record(line: bytes) -> tuple[str, str, str]:
    """(subject, id, data) of one message line; ValueError when it is not one."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not JSON ({one_line(exc, 120)})") from None
    if not isinstance(record, dict):
        raise ValueError("not a message record")
    subj, ident, data = record.get("subject"), record.get("id"), record.get("data")
    if not isinstance(subj, str) or not isinstance(ident, str) or not isinstance(data, str):
        raise ValueError("a message record has a subject, an id and data (strings)")
    if not ident or len(ident) > 256 or any(c in ident for c in "\r\n"):
        raise ValueError("a message id is 1 to 256 characters on one line")
    return subj, ident, data


def check_codes(document: Any) -> dict[str, dict[str, Any]]:
    """The roles' hashed codes of ``auth/codes.json``; ValueError (one line) when malformed."""
    roles = document.get("roles") if isinstance(document, dict) else None
    if not isinstance(roles, dict):
        raise ValueError('expected {"roles": {role: {pin, puk, default}}}')
    out: dict[str, dict[str, Any]] = {}
    known = {str(r) for r in Role}
    for role, record in roles.items():
        if role not in known:
            raise ValueError(f"unknown role {role!r}")
        if not isinstance(record, dict):
            raise ValueError(f"{role}: expected {{pin, puk, default}}")
        pin, puk, default = record.get("pin"), record.get("puk"), record.get("default")
        for name, value in (("pin", pin), ("puk", puk)):
            if not isinstance(value, str) or not value.startswith("$argon2") or len(value) > 1024:
                raise ValueError(f"{role}.{name}: not an argon2 hash")
        if not isinstance(default, bool):
            raise ValueError(f"{role}.default: true or false")
        out[role] = {"pin": pin, "puk": puk, "default": default}
    return out


async def read_codes(redis: Any, site: str) -> dict[str, dict[str, Any]]:
    roles = [str(r) for r in Role]
    raws = await redis.mget([codes_key(site, r) for r in roles])
    out: dict[str, dict[str, Any]] = {}
    for role, raw in zip(roles, raws, strict=True):
        if raw is None:
            continue
        record = json.loads(raw)
        out[role] = {"pin": record["pin"], "puk": record["puk"], "default": bool(record.get("default"))}
    return out


# --- writing -------------------------------------------------------------------------------------------


class TarGzWriter:
    """A tar archive compressed as it is written; ``take()`` hands out what is ready."""

    def __init__(self, mtime: float, level: int = 6) -> None:
        self.mtime = int(mtime)
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip container
        self._out = bytearray()
        self._offset = 0  # uncompressed tar bytes so far

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._offset += len(data)
        self._out += self._z.compress(data)

    def add(self, name: str, data: bytes | bytearray) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self.mtime
        info.mode = 0o644
        info.uname = info.gname = "ews"
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))
        self._write(data)
        if len(data) % tarfile.BLOCKSIZE:
            self._write(b"\0" * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))

    def ready(self) -> int:
        return len(self._out)

    def take(self, sync: bool = False) -> bytes:
        """The compressed bytes ready; ``sync`` also pushes out what zlib still holds (the first chunk of a
        download leaves at once)."""
        if sync:
            self._out += self._z.flush(zlib.Z_SYNC_FLUSH)
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self) -> bytes:
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))
        if self._offset % tarfile.RECORDSIZE:
            self._write(b"\0" * (tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))
        self._out += self._z.flush()
        return self.take()


@dataclass
class MemberInfo:
    name: str
    bytes: int
    sha256: str
    records: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "sha256": self.sha256, "records": self.records}


@dataclass
class BackupSummary:
    site: str
    created_at: datetime
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    members: list[MemberInfo] = field(default_factory=list)
    compressed_bytes: int = 0
    complete: bool = False


def _identity(site: str, created: datetime) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "site": site,
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "product_version": product_version(),
    }


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=1) + "\n").encode()


class Backup:
    """One backup of ``site``: ``async for chunk in backup.chunks(): …`` yields the .tar.gz; ``summary``
    is complete once they are all out. Publishes ``AuditRecorded(action="backup")`` at the end (also
    when it was interrupted: the code hashes may have left)."""

    def __init__(
        self, nc: Client, redis: Any, site: str, *, by: str, client: str = "", level: int = 6
    ) -> None:
        self.nc = nc
        self.redis = redis
        self.site = site
        self.by = by
        self.client = client
        self.level = level
        self.created_at = utcnow().replace(microsecond=0)
        self.summary = BackupSummary(site, self.created_at)
        self.file_name = backup_file_name(site, self.created_at)

    def _member(self, tar: TarGzWriter, name: str, data: bytes | bytearray, records: int) -> None:
        tar.add(name, data)
        self.summary.members.append(MemberInfo(name, len(data), hashlib.sha256(data).hexdigest(), records))

    async def _messages(
        self, stream: StreamSpec, filter_subject: str, upto: int, kinds: set[Kind], skipped_as: str
    ) -> AsyncIterator[list[bytes]]:
        """The valid messages (as lines, a batch at a time) of one stream of the site, up to the snapshot
        sequence."""
        counts = self.summary.counts
        async for batch in read_stream(self.nc, stream.name, filter_subject, upto=upto):
            lines = []
            for msg in batch:
                try:
                    event = check_event(self.site, kinds, msg.subject, msg.data)
                    data = msg.data.decode()
                except (ValueError, UnicodeDecodeError) as exc:
                    self.summary.skipped[skipped_as] = self.summary.skipped.get(skipped_as, 0) + 1
                    log.warning("backup: left out a message on %s: %s", msg.subject, one_line(exc, 200))
                    continue
                name = COUNT_NAMES[event.KIND]
                counts[name] = counts.get(name, 0) + 1
                lines.append(record_line(msg.subject, msg_id(msg) or event.event_id, data))
            yield lines

    async def chunks(self) -> AsyncIterator[bytes]:
        summary = self.summary
        tar = TarGzWriter(self.created_at.timestamp(), self.level)
        try:
            js = self.nc.jetstream()
            await ensure_streams_with(js)
            snapshot = {
                spec.name: await last_sequence(self.nc, spec.name)
                for spec in (CONFIG, *[s.stream for s in SECTIONS])
            }
            identity = _identity(self.site, self.created_at)
            self._member(tar, HEADER, _json_bytes(identity), 0)

            history = bytearray()
            versions = 0
            config_subject = subject(self.site, Kind.SITE_CONFIGURED, "config")
            async for lines in self._messages(
                CONFIG, config_subject, snapshot[CONFIG.name], {Kind.SITE_CONFIGURED}, "config"
            ):
                history += b"".join(lines)
                versions += len(lines)
            summary.counts.setdefault("config_versions", 0)
            self._member(tar, CONFIG_MEMBER, history, versions)

            codes = await read_codes(self.redis, self.site)
            self._member(tar, CODES_MEMBER, _json_bytes({"roles": codes}), len(codes))
            summary.counts["roles"] = len(codes)
            # the first chunk: identity, configuration, codes (NATS and Redis answered)
            out = tar.take(sync=True)
            summary.compressed_bytes += len(out)
            yield out

            for section in SECTIONS:
                chunk = bytearray()
                records = 0
                index = 0
                kinds = set(section.stream.kinds)
                for kind in kinds:
                    summary.counts.setdefault(COUNT_NAMES[kind], 0)
                async for lines in self._messages(
                    section.stream,
                    f"{PREFIX}.{self.site}.>",
                    snapshot[section.stream.name],
                    kinds,
                    section.name,
                ):
                    for line in lines:
                        chunk += line
                        records += 1
                        if len(chunk) >= CHUNK_BYTES:
                            index += 1
                            self._member(tar, section.member(index), chunk, records)
                            chunk, records = bytearray(), 0
                    if tar.ready() >= OUT_CHUNK:
                        out = tar.take()
                        summary.compressed_bytes += len(out)
                        yield out
                if records:
                    index += 1
                    self._member(tar, section.member(index), chunk, records)
                out = tar.take()
                summary.compressed_bytes += len(out)
                yield out

            manifest = {
                **identity,
                "counts": dict(sorted(summary.counts.items())),
                "skipped": summary.skipped,
                "streams": snapshot,
                "members": [m.as_dict() for m in summary.members],
            }
            tar.add(MANIFEST, _json_bytes(manifest))
            out = tar.close()
            summary.compressed_bytes += len(out)
            summary.complete = True
            yield out
        finally:
            await self._audit()

    async def _audit(self) -> None:
        s = self.summary
        detail = (
            f"{s.counts.get('readings', 0)} readings, {s.counts.get('statuses', 0)} statuses, "
            f"{s.counts.get('config_versions', 0)} configuration versions, {s.counts.get('roles', 0)} roles' code "
            f"hashes, {s.compressed_bytes} bytes"
        )
        if not s.complete:
            detail = f"interrupted after {detail}"
        await publish_audit(self.nc, self.site, "backup", self.by, self.client, detail)


async def publish_audit(nc: Client, site: str, action: str, role: str, client: str, detail: str) -> None:
    """An ``AuditRecorded`` on EWS_AUDIT; a failure is logged, never raised (the action is done)."""
    event = AuditRecorded(site=site, action=action, role=role or "unknown", client=client, detail=detail)  # type: ignore[arg-type]
    try:
        await nc.jetstream().publish(
            event.subject,
            event.model_dump_json().encode(),
            stream=AUDIT.name,
            headers=event.headers(),
            timeout=5.0,
        )
    except Exception as exc:
        log.error("audit record of the %s not published: %s", action, one_line(exc))


# --- checking ------------------------------------------------------------------------------------------


@dataclass
class CheckedArchive:
    """A valid archive: its identity, manifest, counts, and what the restore needs beside the messages."""

    identity: dict[str, Any]
    manifest: dict[str, Any]
    counts: dict[str, int]
    config_last: SiteConfigured | None
    codes: dict[str, dict[str, Any]]
    members: list[MemberInfo]

    @property
    def created_at(self) -> str:
        return str(self.identity.get("created_at", ""))


def _read_json_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[Any, bytes]:
    if member.size > MAX_JSON_MEMBER:
        raise damaged(f"{member.name} is {member.size} bytes, larger than any backup writes")
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    try:
        return json.loads(data), data
    except ValueError:
        raise ArchiveProblem("invalid-member", member=member.name, line=1, reason="not JSON") from None


def _lines(tar: tarfile.TarFile, member: tarfile.TarInfo, digest: Any) -> Any:
    """(number, line) of a member, the digest updated with every byte."""
    handle = tar.extractfile(member)
    if handle is None:
        return
    number = 0
    while True:
        line = handle.readline(MAX_LINE + 1)
        if not line:
            return
        digest.update(line)
        number += 1
        if len(line) > MAX_LINE:
            raise ArchiveProblem("invalid-member", member=member.name, line=number, reason="line too long")
        if line.strip():
            yield number, line


def _member_kind(name: str) -> Section | str | None:
    if name in (CONFIG_MEMBER, CODES_MEMBER, MANIFEST, HEADER):
        return name
    for section in SECTIONS:
        prefix = f"{section.name}/"
        if name.startswith(prefix) and name.endswith(".ndjson") and name[len(prefix) : -7].isdigit():
            return section
    return None


def _unwrap_tar_error(exc: BaseException) -> str:
    text = one_line(exc, 200)
    lower = text.lower()
    if (
        isinstance(exc, EOFError)
        or "unexpected end" in lower
        or "end of data" in lower
        or "ended before" in lower
    ):
        return "it ends too early (truncated?)"
    if "not a gzipped file" in lower:
        return "unexpected data after its end"
    if isinstance(exc, zlib.error) or "crc" in lower or "incorrect length" in lower or "invalid" in lower:
        return f"the compressed data is corrupt ({text})"
    return text


def check_archive(fileobj: IO[bytes], site: str, profiles: Mapping[str, Any] | None = None) -> CheckedArchive:
    """Validate a whole archive (see the module docstring) without changing anything; ``ArchiveProblem``
    names the first problem. Synchronous and CPU-bound: run it in a worker thread."""
    fileobj.seek(0)
    magic = fileobj.read(2)
    if not magic:
        raise ArchiveProblem("empty")
    if magic != b"\x1f\x8b":
        raise damaged("not gzip data (a backup is a .tar.gz file)")
    fileobj.seek(0)
    try:
        with gzip.GzipFile(fileobj=fileobj, mode="rb") as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                checked = _check_members(tar, site, profiles)
            # the rest: the tar's end blocks and the gzip trailer, whose CRC and size are checked at its end
            while gz.read(1024 * 1024):
                pass
        return checked
    except ArchiveProblem:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise damaged(_unwrap_tar_error(exc)) from None


def _check_members(tar: tarfile.TarFile, site: str, profiles: Mapping[str, Any] | None) -> CheckedArchive:
    members = iter(tar)
    first = next(members, None)
    if first is None:
        raise damaged("it holds no file")
    if first.name != HEADER or not first.isreg():
        raise ArchiveProblem("not-a-backup", reason=f"its first file is {first.name!r}, not {HEADER}")
    identity, raw = _read_json_member(tar, first)
    if not isinstance(identity, dict) or identity.get("format") != FORMAT:
        raise ArchiveProblem("not-a-backup", reason=f"{HEADER} does not say format {FORMAT!r}")
    found = identity.get("format_version")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise ArchiveProblem("not-a-backup", reason=f"{HEADER} has no valid format_version")
    if found > FORMAT_VERSION:
        raise ArchiveProblem("newer-format", found=found, supported=FORMAT_VERSION)
    if identity.get("site") != site:
        raise ArchiveProblem("foreign-site", found=repr(identity.get("site")), site=repr(site))
    seen = [MemberInfo(HEADER, len(raw), hashlib.sha256(raw).hexdigest(), 0)]
    counts: dict[str, int] = {}
    config_last: SiteConfigured | None = None
    codes: dict[str, dict[str, Any]] | None = None
    manifest: dict[str, Any] | None = None
    names = {HEADER}
    for member in members:
        if manifest is not None:
            raise damaged(f"a file follows the manifest ({member.name!r})")
        kind = _member_kind(member.name)
        if kind is None or kind == HEADER:
            raise damaged(f"unexpected file {member.name!r}")
        if not member.isreg():
            raise damaged(f"{member.name!r} is not a regular file")
        if member.name in names:
            raise damaged(f"{member.name!r} appears twice")
        names.add(member.name)
        if kind == MANIFEST:
            value, _ = _read_json_member(tar, member)
            if not isinstance(value, dict):
                raise ArchiveProblem("invalid-member", member=MANIFEST, line=1, reason="not a JSON object")
            manifest = value
            continue
        if kind == CODES_MEMBER:
            value, raw = _read_json_member(tar, member)
            try:
                codes = check_codes(value)
            except ValueError as exc:
                raise ArchiveProblem("invalid-member", member=member.name, line=1, reason=str(exc)) from None
            seen.append(MemberInfo(member.name, len(raw), hashlib.sha256(raw).hexdigest(), len(codes)))
            counts["roles"] = len(codes)
            continue
        digest = hashlib.sha256()
        records = 0
        if kind == CONFIG_MEMBER:
            counts.setdefault("config_versions", 0)
            for number, line in _lines(tar, member, digest):
                try:
                    subj, _, data = parse_record(line)
                    event = check_event(site, {Kind.SITE_CONFIGURED}, subj, data)
                    assert isinstance(event, SiteConfigured)
                    if config_last is not None and event.version <= config_last.version:
                        raise ValueError(f"version {event.version} after version {config_last.version}")
                except ValueError as exc:
                    raise ArchiveProblem(
                        "invalid-member", member=member.name, line=number, reason=one_line(exc, 200)
                    ) from None
                config_last = event
                records += 1
                counts["config_versions"] += 1
        else:
            assert isinstance(kind, Section)
            kinds = set(kind.stream.kinds)
            for k in kinds:
                counts.setdefault(COUNT_NAMES[k], 0)
            for number, line in _lines(tar, member, digest):
                try:
                    subj, _, data = parse_record(line)
                    event = check_event(site, kinds, subj, data)
                except ValueError as exc:
                    raise ArchiveProblem(
                        "invalid-member", member=member.name, line=number, reason=one_line(exc, 200)
                    ) from None
                records += 1
                counts[COUNT_NAMES[event.KIND]] += 1
        seen.append(MemberInfo(member.name, member.size, digest.hexdigest(), records))
    if manifest is None:
        raise damaged("the manifest is missing (the archive was cut short?)")
    _check_manifest(manifest, identity, seen, counts)
    if codes is None:
        raise damaged(f"{CODES_MEMBER} is missing")
    if CONFIG_MEMBER not in names:
        raise damaged(f"{CONFIG_MEMBER} is missing")
    if config_last is not None:
        try:
            validate_document(config_last.document, profiles, site)
        except ConfigInvalid as exc:
            raise ArchiveProblem(
                "invalid-member",
                member=CONFIG_MEMBER,
                line=counts.get("config_versions", 0),
                reason=f"the last configuration cannot be applied: {exc}",
            ) from None
    return CheckedArchive(identity, manifest, counts, config_last, codes, seen)


def _check_manifest(
    manifest: dict[str, Any], identity: dict[str, Any], seen: list[MemberInfo], counts: dict[str, int]
) -> None:
    for key, value in identity.items():
        if manifest.get(key) != value:
            raise damaged(f"the manifest's {key} ({manifest.get(key)!r}) differs from {HEADER}'s ({value!r})")
    listed = manifest.get("members")
    if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
        raise ArchiveProblem("invalid-member", member=MANIFEST, line=1, reason="no list of members")
    by_name = {str(m.get("name")): m for m in listed}
    names = [m.name for m in seen]
    for name in by_name:
        if name not in names:
            raise damaged(f"{name} (listed in the manifest) is missing")
    for info in seen:
        entry = by_name.get(info.name)
        if entry is None:
            raise damaged(f"{info.name} is not listed in the manifest")
        if entry.get("sha256") != info.sha256 or entry.get("bytes") != info.bytes:
            raise damaged(f"the checksum of {info.name} does not match the manifest")
        if entry.get("records") != info.records:
            raise damaged(f"{info.name} has {info.records} records, the manifest says {entry.get('records')}")
    if [str(m.get("name")) for m in listed] != names:
        raise damaged("the files are not in the manifest's order")
    listed_counts = manifest.get("counts")
    if not isinstance(listed_counts, dict):
        raise ArchiveProblem("invalid-member", member=MANIFEST, line=1, reason="no counts")
    for name in sorted(set(counts) | set(listed_counts)):
        n = counts.get(name, 0)
        if listed_counts.get(name, 0) != n:
            raise damaged(f"{n} {name} found, the manifest says {listed_counts.get(name, 0)}")


# --- restoring -----------------------------------------------------------------------------------------


@dataclass
class RestoreResult:
    restore: str
    archive_created_at: str
    counts: dict[str, int]
    config_version: int | None  # the version now in force (the restored configuration)
    roles_changed: list[str]  # roles whose codes changed (their unlocks are revoked)
    duplicates: int  # messages JetStream's dedupe window dropped, stored again without their header
    rebuild: str  # "started" (the aggregator rebuilds now) or "pending" (when it starts)
    seconds: float


Progress = Callable[[str, int, int], None]


def _records(fileobj: IO[bytes], wanted: Callable[[str], bool], checked: CheckedArchive) -> Any:
    """(subject, id, data) of every message of the members ``wanted`` selects, in archive order; the
    checksums are verified again (the file must not have changed since it was checked)."""
    sums = {m.name: m.sha256 for m in checked.members}
    fileobj.seek(0)
    with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
        for member in tar:
            if not wanted(member.name):
                continue
            digest = hashlib.sha256()
            for _, line in _lines(tar, member, digest):
                yield parse_record(line)
            if digest.hexdigest() != sums.get(member.name):
                raise RestoreFailed(f"{member.name} changed since the archive was checked")


async def restore(
    nc: Client,
    redis: Any,
    site: str,
    fileobj: IO[bytes],
    checked: CheckedArchive,
    *,
    by: str,
    client: str = "",
    changed_by: str | None = None,
    progress: Progress | None = None,
) -> RestoreResult:
    """Apply a checked archive (see the module docstring). Raises ``RestoreFailed`` (one line) when NATS or
    Redis fails half-way; the aggregator is asked to rebuild in every case."""
    started = time.monotonic()
    js = nc.jetstream()
    restore_id = new_id()
    marker = rebuild.RebuildMarker(restore_id, utcnow(), time.time() + rebuild.LEASE)
    failure: BaseException | None = None
    version_now: int | None = None
    roles_changed: list[str] = []
    duplicates = 0
    state = "pending"
    if not await redis.set(lock_key(site), restore_id, nx=True, ex=LOCK_TTL):
        raise RestoreBusy("another restore of this site is running")
    try:
        await ensure_streams_with(js)
        await rebuild.mark(js, site, marker)
    except Exception as exc:
        await _unlock(redis, site, restore_id)
        raise RestoreFailed(f"NATS: {one_line(exc)}") from None
    try:
        if checked.config_last is not None:
            version_now, dup = await _restore_config(nc, site, fileobj, checked, changed_by or by)
            duplicates += dup
        roles_changed = await _restore_codes(redis, site, checked.codes)
        duplicates += await _restore_readings(nc, redis, site, fileobj, checked, marker, progress)
    except Exception as exc:
        failure = exc
    finally:
        with contextlib.suppress(Exception):
            await rebuild.renew(js, site, replace(marker, not_before=0.0))
        with contextlib.suppress(Exception):
            answer = await rebuild.request_rebuild(nc, site, restore_id)
            state = "started" if answer is not None else "pending"
        await _unlock(redis, site, restore_id)
    detail = (
        f"backup of {checked.created_at}: {checked.counts.get('readings', 0)} readings, "
        f"{checked.counts.get('statuses', 0)} statuses, {checked.counts.get('config_versions', 0)} configuration "
        f"versions, {len(checked.codes)} roles' codes"
    )
    if failure is not None:
        await publish_audit(nc, site, "restore", by, client, f"failed ({one_line(failure, 200)}): {detail}")
        if isinstance(failure, RestoreFailed):
            raise failure
        raise RestoreFailed(one_line(failure)) from failure
    await publish_audit(nc, site, "restore", by, client, detail)
    return RestoreResult(
        restore_id,
        checked.created_at,
        dict(checked.counts),
        version_now,
        roles_changed,
        duplicates,
        state,
        time.monotonic() - started,
    )


async def _unlock(redis: Any, site: str, restore_id: str) -> None:
    with contextlib.suppress(Exception):
        held = await redis.get(lock_key(site))
        if held is not None and (held.decode() if isinstance(held, bytes) else held) == restore_id:
            await redis.delete(lock_key(site))


async def _restore_config(
    nc: Client, site: str, fileobj: IO[bytes], checked: CheckedArchive, changed_by: str
) -> tuple[int, int]:
    """Republish the history, publish its last version on top as a new one, then remove the older
    messages. Returns (the version in force, duplicates)."""
    js = nc.jetstream()
    config_subject = subject(site, Kind.SITE_CONFIGURED, "config")
    last = checked.config_last
    assert last is not None
    try:
        current_raw = await js.get_last_msg(CONFIG.name, config_subject)
        current: SiteConfigured | None = SiteConfigured.model_validate_json(current_raw.data)
    except Exception:  # none yet (a fresh box) or unreadable: the restored history replaces it anyway
        current = None
    older_than = await last_sequence(nc, CONFIG.name) + 1
    publisher = await Republisher(nc).start()
    for subj, ident, data in _records(fileobj, lambda name: name == CONFIG_MEMBER, checked):
        await publisher.publish(subj, data.encode(), ident)
    published = await publisher.close()
    for _attempt in range(5):
        top = await js.get_last_msg(CONFIG.name, config_subject)
        top_version = SiteConfigured.model_validate_json(top.data).version
        event = SiteConfigured(
            site=site,
            version=max(top_version, current.version if current else 0, last.version) + 1,
            changed_by=changed_by,
            how="restore",
            changes=[f"restored from the backup of {checked.created_at} (version {last.version})"]
            + changes_between(current.document if current else None, last.document),
            document=last.document,
            file_digest=(current.file_digest if current else last.file_digest),
        )
        try:
            await js.publish(
                config_subject,
                event.model_dump_json().encode(),
                stream=CONFIG.name,
                headers={**event.headers(), "Nats-Expected-Last-Subject-Sequence": str(top.seq)},
                timeout=5.0,
            )
            break
        except APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
    else:
        raise RestoreFailed("the configuration kept changing during the restore")
    await js.purge_stream(CONFIG.name, subject=config_subject, seq=older_than)
    return event.version, published.duplicates


async def _restore_codes(redis: Any, site: str, codes: dict[str, dict[str, Any]]) -> list[str]:
    """Set the roles' hashed codes in one transaction; a role whose codes change gets a new stamp (every
    unlock of it is revoked, as after a code change); one whose codes stay keeps its unlocks."""
    if not codes:
        return []
    roles = list(codes)
    keys = [codes_key(site, role) for role in roles]
    current = await redis.mget(keys)
    changed: list[str] = []
    pipe = redis.pipeline(transaction=True)
    for role, key, raw in zip(roles, keys, current, strict=True):
        wanted = codes[role]
        old = json.loads(raw) if raw else {}
        same = old.get("pin") == wanted["pin"] and old.get("puk") == wanted["puk"]
        if not same:
            changed.append(role)
        stamp = old.get("stamp") if same and old.get("stamp") else secrets.token_hex(8)
        pipe.set(key, json.dumps({**wanted, "stamp": stamp}))
    await pipe.execute()
    return changed


async def _restore_readings(
    nc: Client,
    redis: Any,
    site: str,
    fileobj: IO[bytes],
    checked: CheckedArchive,
    marker: rebuild.RebuildMarker,
    progress: Progress | None,
) -> int:
    """Replace the site's readings and statuses by the archive's; returns the duplicates stored again."""
    js = nc.jetstream()
    for kind in READINGS.kinds:
        await js.purge_stream(READINGS.name, subject=pattern(site, kind))
    total = checked.counts.get("readings", 0) + checked.counts.get("statuses", 0)
    publisher = await Republisher(nc).start()
    renewed = time.monotonic()
    done = 0
    if progress:
        progress("readings", 0, total)
    for subj, ident, data in _records(fileobj, lambda name: name.startswith("readings/"), checked):
        await publisher.publish(subj, data.encode(), ident)
        done += 1
        if done % 10_000 == 0:
            if progress:
                progress("readings", done, total)
            if time.monotonic() - renewed > RENEW_EVERY:
                renewed = time.monotonic()
                await rebuild.renew(js, site, replace(marker, not_before=time.time() + rebuild.LEASE))
                await redis.expire(lock_key(site), LOCK_TTL)
    published = await publisher.close()
    if progress:
        progress("readings", done, total)
    return published.duplicates
