"""`ews site import FILE` and `ews site export [FILE]`: the stored configuration from the command line.

``import`` validates the file (schema, device profiles) and stores it as the next version (the running
services apply it live, as a change from the pages would); ``export`` writes the version in force as
a YAML site file (``-`` or no file: standard output). Both talk to NATS at NATS_URL, so the stack (or at
least its nats-server) must be running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ews_contracts.settings import Settings
from ews_contracts.yamlfile import ConfigFileError

from .servers import StartupError

NATS_TIMEOUT = 5.0


async def _connect(settings: Settings):
    import nats

    async def quiet(_exc: Exception) -> None:  # the one-line error below says it all
        return None

    try:
        return await asyncio.wait_for(
            nats.connect(
                settings.nats_url,
                connect_timeout=2,
                max_reconnect_attempts=0,
                allow_reconnect=False,
                error_cb=quiet,
            ),
            NATS_TIMEOUT,
        )
    except Exception:
        raise StartupError(
            f"NATS does not answer at {settings.nats_url}: start the stack (`ews up` or `make run`) first"
        ) from None


async def _import(settings: Settings, path: Path) -> str:
    from ews_contracts.profiles import load_profiles
    from ews_contracts.site import load_site
    from ews_contracts.siteconfig import (
        ConfigInvalid,
        ConfigStore,
        VersionConflict,
        digest,
        document_of,
        validate_document,
    )

    site = load_site(path)  # ConfigFileError: file:line: field: message
    try:
        validate_document(site.model_dump(mode="json"), load_profiles(settings.profiles_dir))
    except ConfigInvalid as exc:
        raise StartupError(f"{path}: {exc}") from None
    nc = await _connect(settings)
    try:
        from ews_contracts.bus import ensure_streams_with

        js = nc.jetstream()
        await ensure_streams_with(js)
        store = ConfigStore(js, site.site)
        last = await store.latest()
        if last is not None and last.document == document_of(site):
            return f"{path}: same as version {last.version} in force; nothing stored"
        try:
            event = await store.put(
                site,
                expected=None,
                changed_by="ews site import",
                how="import",
                file_digest=digest(path.read_bytes()),  # noqa: ASYNC240 - a small file, once
            )
        except VersionConflict:  # not with expected=None; kept for completeness
            raise StartupError("the configuration changed during the import: run it again") from None
    finally:
        await nc.close()
    changes = "; ".join(event.changes[:8]) + (" …" if len(event.changes) > 8 else "")
    return f"{path}: stored as version {event.version} of site {site.site!r} ({changes or 'no change'})"


async def _export(settings: Settings, site_id: str | None) -> str:
    from ews_contracts.siteconfig import ConfigStore, to_yaml

    site_id = site_id or settings.site.site
    nc = await _connect(settings)
    try:
        event = await ConfigStore(nc.jetstream(), site_id).latest()
    except Exception as exc:
        raise StartupError(f"cannot read the configuration of site {site_id!r}: {exc}") from None
    finally:
        await nc.close()
    if event is None:
        raise StartupError(
            f"no stored configuration for site {site_id!r} yet: start the stack once (`ews up`)"
        )
    header = f"# site configuration version {event.version} ({event.occurred_at:%Y-%m-%d %H:%M} UTC)\n"
    return header + to_yaml(event.document)


def cmd_site(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "import":
        if not args.file:
            raise StartupError("ews site import FILE: give the site file to import")
        print(asyncio.run(_import(settings, Path(args.file))))
        return 0
    text = asyncio.run(_export(settings, args.site_id))
    if not args.file or args.file == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(args.file).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise StartupError(f"cannot write {args.file}: {exc.strerror}") from None
        print(f"wrote {args.file}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("site", help="import a site file as the configuration in force, or export it")
    p.add_argument("action", choices=["import", "export"])
    p.add_argument("file", nargs="?", help="import: the site file; export: where to write (default: stdout)")
    p.add_argument("--site-id", help="export: the site id (default: the one of $EWS_SITE_FILE / the demo)")
    p.set_defaults(fn=_run)


def _run(args: argparse.Namespace) -> int:
    from .cli import _settings_light

    try:
        return cmd_site(args, _settings_light())
    except ConfigFileError:
        raise
