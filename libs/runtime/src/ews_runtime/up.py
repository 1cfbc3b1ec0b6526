"""`ews up`: the whole product on one box, supervised.

Starts (or reuses, when one already answers at NATS_URL / REDIS_URL) nats-server with JetStream on disk and
redis-server in the data folder, then every target as its own process (`ews run …`), restarts a
target that dies, and stops everything cleanly on Ctrl-C. The data folder survives restarts. Once all is
started, the process hands over to ``ews_runtime.supervise`` (exec, same pid; standard library only), which
does the watching for as long as the box runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass

from ews_contracts.hub import EDGE_SITE_ENV, HUB_DOMAIN, edge_domain
from ews_contracts.metrics import MULTIPROC_ENV
from ews_contracts.roles import DEFAULT_CODES, format_puk
from ews_contracts.settings import Settings

from .servers import (
    ManagedServer,
    NatsServer,
    RedisServer,
    StartupError,
    host_port,
    nats_server_binary,
    port_in_use,
    probe,
    redis_password,
    redis_server_binary,
    url_password,
    url_with_password,
)
from .supervise import STOP_SIGNALS, Child, Server, StartError, Supervisor, poll

log = logging.getLogger("ews.up")


SIMULATOR_WAIT = 300.0  # seconds the poller waits for the simulator (the demo history comes first)


@dataclass(frozen=True)
class Mode:
    """One box (default), an edge of a hub (``--edge --hub nats-leaf://HOST:PORT``) or the hub (``--hub``)."""

    role: str = "box"  # box | edge | hub
    hub_url: str | None = None  # an edge's leaf-node remote
    leaf_port: int = 7422  # the hub's leaf-node port (EWS_LEAF_PORT)


HUB_AGGREGATORS_ENV = "EWS_HUB_AGGREGATORS"


def hub_aggregators(settings: Settings) -> int:
    """How many members of the aggregator group the hub runs (``EWS_HUB_AGGREGATORS``, default 1). Several
    need a ClickHouse server: with embedded chDB each member keeps the figures of the sites it happens to
    hold in a data folder only its own process can open, so a site moving to another member would leave
    its history behind."""
    raw = os.environ.get(HUB_AGGREGATORS_ENV, "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise StartupError(
            f"{HUB_AGGREGATORS_ENV}={raw!r}: give a number of aggregator processes from 1 to 64"
        )
    if int(raw) > 1 and settings.uses_chdb:
        raise StartupError(
            f"{HUB_AGGREGATORS_ENV}={raw} needs a ClickHouse server (CLICKHOUSE_URL): with embedded chDB one "
            "process owns the figures, so the hub runs one aggregator"
        )
    return int(raw)


def target_groups(settings: Settings, mode: Mode | None = None) -> list[str]:
    if mode is not None and mode.role == "hub":
        # the hub's nats-server holds every site's streams (sourced by the edges' hub-link); the aggregator
        # group accounts every site into its own database (ews_aggregator.group); hub-live keeps every
        # site's live device state in the hub's Redis (ews_runtime.hublive); the gateway-api serves every
        # site (`?site=`) with the hub's own codes (auth, identity "hub"). With chDB the one member of the
        # group and the gateway-api share the engine's process.
        members = hub_aggregators(settings)
        if settings.uses_chdb:
            return ["hub-live", "aggregator-group,gateway-api,auth"]
        return ["hub-live", "auth", "gateway-api", *["aggregator-group"] * members]
    groups = ["simulator"] if settings.runs_simulator else []
    if mode is not None and mode.role == "edge":
        groups += ["hub-link"]
    # The poller, the one owner of each bus, keeps a process of its own: its transactions' timing is not
    # shared with anything. chDB is one engine per process, so the targets that touch ClickHouse share one;
    # commands and auth (small NATS services, each with its own connections, subjects and consumers, as
    # under `ews run`) join it: a Python process costs 50-60 MiB before it does anything (the footprint
    # goal of the whole box is 450 MiB). `ews run <target>` still runs any target alone.
    groups += ["poller", ONE_BOX_GROUP]
    return groups


ONE_BOX_GROUP = "aggregator,gateway-api,commands,auth"


def _reuse(url: str, default_port: int, kind: str) -> bool:
    """True when a usable server already answers at url (reuse it); False when the port is free (start one)."""
    host, port = host_port(url, default_port)
    found = probe(host, port)
    if found is None:
        return False
    if found == kind:
        log.info("reusing the %s server already running on %s:%s", kind, host, port)
        return True
    what = {"nats-no-jetstream": "a NATS server without JetStream"}.get(
        found, f"a program that is not {kind}"
    )
    raise StartupError(
        f"port {port} on {host} is already in use by {what}: stop it, or point "
        f"{'NATS_URL' if kind == 'nats' else 'REDIS_URL'} at another address"
    )


def _check_ports(settings: Settings) -> None:
    wanted: list[tuple[str, int, str]] = [
        (settings.http_host, settings.http_port, "the web server (EWS_HTTP_PORT)")
    ]
    if settings.runs_simulator:
        wanted += [(settings.simulator_bind, g.port, "the device simulator") for g in settings.site.gateways]
    for host, port, what in wanted:
        if port_in_use(host, port):
            raise StartupError(
                f"port {port} is already in use, so {what} cannot start: stop the program using it "
                f"(e.g. a previous `make run`) or choose another port"
            )


def _wait_http(url: str, timeout: float, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in children:
            if c.pid is not None and (code := poll(c.pid)) is not None:
                raise StartupError(f"target {c.targets} exited with code {code} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise StartupError(f"{url} did not answer within {timeout:.0f} s; see the messages above")


def up(settings: Settings, mode: Mode | None = None) -> int:
    mode = mode or Mode()
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    if mode.role != "hub":
        _check_ports(settings)
    manage_nats = not _reuse(settings.nats_url, 4222, "nats")
    manage_redis = not _reuse(settings.redis_url, 6379, "redis")
    if manage_nats:
        nats_server_binary()  # fail before starting anything
    if manage_redis:
        redis_server_binary()

    supervisor = Supervisor(
        child_argv=[sys.executable, "-m", "ews_runtime.cli", "run"],
        env=dict(os.environ, EWS_DATA_DIR=str(data)),
        data_dir=str(data),
        metrics_dir=str(data / "metrics"),
        simulator_wait=SIMULATOR_WAIT,
    )
    for sig in STOP_SIGNALS:
        signal.signal(sig, supervisor.on_signal)

    env = supervisor.env
    # every child writes its Prometheus metrics here; the gateway-api's /metrics serves them all
    metrics = data / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir()
    env[MULTIPROC_ENV] = str(metrics)
    if settings.site_file:
        env["EWS_SITE_FILE"] = str(settings.site_file.resolve())
    if mode.role == "edge":  # its streams hold its own site only (ews_contracts.hub)
        env[EDGE_SITE_ENV] = settings.site.site
    if mode.role == "hub":  # no site file: every site whose streams reach the hub, the hub's own codes
        env["EWS_HUB"] = "1"
        env.pop("EWS_SITE_FILE", None)
    children = supervisor.children = [Child(t) for t in target_groups(settings, mode)]
    try:
        if manage_nats:
            host, port = host_port(settings.nats_url, 4222)
            nats_server = NatsServer(
                data / "nats",
                port,
                host,
                log=data / "nats-server.log",
                domain=HUB_DOMAIN
                if mode.role == "hub"
                else edge_domain(settings.site.site)
                if mode.role == "edge"
                else None,
                leaf_port=mode.leaf_port if mode.role == "hub" else None,
                leaf_remote=mode.hub_url if mode.role == "edge" else None,
            )
            _start_server(supervisor, nats_server)
            log.info("nats-server (JetStream) on %s, data in %s", settings.nats_url, data / "nats")
            if mode.role == "hub":
                log.info(
                    "hub: edges connect as leaf nodes on port %s and source their streams here",
                    mode.leaf_port,
                )
            elif mode.role == "edge":
                log.info(
                    "edge of site %s: leaf node of %s (JetStream domain %s)",
                    settings.site.site,
                    mode.hub_url,
                    edge_domain(settings.site.site),
                )
        elif mode.role != "box":
            log.warning(
                "--%s: nats-server at %s is not started by ews, so its domain and leaf-node link are "
                "its own configuration's",
                mode.role,
                settings.nats_url,
            )
        if manage_redis:
            # protected by a password: REDIS_URL's, else one made on the first start and kept in the data
            # folder (data/redis/password); the children get REDIS_URL with it. A reused Redis is left as is.
            password = url_password(settings.redis_url) or redis_password(data / "redis", create=True)
            env["REDIS_URL"] = url_with_password(settings.redis_url, password)
            host, port = host_port(settings.redis_url, 6379)
            redis_log = data / "redis-server.log"
            _start_server(
                supervisor, RedisServer(data / "redis", port, host, log=redis_log, password=password)
            )
            log.info("redis-server on %s:%s (password protected), data in %s", host, port, data / "redis")

        # The poller starts once the simulator answers: on the demo's first start the simulator publishes
        # the demo history first (ews_simulator.history), and live readings must follow it in the stream.
        # Everything else (the web server too) starts at once.
        if any(c.targets == "simulator" for c in children):
            supervisor.held_until = [(settings.simulator_bind, g.port) for g in settings.site.gateways]
            supervisor.held_since = time.monotonic()
            for child in children:
                child.held = child.targets == "poller"
        for child in children:
            if not child.held:
                supervisor.start_child(child)
        url = f"http://{settings.http_host}:{settings.http_port}"
        if any("gateway-api" in c.targets for c in children):
            _wait_http(f"{url}/health", 90, children)
            _banner(url, settings, hub=mode.role == "hub")
        root = logging.getLogger()
        formatter = root.handlers[0].formatter if root.handlers else None
        if formatter is not None:
            supervisor.log_format, supervisor.log_datefmt = formatter._fmt, formatter.datefmt
        supervisor.log_level = root.level
    except BaseException:
        supervisor.shutdown()
        raise
    # Supervising for as long as the box runs needs none of the above (pydantic, the site models,
    # prometheus_client: ~40 MiB): hand over to a process of the standard library only.
    _hand_over(supervisor)  # returns only when the exec failed
    return supervisor.run()


def _start_server(supervisor: Supervisor, server: ManagedServer) -> None:
    watched = Server(
        name=server.name,
        command=server.command(),
        host=server.host,
        port=server.port,
        data_dir=str(server.data_dir),
        log_file=str(server.log) if server.log else None,
    )
    supervisor.servers.append(watched)
    try:
        watched.start()
    except StartError as exc:
        raise StartupError(str(exc)) from None


def _hand_over(supervisor: Supervisor) -> None:
    """``os.execv`` into ``python -m ews_runtime.supervise`` (same pid: the children stay this process's),
    the supervisor's state as JSON in an anonymous file it inherits. SIGINT/SIGTERM stay blocked until the
    new process has its handlers (a Ctrl-C meanwhile is delivered then). Returns only when the exec failed;
    the caller then supervises in this process."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    fd = -1
    try:
        fd = os.memfd_create("ews-up-handover", 0) if hasattr(os, "memfd_create") else _temporary_fd()
        os.write(fd, supervisor.to_json().encode())
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "ews_runtime.supervise", "--handover-fd", str(fd)])
    except Exception as exc:  # noqa: BLE001 — nothing is lost: this process supervises instead
        log.warning("could not hand over to the light supervisor (%s); supervising in this process", exc)
        if fd >= 0:
            os.close(fd)


def _temporary_fd() -> int:
    import tempfile

    return os.dup(tempfile.TemporaryFile().fileno())


def _banner(url: str, settings: Settings, hub: bool = False) -> None:
    if hub:
        where = "  hub: every site whose edge is linked (GET /api/v1/sites; the pages have a site picker)"
    else:
        site = settings.site
        simulated = "  — simulated" if settings.runs_simulator else ""
        where = f"  site: {site.name} ({len(site.devices)} devices){simulated}"
    lines = [
        "",
        f"  Energy web server is running: {url}",
        where,
        "  default codes (change them in Configuration):",
        *(f"    {role:<14} PIN {pin}   PUK {format_puk(puk)}" for role, (pin, puk) in DEFAULT_CODES.items()),
        f"  API: {url}/api/v1   OpenAPI: {url}/schema   data: {settings.data_dir.resolve()}",
        "  Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)
