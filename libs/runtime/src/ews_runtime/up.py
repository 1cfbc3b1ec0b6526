"""`ews up`: the whole product on one box, supervised.

Starts (or reuses, when one already answers at NATS_URL / REDIS_URL) nats-server with JetStream on disk and
redis-server in the data folder, then every target as its own process (`ews run …`), restarts a
target that dies, and stops everything cleanly on Ctrl-C. The data folder survives restarts.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from ews_contracts.hub import EDGE_SITE_ENV, HUB_DOMAIN, edge_domain
from ews_contracts.metrics import MULTIPROC_ENV, process_dead
from ews_contracts.roles import DEFAULT_CODES, format_puk
from ews_contracts.settings import Settings

from .servers import (
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

log = logging.getLogger("ews.up")


@dataclass
class Child:
    targets: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)


SIMULATOR_WAIT = 300.0  # seconds the poller waits for the simulator (the demo history comes first)


def _simulator_ready(settings: Settings) -> bool:
    """Every simulated gateway accepts connections."""
    for g in settings.site.gateways:
        try:
            with socket.create_connection((settings.simulator_bind, g.port), timeout=0.2):
                pass
        except OSError:
            return False
    return True


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
        # site's live device state in the hub's Redis (ews_runtime.hublive)
        return ["hub-live", *["aggregator-group"] * hub_aggregators(settings)]
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
            if c.proc is not None and c.proc.poll() is not None:
                raise StartupError(f"target {c.targets} exited with code {c.proc.returncode} during start-up")
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

    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    servers = []
    env = dict(os.environ, EWS_DATA_DIR=str(data))
    # every child writes its Prometheus metrics here; the gateway-api's /metrics serves them all
    metrics = data / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir()
    env[MULTIPROC_ENV] = str(metrics)
    if settings.site_file:
        env["EWS_SITE_FILE"] = str(settings.site_file.resolve())
    if mode.role == "edge":  # its streams hold its own site only (ews_contracts.hub)
        env[EDGE_SITE_ENV] = settings.site.site
    children = [Child(t) for t in target_groups(settings, mode)]
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
            servers.append(nats_server.start())
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
            servers.append(RedisServer(data / "redis", port, host, log=redis_log, password=password).start())
            log.info("redis-server on %s:%s (password protected), data in %s", host, port, data / "redis")

        def start(child: Child) -> None:
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "ews_runtime.cli", "run", child.targets],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches only this supervisor, which stops children in order
            )
            child.started_at = time.monotonic()

        # The poller starts once the simulator answers: on the demo's first start the simulator publishes
        # the demo history first (ews_simulator.history), and live readings must follow it in the stream.
        # Everything else (the web server too) starts at once.
        simulator = next((c for c in children if c.targets == "simulator"), None)
        held = [c for c in children if c.targets == "poller"] if simulator is not None else []
        held_since = time.monotonic()
        for child in children:
            if child in held:
                child.next_start = float("inf")
            else:
                start(child)
        url = f"http://{settings.http_host}:{settings.http_port}"
        if any("gateway-api" in c.targets for c in children):
            _wait_http(f"{url}/health", 90, children)
            _banner(url, settings)

        watched = [ServerWatch(server) for server in servers]
        while not stopping:
            time.sleep(0.2)
            for watch in watched:
                watch.check()
            if held and (_simulator_ready(settings) or time.monotonic() - held_since > SIMULATOR_WAIT):
                for child in held:
                    child.next_start = 0.0
                held = []
            for child in children:
                if child.proc is None or child.proc.poll() is None:
                    if child.proc is None and time.monotonic() >= child.next_start:
                        start(child)
                    continue
                code = child.proc.returncode
                process_dead(child.proc.pid, str(metrics))
                child.proc = None
                if time.monotonic() - child.started_at > 60:
                    child.restarts = 0
                child.restarts += 1
                delay = min(30.0, 0.5 * 2**child.restarts)
                child.next_start = time.monotonic() + delay
                log.error("target %s exited with code %s; restarting in %.0f s", child.targets, code, delay)
    finally:
        log.info("stopping…")
        for child in reversed(children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        for child in reversed(children):
            if child.proc is not None:
                try:
                    child.proc.wait(15)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        for server in reversed(servers):
            server.stop()
        log.info("stopped; data kept in %s", data)
    return 0


class ServerWatch:
    """Restart nats-server or redis-server when it dies, like a target (logged, with back-off; their data
    folders survive). The services reconnect by themselves; ``/ready`` says 503 meanwhile."""

    def __init__(self, server) -> None:
        self.server = server
        self.restarts = 0
        self.next_start = 0.0
        self.started_at = time.monotonic()

    @property
    def name(self) -> str:
        return self.server.name

    def check(self) -> None:
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            return
        now = time.monotonic()
        if proc is not None:  # it just died: schedule a restart
            if now - self.started_at > 60:
                self.restarts = 0
            self.restarts += 1
            delay = min(30.0, 0.5 * 2 ** (self.restarts - 1))
            log.error("%s exited with code %s; restarting in %.1f s", self.name, proc.returncode, delay)
            self.server.proc = None
            self.next_start = now + delay
            return
        if now < self.next_start:
            return
        try:
            self.server.start(timeout=10.0)
        except Exception as exc:  # port still held, binary gone …: try again later
            self.restarts += 1
            self.next_start = now + min(30.0, 0.5 * 2**self.restarts)
            log.error(
                "%s did not start again (%s); next try in %.0f s", self.name, exc, self.next_start - now
            )
            self.server.proc = None
            return
        self.started_at = time.monotonic()
        log.info(
            "%s restarted on port %s (data kept in %s)", self.name, self.server.port, self.server.data_dir
        )


def _banner(url: str, settings: Settings) -> None:
    site = settings.site
    lines = [
        "",
        f"  Energy web server is running: {url}",
        f"  site: {site.name} ({len(site.devices)} devices){'  — simulated' if settings.runs_simulator else ''}",
        "  default codes (change them in Configuration):",
        *(f"    {role:<14} PIN {pin}   PUK {format_puk(puk)}" for role, (pin, puk) in DEFAULT_CODES.items()),
        f"  API: {url}/api/v1   OpenAPI: {url}/schema   data: {settings.data_dir.resolve()}",
        "  Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)
