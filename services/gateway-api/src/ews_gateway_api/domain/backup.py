"""Backup and restore of the site over HTTP (``backup-restore`` permission: administrator and installer).

- ``GET /api/v1/backup`` — the site as one ``.tar.gz`` (``application/gzip``, an attachment named
  ``ews-backup-<site>-<date>-<time>.tar.gz``): configuration history, code hashes, readings and statuses,
  command and audit logs. Streamed as it is read from JetStream: the download starts at once and the
  server holds one 16 MiB chunk whatever the history's length.
- ``POST /api/v1/restore`` — the archive as the request body (``application/gzip`` or
  ``application/octet-stream``) or as the file of a ``multipart/form-data`` form (a page's upload). It is
  spooled to a temporary file in the data folder, **checked completely first** (any problem: 400 with one
  line naming it, and nothing changed), then applied; the answer says what was restored and whether the
  aggregator rebuilds the figures now (``started``) or when it starts (``pending``). Roles whose codes the
  restore changed are signed out everywhere (as after a change of codes), this session included.
- ``GET /api/v1/restore`` — the aggregator's rebuild progress (``state``, ``done``/``total`` readings).

The archive format, its checks and the restore itself are ``ews_contracts.backup`` (shared with
``ews backup`` / ``ews restore``); the aggregator's rebuild protocol is ``ews_contracts.rebuild``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, Literal

import redis.exceptions
from ews_contracts.backup import (
    ArchiveProblem,
    Backup,
    RestoreBusy,
    RestoreFailed,
    check_archive,
    connect,
    restore,
)
from ews_contracts.rebuild import RebuildStatus, rebuild_status
from ews_contracts.roles import Permission
from ews_contracts.text import one_line
from litestar import Request, Router, get, post
from litestar.datastructures import State, UploadFile
from litestar.response import Stream
from pydantic import BaseModel, Field

from ..errors import ApiError
from ..guards import current_role, requires
from ..i18n import N_
from ..openapi import error
from ..sessions import revoke_role_sessions
from ..sites import SITE_PARAMETER, require_own_site, site_state
from .auth import client_of

log = logging.getLogger("ews.gateway-api.backup")

MAX_ARCHIVE_BYTES = 64 * 1024**3  # an upload larger than this is refused (413)
SPOOL_CHUNK = 1024 * 1024
SKIP_COMPRESSION = (
    "skip_compression"  # opt key (app.py CompressionConfig.exclude_opt_key): the archive is gzip already
)

# The same English text as ews_contracts.backup.PROBLEMS, as catalogue msgids (a test keeps them equal).
PROBLEM_MESSAGES: dict[str, str] = {
    "empty": N_("no archive: send the .tar.gz of a backup (as the request body or a form's file)"),
    "damaged": N_("damaged archive: %(reason)s"),
    "not-a-backup": N_("not a backup of the energy web server: %(reason)s"),
    "newer-format": N_(
        "newer format %(found)s: this version reads backups up to format %(supported)s (update the energy web server first)"
    ),
    "foreign-site": N_("foreign site %(found)s: this is site %(site)s"),
    "invalid-member": N_("invalid archive member %(member)s, line %(line)s: %(reason)s"),
}
BUS_UNAVAILABLE = N_("the event bus (NATS) is unavailable; try again")


class RestoreAnswer(BaseModel):
    restore: str = Field(description="Id of this restore (the aggregator's rebuild reports it).")
    archive_created_at: str = Field(description="When the backup was made (UTC).")
    counts: dict[str, int] = Field(
        description="What the archive held: readings, statuses, config_versions, roles, commands, audit …",
        examples=[{"readings": 35040, "statuses": 12, "config_versions": 3, "roles": 4}],
    )
    configuration_version: int | None = Field(
        description="The configuration version now in force (the backup's last version, published anew)."
    )
    roles_changed: list[str] = Field(
        description="Roles whose codes changed: signed out, PUK step asked again."
    )
    signed_out: bool = Field(
        description="This session was among them: sign in again with the restored codes."
    )
    duplicates: int = Field(
        description="Messages stored again without their Nats-Msg-Id (JetStream's dedupe window)."
    )
    rebuild: Literal["started", "pending"] = Field(
        description="started: the aggregator rebuilds the figures now (GET /api/v1/restore); pending: it does "
        "when it starts."
    )
    seconds: float


class RebuildView(BaseModel):
    aggregator: Literal["answering", "not-running"]
    rebuild: RebuildStatus | None = None


def problem_error(exc: ArchiveProblem) -> ApiError:
    return ApiError(400, f"backup-{exc.problem}", PROBLEM_MESSAGES[exc.problem], **exc.params)


async def _connect(state: State, name: str) -> Any:
    try:
        return await connect(state.settings.nats_url, name)
    except Exception as exc:
        log.warning("%s: NATS unreachable: %s", name, one_line(exc))
        raise ApiError(503, "bus-unavailable", BUS_UNAVAILABLE, headers={"Retry-After": "10"}) from None


def _spool_dir(state: State) -> str | None:
    folder = Path(state.settings.data_dir) / "tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)
    except OSError:
        return None  # the system's temporary folder


async def _close(chunks: Any, nc: Any) -> None:
    with contextlib.suppress(Exception):
        await chunks.aclose()
    with contextlib.suppress(Exception):
        await nc.close()


@get(
    "/backup",
    guards=[requires(Permission.BACKUP_RESTORE)],
    opt={SKIP_COMPRESSION: True},
    operation_id="getBackup",
    summary="Download a backup of the site",
    description="One .tar.gz (application/gzip, an attachment): backup.json (format, site, date, product "
    "version), config/history.ndjson (every configuration version), auth/codes.json (the roles' argon2 "
    "hashes, never a code), readings/*.ndjson (every reading and status change with its event id), "
    "commands/*.ndjson and audit/*.ndjson, manifest.json (counts and the SHA-256 of every file). Streamed; "
    "made while the site runs (a snapshot of the streams at the request). POST it to /api/v1/restore.",
    media_type="application/gzip",
    tags=["administration"],
    responses={503: error("NATS or Redis unavailable (bus-unavailable, store-unavailable): try again.")},
)
async def get_backup(request: Request[Any, Any, State]) -> Stream:
    state = site_state(request)
    require_own_site(state)  # a site's backup is made on its own server (the hub holds copies of its streams)
    nc = await _connect(state, "gateway-api-backup")
    backup = Backup(
        nc, state.redis, state.site.site, by=current_role(request) or "", client=client_of(request)
    )
    chunks = backup.chunks()
    try:
        # the configuration and the code hashes come with the first chunk: NATS or Redis failing shows
        # as a 503 here rather than as a download cut short
        first = await anext(chunks)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        await _close(chunks, nc)
        raise  # the app's handler: 503 store-unavailable
    except Exception as exc:
        log.warning("backup not started: %s", one_line(exc))
        await _close(chunks, nc)
        raise ApiError(503, "bus-unavailable", BUS_UNAVAILABLE, headers={"Retry-After": "10"}) from None

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
            log.info(
                "backup %s: %s, %d bytes",
                backup.file_name,
                backup.summary.counts,
                backup.summary.compressed_bytes,
            )
        except Exception as exc:
            log.error("backup %s interrupted: %s", backup.file_name, one_line(exc))
            raise
        finally:
            await _close(chunks, nc)

    return Stream(
        body(),
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{backup.file_name}"',
            "Cache-Control": "no-store",
        },
    )


async def _receive(
    request: Request[Any, Any, State], spool: IO[bytes]
) -> tuple[IO[bytes], UploadFile | None]:
    """The uploaded archive as a seekable file: a form's first file, else the raw body spooled to ``spool``."""
    content_type, _ = request.content_type
    if content_type == "application/x-www-form-urlencoded":  # a form without enctype: its file never came
        raise problem_error(ArchiveProblem("empty"))
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise problem_error(ArchiveProblem("empty"))
        return upload.file, upload
    async for chunk in request.stream():
        spool.write(chunk)
    spool.flush()
    return spool, None


@post(
    "/restore",
    guards=[requires(Permission.BACKUP_RESTORE)],
    request_max_body_size=MAX_ARCHIVE_BYTES,
    status_code=200,
    # what _receive reads (a urlencoded form is answered backup-empty: a form without enctype)
    opt={
        "content_types": (
            "application/gzip",
            "application/x-gzip",
            "application/octet-stream",
            "multipart/form-data",
            "application/x-www-form-urlencoded",
        )
    },
    operation_id="restoreBackup",
    summary="Restore the site from a backup",
    description="The archive of GET /api/v1/backup as the body (application/gzip or application/octet-stream) "
    "or as a multipart/form-data file. Checked completely before anything changes: a damaged or truncated "
    "archive, another site's, a newer format, a checksum or a line that does not parse: 400 naming it "
    "(codes backup-damaged, backup-foreign-site, backup-newer-format, backup-not-a-backup, "
    "backup-invalid-member, backup-empty). Then the configuration history, the code hashes and the "
    "readings replace the site's, and the aggregator rebuilds the figures (GET /api/v1/restore).",
    tags=["administration"],
    responses={
        409: error("Another restore is running."),
        503: error("NATS or Redis failed: restore the same archive again."),
    },
)
async def post_restore(request: Request[Any, Any, State]) -> RestoreAnswer:
    state = site_state(request)
    require_own_site(state)
    site = state.site.site
    role = current_role(request) or ""
    with tempfile.TemporaryFile(dir=_spool_dir(state), prefix="ews-restore-") as spool:
        archive, upload = await _receive(request, spool)
        try:
            try:
                checked = await asyncio.to_thread(check_archive, archive, site, state.profiles)
            except ArchiveProblem as exc:
                log.info("restore refused: %s", exc)
                raise problem_error(exc) from None
            nc = await _connect(state, "gateway-api-restore")
            try:
                result = await restore(
                    nc,
                    state.redis,
                    site,
                    archive,
                    checked,
                    by=role,
                    client=client_of(request),
                    changed_by=role,
                )
            except RestoreBusy:
                raise ApiError(
                    409,
                    "restore-running",
                    N_("another restore of this site is running; try again when it is done"),
                ) from None
            except RestoreFailed as exc:
                log.error("restore failed: %s", exc)
                raise ApiError(
                    503,
                    "restore-failed",
                    N_("the restore stopped: %(reason)s; restore the same archive again to complete it"),
                    reason=str(exc),
                ) from None
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
        finally:
            if upload is not None:
                with contextlib.suppress(Exception):
                    await upload.close()
    log.info(
        "restored the backup of %s: %s (rebuild %s)", result.archive_created_at, result.counts, result.rebuild
    )
    store = request.app.stores.get("sessions")
    for changed in result.roles_changed:
        await revoke_role_sessions(state.redis, store, site, changed)
    signed_out = role in result.roles_changed
    if signed_out:
        request.clear_session()
    state.summary_cache = {}
    return RestoreAnswer(
        restore=result.restore,
        archive_created_at=result.archive_created_at,
        counts=result.counts,
        configuration_version=result.config_version,
        roles_changed=result.roles_changed,
        signed_out=signed_out,
        duplicates=result.duplicates,
        rebuild=result.rebuild,  # type: ignore[arg-type]
        seconds=round(result.seconds, 3),
    )


@get(
    "/restore",
    guards=[requires(Permission.BACKUP_RESTORE)],
    operation_id="restoreProgress",
    summary="The aggregator's rebuild after a restore",
    description="state idle (nothing to do; `restore` names the last one rebuilt), waiting (a restore is "
    "republishing), rebuilding (done/total readings), failed (retried); aggregator not-running: it "
    "rebuilds when it starts.",
    tags=["administration"],
)
async def restore_progress(request: Request[Any, Any, State]) -> RebuildView:
    state = site_state(request)
    broker = state.broker
    nc = getattr(broker, "connection", None) if broker is not None else None
    if nc is None or not nc.is_connected:
        raise ApiError(503, "bus-unavailable", BUS_UNAVAILABLE, headers={"Retry-After": "5"})
    status = await rebuild_status(nc, state.site.site)
    if status is None:
        return RebuildView(aggregator="not-running")
    return RebuildView(aggregator="answering", rebuild=status)


router = Router(
    path="/api/v1", parameters=SITE_PARAMETER, route_handlers=[get_backup, post_restore, restore_progress]
)
