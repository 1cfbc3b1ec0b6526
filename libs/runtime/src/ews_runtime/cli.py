"""The `ews` command.

ews up                     everything on one box (nats-server, redis-server, chDB, all services)
ews run <target>[,<t>…]    one service or a set per process (docker-compose, clusters)
ews targets                list the installed targets
ews check-site FILE        validate a site file
ews site import FILE       store a site file as the configuration in force (applied live)
ews site export [FILE]     write the configuration in force as a YAML site file
ews asyncapi [--check]     write (or check) the AsyncAPI event catalogue
ews replay [--database DB] rebuild the ClickHouse projections from the readings stream
ews backup FILE            write a backup of the site (.tar.gz)
ews restore FILE           restore the site from a backup
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from ews_contracts.metrics import serve_own as serve_metrics
from ews_contracts.settings import Settings
from ews_contracts.yamlfile import ConfigFileError
from pydantic import ValidationError

from .servers import StartupError
from .targets import TargetFailed, available_targets, resolve, run_targets


def _configure_logging(level: str, prefix: str) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    if not isinstance(numeric, int):  # EWS_LOG_LEVEL=basic_format…
        numeric = logging.INFO
    logging.basicConfig(
        level=numeric,
        format=f"%(asctime)s {prefix:<10} %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("uvicorn.access", "faststream.access", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pymodbus logs every failed transaction at ERROR, with a hex dump of the last frames appended (five
    # dead meters polled every second: ~26 lines a second); ews_fieldbus turns each failure into a
    # FieldbusError that the services log once per fault (ews_fieldbus.FaultLog). So pymodbus speaks only
    # at DEBUG, where its frame traces are the point.
    quiet = logging.DEBUG if numeric <= logging.DEBUG else logging.CRITICAL + 1
    logging.getLogger("pymodbus").setLevel(quiet)
    if numeric > logging.DEBUG:  # the client libraries' tracebacks only at DEBUG
        for handler in logging.getLogger().handlers:
            handler.addFilter(_library_errors_on_one_line)


def _library_errors_on_one_line(record: logging.LogRecord) -> bool:
    """nats-py logs every lost connection ("nats: encountered error") with a full traceback, in every
    service: a restart of nats-server wrote ~14 tracebacks. A library's error becomes one line naming the
    exception; our own code's tracebacks (unexpected errors) are kept."""
    if record.exc_info and record.name.split(".", 1)[0] in ("nats", "faststream", "redis"):
        exc = record.exc_info[1]
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")
        record.args = ()
        record.exc_info = None
        record.exc_text = None
    return True


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "site", None):
        os.environ["EWS_SITE_FILE"] = str(Path(args.site).resolve())
    if getattr(args, "data", None):
        os.environ["EWS_DATA_DIR"] = str(Path(args.data).resolve())
    try:
        settings = Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise StartupError(f"environment variable {name}: {err['msg']} (got {err.get('input')!r})") from None
    check_devices(settings.site, settings.profiles_dir, settings.site_path)  # before anything starts
    return settings


def _settings_light() -> Settings:
    """The environment's settings without the start-up checks (commands that only talk to NATS)."""
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise StartupError(f"environment variable {name}: {err['msg']} (got {err.get('input')!r})") from None


def check_devices(site, profiles_dir: Path | None, where: object) -> None:
    """Every device against its profile (position, pulse input, modules, ea_register): StartupError with
    one line per problem, so a typo in a profile name stops the start instead of silently losing a device."""
    from ews_contracts.profiles import ProfileError, check_device, load_profiles

    profiles = load_profiles(profiles_dir)
    problems = []
    for device in site.devices:
        try:
            check_device(device, profiles)
        except ProfileError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise StartupError("\n".join(problems))


def cmd_run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    try:
        resolve(names)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    settings = _settings(args)
    _configure_logging(settings.log_level, "+".join(names))
    serve_metrics(settings)  # EWS_METRICS_PORT; under `ews up` the gateway-api serves every process's
    try:
        asyncio.run(run_targets(names, settings))
    except TargetFailed as exc:
        raise StartupError(f"{args.targets}: {exc} (EWS_LOG_LEVEL=DEBUG shows the traceback)") from None
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .up import Mode, up

    settings = _settings(args)
    _configure_logging(settings.log_level, "ews")
    hub = getattr(args, "hub", None)
    if getattr(args, "edge", False):
        if not hub:
            raise StartupError("--edge needs the hub's leaf-node address: --hub nats-leaf://HOST:7422")
        if not hub.startswith(("nats-leaf://", "nats://", "tls://")):
            raise StartupError(f"--hub {hub}: write the hub's leaf-node address as nats-leaf://HOST:PORT")
        return up(settings, Mode("edge", hub_url=hub))
    if hub is not None:
        if hub:
            raise StartupError(
                "--hub takes no address on the hub itself (an edge: --edge --hub nats-leaf://HOST:PORT)"
            )
        return up(settings, Mode("hub", leaf_port=_leaf_port()))
    return up(settings)


def _leaf_port() -> int:
    raw = os.environ.get("EWS_LEAF_PORT", "7422")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StartupError(f"EWS_LEAF_PORT={raw!r}: a port number from 1 to 65535")
    return int(raw)


def cmd_targets(args: argparse.Namespace) -> int:
    for name, value in sorted(available_targets().items()):
        print(f"{name:<14} {value}")
    return 0


def cmd_check_site(args: argparse.Namespace) -> int:
    from ews_contracts.site import load_site

    site = load_site(Path(args.file))
    extra = os.environ.get("EWS_PROFILES_DIR")
    check_devices(site, Path(extra) if extra else None, args.file)
    print(
        f"{args.file}: site {site.site!r}, {len(site.devices)} devices on {len(site.gateways)} gateways, "
        f"{len(site.virtual_devices)} virtual — OK"
    )
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from ews_contracts.catalogue import catalogue_json

    path = Path(args.output)
    text = catalogue_json()
    if args.check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            raise StartupError(
                f"{path} is out of date with the event models: run `ews asyncapi` and commit it"
            )
        print(f"{path}: up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Installed commands (entry point group ``ews.commands``): the aggregator registers ``replay``."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="ews.commands")}
    if "replay" not in found:
        raise StartupError("no `replay` command installed: install the aggregator (ews-aggregator)")
    settings = _settings(args)
    _configure_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level, "replay")
    return int(found["replay"].load()(settings, database=args.database, batch_size=args.batch_size))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ews", description="Energy web server")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (
        ("up", cmd_up, "run everything on this machine"),
        ("run", cmd_run, "run one target or a comma-separated set"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "run":
            p.add_argument("targets", help="e.g. poller or aggregator,gateway-api (see `ews targets`)")
        p.add_argument("--site", help="site file (default: $EWS_SITE_FILE, else the simulated demo site)")
        p.add_argument("--data", help="data folder (default: $EWS_DATA_DIR, else ./data)")
        if name == "up":
            p.add_argument(
                "--edge", action="store_true", help="this site's box, a leaf node of a hub (needs --hub)"
            )
            p.add_argument(
                "--hub",
                nargs="?",
                const="",
                metavar="nats-leaf://HOST:PORT",
                help="alone: run the hub (leaf-node port $EWS_LEAF_PORT, 7422); with --edge: the hub's address",
            )
        p.set_defaults(fn=fn)
    p = sub.add_parser("targets", help="list the installed targets")
    p.set_defaults(fn=cmd_targets)
    p = sub.add_parser("asyncapi", help="write the AsyncAPI event catalogue (docs/asyncapi.json)")
    p.add_argument("--output", default="docs/asyncapi.json")
    p.add_argument("--check", action="store_true", help="fail if the committed file is out of date")
    p.set_defaults(fn=cmd_asyncapi)
    p = sub.add_parser("replay", help="rebuild the ClickHouse projections from the readings stream")
    p.add_argument("--site", help="site file (default: $EWS_SITE_FILE, else the simulated demo site)")
    p.add_argument("--data", help="data folder (default: $EWS_DATA_DIR, else ./data)")
    p.add_argument("--database", help="ClickHouse database to rebuild (default: $CLICKHOUSE_DATABASE)")
    p.add_argument("--batch-size", type=int, default=20_000, help="messages per read (default 20000)")
    p.set_defaults(fn=cmd_replay)
    from .site_cli import add_parser as add_site_parser

    add_site_parser(sub)
    p = sub.add_parser("check-site", help="validate a site file")
    p.add_argument("file")
    p.set_defaults(fn=cmd_check_site)
    from .backupcmd import add_parser as add_backup_parser

    add_backup_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigFileError, StartupError) as exc:
        print(f"ews: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
