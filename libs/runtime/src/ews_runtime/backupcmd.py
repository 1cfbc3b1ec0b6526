"""``ews backup FILE`` and ``ews restore FILE``: the archive of ``GET /api/v1/backup`` / ``POST /api/v1/restore``
from the command line (the same code: ``ews_contracts.backup``).

They talk to NATS and Redis at ``NATS_URL`` / ``REDIS_URL``, like the services (with the password kept in
``data/redis/password`` by ``ews up`` when ``REDIS_URL`` carries none). When nothing answers there
(the stack is stopped) they start nats-server and redis-server on the data folder for the time of the
command, exactly as ``ews up`` would, and stop them at the end: a stopped box can be backed up, and a fresh
one restored before its first start. The figures are rebuilt by the aggregator: at once when it runs
(``ews restore`` shows its progress until it is done, unless ``--no-wait``), else when ``ews up`` starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ews_contracts.backup import (
    CLI_ROLE,
    ArchiveProblem,
    Backup,
    RestoreBusy,
    RestoreFailed,
    check_archive,
    connect,
    restore,
)
from ews_contracts.rebuild import rebuild_status
from ews_contracts.settings import Settings
from ews_contracts.text import one_line

from .servers import (
    ManagedServer,
    NatsServer,
    RedisServer,
    StartupError,
    host_port,
    probe,
    redis_password,
    redis_url_for,
    url_password,
)

LOCAL = {"127.0.0.1", "localhost", "::1"}
WAIT_POLL = 1.0  # seconds between two questions to the aggregator
SILENCE = 60.0  # seconds without an answer before `ews restore` stops waiting for the rebuild


class CommandError(Exception):
    """One line for the person; the command exits with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def servers_for(settings: Settings) -> Iterator[list[str]]:
    """NATS and Redis for the command: the running ones, else ones started on the data folder (the
    names of those started are yielded)."""
    data = settings.data_dir.resolve()
    started: list[ManagedServer] = []
    try:
        for url, kind, default_port, make in (
            (
                settings.nats_url,
                "nats",
                4222,
                lambda h, p: NatsServer(data / "nats", p, h, log=data / "nats-server.log"),
            ),
            (
                settings.redis_url,
                "redis",
                6379,
                lambda h, p: RedisServer(
                    data / "redis",
                    p,
                    h,
                    log=data / "redis-server.log",
                    password=url_password(settings.redis_url) or redis_password(data / "redis"),
                ),
            ),
        ):
            host, port = host_port(url, default_port)
            found = probe(host, port)
            if found == kind:
                continue
            if found is not None:
                raise StartupError(
                    f"{host}:{port} answers, but not as {kind} ({found}): check {'NATS_URL' if kind == 'nats' else 'REDIS_URL'}"
                )
            if host not in LOCAL:
                raise StartupError(
                    f"nothing answers at {host}:{port}: start it, or check {'NATS_URL' if kind == 'nats' else 'REDIS_URL'}"
                )
            data.mkdir(parents=True, exist_ok=True)
            started.append(make(host, port).start())
        yield [s.name for s in started]
    finally:
        for server in reversed(started):
            server.stop()


def _client() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return socket.gethostname()


async def _connect(settings: Settings, name: str):
    try:
        return await connect(settings.nats_url, name)
    except Exception as exc:
        raise CommandError(
            f"cannot reach NATS at {settings.nats_url}: {one_line(exc)} (set NATS_URL)"
        ) from None


def _redis(settings: Settings):
    import redis.asyncio as aioredis

    # the password of `ews up`'s redis-server (data/redis/password) when REDIS_URL carries none
    url = redis_url_for(settings.redis_url, settings.data_dir.resolve())
    return aioredis.from_url(url, socket_connect_timeout=5)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


async def backup(settings: Settings, path: Path) -> None:
    site = settings.site.site
    partial = path.with_name(path.name + ".part")
    nc = await _connect(settings, "ews-backup")
    redis = _redis(settings)
    started = time.monotonic()
    try:
        job = Backup(nc, redis, site, by=CLI_ROLE, client=_client())
        try:
            with open(partial, "wb") as out:  # noqa: ASYNC230 (a command: nothing else runs in its loop)
                async for chunk in job.chunks():
                    out.write(chunk)
        except OSError as exc:
            raise CommandError(f"cannot write {partial}: {exc.strerror or one_line(exc)}") from None
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(f"backup failed: {one_line(exc)}", 1) from None
        try:
            partial.replace(path)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror or one_line(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            await redis.aclose()
        with contextlib.suppress(Exception):
            await nc.close()
    counts = job.summary.counts
    print(
        f"wrote {path} ({_size(job.summary.compressed_bytes)}) in {time.monotonic() - started:.1f} s: site {site!r}, "
        f"{counts.get('readings', 0):,} readings, {counts.get('statuses', 0):,} statuses, "
        f"{counts.get('config_versions', 0)} configuration versions, {counts.get('roles', 0)} roles' code hashes, "
        f"{counts.get('commands', 0):,} commands, {counts.get('audit', 0):,} audit records"
    )
    skipped = sum(job.summary.skipped.values())
    if skipped:
        print(f"left out {skipped} messages that are not valid events of the site ({job.summary.skipped})")


def _progress(phase: str, done: int, total: int) -> None:
    pct = 100.0 * done / total if total else 100.0
    sys.stderr.write(f"\r{phase}: {done:,}/{total:,} ({pct:5.1f}%) ")
    sys.stderr.flush()


async def restore_file(settings: Settings, path: Path, wait: bool = True) -> None:
    from ews_contracts.profiles import load_profiles

    site = settings.site.site
    try:
        handle = open(path, "rb")  # noqa: ASYNC230, SIM115 (a command; closed below, after two passes)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    with handle:
        print(f"checking {path} …", flush=True)
        try:
            checked = await asyncio.to_thread(
                check_archive, handle, site, load_profiles(settings.profiles_dir)
            )
        except ArchiveProblem as exc:
            raise CommandError(f"{path}: {exc}") from None
        nc = await _connect(settings, "ews-restore")
        redis = _redis(settings)
        try:
            try:
                result = await restore(
                    nc,
                    redis,
                    site,
                    handle,
                    checked,
                    by=CLI_ROLE,
                    client=_client(),
                    changed_by="ews restore",
                    progress=_progress,
                )
            except RestoreBusy as exc:
                raise CommandError(str(exc)) from None
            except RestoreFailed as exc:
                raise CommandError(
                    f"restore stopped: {exc}; run the same `ews restore` again to complete it", 1
                ) from None
            finally:
                sys.stderr.write("\n")
            counts = result.counts
            print(
                f"restored the backup of {result.archive_created_at} into site {site!r} in {result.seconds:.1f} s: "
                f"{counts.get('readings', 0):,} readings, {counts.get('statuses', 0):,} statuses, "
                f"{counts.get('config_versions', 0)} configuration versions"
                + (f" (version {result.config_version} in force)" if result.config_version else "")
                + f", {counts.get('roles', 0)} roles' codes"
                + (
                    f" (changed: {', '.join(result.roles_changed)}; their PUK step is asked again)"
                    if result.roles_changed
                    else ""
                )
            )
            if result.rebuild == "pending":
                print("the aggregator is not running: it rebuilds the figures when it starts (`ews up`)")
            elif wait:
                await _wait_rebuilt(nc, site, result.restore)
            else:
                print("the aggregator is rebuilding the figures (GET /api/v1/restore shows its progress)")
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()
            with contextlib.suppress(Exception):
                await nc.close()


async def _wait_rebuilt(nc, site: str, restore_id: str) -> None:
    started = time.monotonic()
    answered = time.monotonic()
    while True:
        status = await rebuild_status(nc, site, wait=5.0)
        if status is None:  # busy (a big batch being written) or stopped
            if time.monotonic() - answered > SILENCE:
                sys.stderr.write("\n")
                print("the aggregator stopped answering: it rebuilds the figures when it runs again")
                return
            await asyncio.sleep(WAIT_POLL)
            continue
        answered = time.monotonic()
        if status.restore == restore_id and status.state == "idle":
            sys.stderr.write("\n")
            print(f"figures rebuilt from {status.done:,} readings in {time.monotonic() - started:.1f} s")
            return
        if status.state == "failed":
            sys.stderr.write("\n")
            raise CommandError(f"the aggregator's rebuild failed (it tries again): {status.error}", 1)
        if status.state == "rebuilding":
            _progress("rebuild", status.done, status.total)
        await asyncio.sleep(WAIT_POLL)


def check_path(action: str, path: Path) -> None:
    """Before anything starts: where the archive goes, or that it can be read."""
    if action == "backup":
        if path.is_dir():
            raise CommandError(
                f"cannot write {path}: it is a folder (name the archive, e.g. {path / 'site.tar.gz'})"
            )
        if not path.parent.is_dir():
            raise CommandError(f"cannot write {path}: no folder {path.parent}")
    elif not path.is_file():
        raise CommandError(f"cannot read {path}: {'it is a folder' if path.is_dir() else 'no such file'}")


def run(settings: Settings, action: str, path: Path, wait: bool = True) -> int:
    """The ``ews backup`` / ``ews restore`` commands: 0, or 1/2 after one line on stderr."""
    try:
        check_path(action, path)
        with servers_for(settings) as started:
            if started:
                print(
                    f"(the stack is not running: started {' and '.join(started)} on {settings.data_dir} for this command)",
                    flush=True,
                )
            if action == "backup":
                asyncio.run(backup(settings, path))
            else:
                asyncio.run(restore_file(settings, path, wait))
    except CommandError as exc:
        print(f"ews {action}: error: {exc}", file=sys.stderr)
        return exc.code
    except StartupError as exc:
        print(f"ews {action}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\news {action}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # Redis down, a bug …: one line, never a traceback
        print(f"ews {action}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _command(args) -> int:
    from .cli import _configure_logging, _settings

    settings = _settings(args)
    _configure_logging(
        "WARNING" if settings.log_level.upper() == "INFO" else settings.log_level, args.command
    )
    return run(settings, args.command, Path(args.file), wait=not getattr(args, "no_wait", False))


def add_parser(sub) -> None:
    """``ews backup FILE`` and ``ews restore FILE [--no-wait]`` (added to the ``ews`` command's parser)."""
    for name, text in (
        ("backup", "write a backup of the site (.tar.gz): configuration, code hashes, readings, logs"),
        ("restore", "restore the site from a backup (checked completely before anything changes)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", help="the archive (.tar.gz)")
        p.add_argument("--site", help="site file (default: $EWS_SITE_FILE, else the simulated demo site)")
        p.add_argument("--data", help="data folder (default: $EWS_DATA_DIR, else ./data)")
        if name == "restore":
            p.add_argument(
                "--no-wait", action="store_true", help="do not wait for the aggregator to rebuild the figures"
            )
        p.set_defaults(fn=_command)
