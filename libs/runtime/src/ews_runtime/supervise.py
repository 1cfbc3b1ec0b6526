"""The long-lived loop of `ews up`, in a process that imports only the standard library.

`ews up` (``ews_runtime.up``) validates the settings and the site, starts nats-server, redis-server and the
target groups, waits for the web server and prints the banner: that needs pydantic, the site models and
prometheus_client (~40 MiB of a 54 MiB process). What is left — watching the processes for as long as the
box runs — needs none of it, so `ews up` then replaces itself (``os.execv``, same pid: the processes it
started stay its children) with ``python -m ews_runtime.supervise --handover-fd N``, handing over
everything the loop needs as JSON in an anonymous file (fd N; the child environment holds the Redis
password, so it is never on a command line):

- restart a dead nats-server or redis-server, with back-off (the data folders survive);
- restart a dead target group, with back-off, forgetting its live Prometheus gauges (``process_dead``);
- start the poller once the simulated gateways accept connections (or after ``simulator_wait`` seconds);
- on SIGINT/SIGTERM stop the targets in reverse order (SIGTERM, 15 s, SIGKILL), then the servers.

SIGINT and SIGTERM are blocked across the exec (the mask and pending signals survive it) and unblocked once
the handlers are in place, so a Ctrl-C during the handover stops the box like any other. When the exec
fails, `ews up` runs the same loop in its own process (``Supervisor.run``).

Processes are tracked by pid (``os.waitpid``: the ``subprocess.Popen`` objects do not survive the exec) and
started with ``os.posix_spawnp``. This module imports nothing outside the standard library, and none of
its heavier modules (dataclasses, typing, pathlib, subprocess): a test checks it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time

log = logging.getLogger("ews.up")

HANDOVER_VERSION = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CHILD_STOP_TIMEOUT = 15.0
SERVER_STOP_TIMEOUT = 10.0
SERVER_RESTART_TIMEOUT = 10.0
# prometheus_client.multiprocess._LIVE_GAUGE_MULTIPROCESS_MODES: the gauges of a live process only
LIVE_GAUGE_MODES = ("liveall", "livesum", "livemax", "livemin", "livemostrecent")


class StartError(RuntimeError):
    """A server did not start again; ``str()`` is one line (as ``ews_runtime.servers.StartupError``)."""


# --- back-off -------------------------------------------------------------------------------------------


def child_delay(restarts: int) -> float:
    """Seconds before a target group that died is started again (``restarts`` counts this death)."""
    return min(30.0, 0.5 * 2**restarts)


def server_delay(restarts: int) -> float:
    """Seconds before a server that died is started again (``restarts`` counts this death)."""
    return min(30.0, 0.5 * 2 ** (restarts - 1))


def server_retry_delay(restarts: int) -> float:
    """Seconds before another try after a server failed to start again (``restarts`` counts this failure)."""
    return min(30.0, 0.5 * 2**restarts)


# --- processes by pid -----------------------------------------------------------------------------------

_exit_codes: dict[int, int] = {}  # pid -> exit code (negative: killed by that signal), once reaped


def poll(pid: int) -> int | None:
    """The exit code of child ``pid`` once it has ended (reaped here, remembered), else None."""
    if pid in _exit_codes:
        return _exit_codes[pid]
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not (or no longer) ours: as subprocess.Popen.poll, code 0
        _exit_codes[pid] = 0
        return 0
    if done == 0:
        return None
    _exit_codes[pid] = os.waitstatus_to_exitcode(status)
    return _exit_codes[pid]


def wait(pid: int, timeout: float | None = None) -> int | None:
    """Wait for child ``pid`` to end; its exit code, or None after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (code := poll(pid)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
    return code


def signal_pid(pid: int, sig: int) -> None:
    if poll(pid) is None:  # not reaped yet, so the pid is still this child's (alive or a zombie)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM, wait ``timeout`` seconds, SIGKILL."""
    signal_pid(pid, signal.SIGTERM)
    if wait(pid, timeout) is None:
        signal_pid(pid, signal.SIGKILL)
        wait(pid)


def spawn(argv: list[str], env: dict[str, str] | None = None, log_file: str | None = None) -> int:
    """Start ``argv`` in a session of its own (a Ctrl-C reaches only the supervisor, which stops the
    children in order), stdin from /dev/null, stdout and stderr to ``log_file`` (appended) or inherited;
    the pid. As ``subprocess.Popen(..., start_new_session=True)`` without its objects."""
    actions: list[tuple] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    if log_file is not None:
        actions += [
            (os.POSIX_SPAWN_OPEN, 1, log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
    return os.posix_spawnp(
        argv[0],
        argv,
        os.environ if env is None else env,
        file_actions=actions,
        setsid=True,
        setsigmask=(),  # nothing blocked (the supervisor blocks SIGINT/SIGTERM across its exec)
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, *STOP_SIGNALS),  # as Popen's restore_signals
    )


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_dead(pid: int, path: str) -> None:
    """Forget a dead process's live gauges in the Prometheus multiprocess folder ``path`` (what
    ``prometheus_client.multiprocess.mark_process_dead`` does)."""
    for mode in LIVE_GAUGE_MODES:
        try:
            os.remove(os.path.join(path, f"gauge_{mode}_{pid}.db"))
        except FileNotFoundError:
            pass


# --- the supervised parts -------------------------------------------------------------------------------


class _Record:
    """Compared and shown by its attributes (``dataclasses`` costs the supervisor ~1 MiB of imports)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Child(_Record):
    """A target group (``ews run <targets>``); ``held``: not started until the simulator answers."""

    def __init__(
        self,
        targets: str,
        pid: int | None = None,
        restarts: int = 0,
        next_start: float = 0.0,
        started_at: float = 0.0,
        held: bool = False,
    ) -> None:
        self.targets = targets
        self.pid = pid
        self.restarts = restarts
        self.next_start = next_start
        self.started_at = started_at
        self.held = held


class Server(_Record):
    """nats-server or redis-server as ``ews_runtime.servers`` starts it: ``command`` as built there (its
    configuration files are in the data folder), output appended to ``log_file``."""

    def __init__(
        self,
        name: str,
        command: list[str],
        host: str,
        port: int,
        data_dir: str,
        log_file: str | None = None,
        pid: int | None = None,
        restarts: int = 0,
        next_start: float = 0.0,
        started_at: float = 0.0,
    ) -> None:
        self.name = name
        self.command = command
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.log_file = log_file
        self.pid = pid
        self.restarts = restarts
        self.next_start = next_start
        self.started_at = started_at

    def start(self, timeout: float = 20.0) -> None:
        """As ``ManagedServer.start``: StartError when the port is taken, the server exits or does not
        listen within ``timeout`` seconds (then it is stopped)."""
        if port_in_use(self.host, self.port):
            raise StartError(
                f"port {self.port} is already in use, so {self.name} cannot start: stop the program using it "
                f"or choose another port"
            )
        os.makedirs(self.data_dir, exist_ok=True)
        pid = spawn(self.command, log_file=self.log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = poll(pid)
            if code is not None:
                raise StartError(f"{self.command[0]} exited with code {code} before listening on {self.port}")
            if accepts(self.host, self.port):
                self.pid = pid
                self.started_at = time.monotonic()
                return
            time.sleep(0.05)
        stop_pid(pid, 1.0)  # started but deaf: not left running unwatched
        raise StartError(f"nothing listens on {self.host}:{self.port} after {timeout:.0f} s")

    def check(self) -> None:
        """Restart the server when it has died (logged, with back-off)."""
        if self.pid is not None and poll(self.pid) is None:
            return
        now = time.monotonic()
        if self.pid is not None:  # it just died: schedule a restart
            if now - self.started_at > 60:
                self.restarts = 0
            self.restarts += 1
            delay = server_delay(self.restarts)
            log.error("%s exited with code %s; restarting in %.1f s", self.name, poll(self.pid), delay)
            self.pid = None
            self.next_start = now + delay
            return
        if now < self.next_start:
            return
        try:
            self.start(timeout=SERVER_RESTART_TIMEOUT)
        except Exception as exc:  # port still held, binary gone …: try again later
            self.restarts += 1
            self.next_start = now + server_retry_delay(self.restarts)
            log.error(
                "%s did not start again (%s); next try in %.0f s", self.name, exc, self.next_start - now
            )
            return
        log.info("%s restarted on port %s (data kept in %s)", self.name, self.port, self.data_dir)

    def stop(self, timeout: float = SERVER_STOP_TIMEOUT) -> None:
        if self.pid is not None:
            stop_pid(self.pid, timeout)


class Supervisor(_Record):
    """Everything the loop of `ews up` needs; ``to_json``/``from_json`` carry it across the exec."""

    def __init__(
        self,
        child_argv: list[str],  # + the targets: the command line of a target group
        env: dict[str, str],  # the target groups' environment
        data_dir: str,
        metrics_dir: str,
        children: list[Child] | None = None,
        servers: list[Server] | None = None,
        held_until: list[tuple[str, int]] | None = None,  # (host, port): the simulated gateways
        held_since: float = 0.0,  # time.monotonic() (CLOCK_MONOTONIC: the same in every process of the box)
        simulator_wait: float = 300.0,
        log_format: str | None = None,
        log_datefmt: str | None = None,
        log_level: int = logging.INFO,
        stopping: bool = False,
    ) -> None:
        self.child_argv = child_argv
        self.env = env
        self.data_dir = data_dir
        self.metrics_dir = metrics_dir
        self.children = children if children is not None else []
        self.servers = servers if servers is not None else []
        self.held_until = held_until if held_until is not None else []
        self.held_since = held_since
        self.simulator_wait = simulator_wait
        self.log_format = log_format
        self.log_datefmt = log_datefmt
        self.log_level = log_level
        self.stopping = stopping

    # -- handover --

    def to_json(self) -> str:
        data = dict(vars(self), version=HANDOVER_VERSION)
        data["children"] = [vars(c) for c in self.children]
        data["servers"] = [vars(s) for s in self.servers]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Supervisor:
        data = json.loads(text)
        if data.pop("version", None) != HANDOVER_VERSION:
            raise ValueError(f"handover of another version (this is {HANDOVER_VERSION})")
        data["children"] = [Child(**c) for c in data.get("children", [])]
        data["servers"] = [Server(**s) for s in data.get("servers", [])]
        data["held_until"] = [(str(h), int(p)) for h, p in data.get("held_until", [])]
        return cls(**data)

    # -- the loop --

    def start_child(self, child: Child) -> None:
        child.pid = spawn([*self.child_argv, child.targets], self.env)
        child.started_at = time.monotonic()

    def simulator_ready(self) -> bool:
        """Every simulated gateway accepts connections."""
        return all(accepts(host, port) for host, port in self.held_until)

    def step(self) -> None:
        """One look at every part: restart what died (when its back-off is over), release the poller."""
        for server in self.servers:
            server.check()
        held = [c for c in self.children if c.held]
        if held and (self.simulator_ready() or time.monotonic() - self.held_since > self.simulator_wait):
            for child in held:
                child.held = False
                child.next_start = 0.0
        for child in self.children:
            if child.pid is None or poll(child.pid) is None:
                if child.pid is None and not child.held and time.monotonic() >= child.next_start:
                    self.start_child(child)
                continue
            code = poll(child.pid)
            process_dead(child.pid, self.metrics_dir)
            child.pid = None
            if time.monotonic() - child.started_at > 60:
                child.restarts = 0
            child.restarts += 1
            delay = child_delay(child.restarts)
            child.next_start = time.monotonic() + delay
            log.error("target %s exited with code %s; restarting in %.0f s", child.targets, code, delay)

    def on_signal(self, signum: int, frame: object) -> None:  # noqa: ARG002
        self.stopping = True

    def run(self) -> int:
        """Supervise until SIGINT/SIGTERM, then stop everything; the exit code (0)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a signal pending since the exec: now
        try:
            while not self.stopping:
                time.sleep(0.2)
                self.step()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """The target groups in reverse order (SIGTERM, 15 s each, SIGKILL), then the servers."""
        log.info("stopping…")
        for child in reversed(self.children):
            if child.pid is not None:
                signal_pid(child.pid, signal.SIGTERM)
        for child in reversed(self.children):
            if child.pid is not None and wait(child.pid, CHILD_STOP_TIMEOUT) is None:
                signal_pid(child.pid, signal.SIGKILL)
                wait(child.pid)
        for server in reversed(self.servers):
            server.stop()
        log.info("stopped; data kept in %s", self.data_dir)

    def configure_logging(self) -> None:
        """The lines of `ews up` as before the exec (``ews_runtime.cli._configure_logging``)."""
        logging.basicConfig(level=self.log_level, format=self.log_format, datefmt=self.log_datefmt)


def read_handover(fd: int) -> Supervisor:
    with os.fdopen(fd, "rb") as f:
        f.seek(0)
        return Supervisor.from_json(f.read().decode())


def own_children() -> list[int]:
    """The pids of this process's children, from /proc."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                found.append(int(entry))
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) != 2 or argv[0] != "--handover-fd":
            raise ValueError(f"usage: python -m ews_runtime.supervise --handover-fd N (got {argv})")
        supervisor = read_handover(int(argv[1]))
    except Exception as exc:  # the processes `ews up` started would run on unwatched: stop them
        print(f"ews: error: the supervisor got no usable handover ({exc}); stopping", file=sys.stderr)
        for pid in own_children():
            stop_pid(pid, CHILD_STOP_TIMEOUT)
        return 1
    supervisor.configure_logging()
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
