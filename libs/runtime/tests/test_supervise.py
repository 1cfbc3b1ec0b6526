"""The light supervisor of `ews up` (ews_runtime.supervise): its handover across the exec, its back-off, its
restarts, its stop, and that it imports nothing outside the standard library (issue 15: footprint)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ews_runtime import supervise
from ews_runtime.supervise import (
    Child,
    Server,
    Supervisor,
    child_delay,
    process_dead,
    server_delay,
    server_retry_delay,
)


def _supervisor(tmp_path: Path, **kwargs) -> Supervisor:
    return Supervisor(
        child_argv=[sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))"],
        env=dict(os.environ),
        data_dir=str(tmp_path),
        metrics_dir=str(tmp_path),
        **kwargs,
    )


def test_handover_round_trip(tmp_path: Path) -> None:
    sup = _supervisor(
        tmp_path,
        children=[Child("simulator", pid=123, started_at=5.0), Child("poller", held=True, next_start=0.0)],
        servers=[
            Server(
                "redis-server", ["redis-server", "/d/auth.conf", "--port", "7"], "127.0.0.1", 7, "/d", "/l"
            )
        ],
        held_until=[("127.0.0.1", 5020)],
        held_since=12.5,
        log_format="%(asctime)s ews        %(levelname)-7s %(name)s: %(message)s",
        log_datefmt="%H:%M:%S",
        log_level=logging.WARNING,
        stopping=True,
    )
    back = Supervisor.from_json(sup.to_json())
    assert back == sup
    assert back.held_until == [("127.0.0.1", 5020)]
    assert isinstance(back.children[0], Child) and isinstance(back.servers[0], Server)


def test_handover_of_another_version_is_refused(tmp_path: Path) -> None:
    data = json.loads(_supervisor(tmp_path).to_json())
    data["version"] = 999
    with pytest.raises(ValueError, match="another version"):
        Supervisor.from_json(json.dumps(data))


def test_back_off() -> None:
    assert [child_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert [server_delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 16, 30]
    assert [server_retry_delay(n) for n in range(1, 3)] == [1, 2]


def test_process_dead_removes_only_the_live_gauges_of_that_pid(tmp_path: Path) -> None:
    names = [
        "gauge_livesum_42.db",
        "gauge_liveall_42.db",
        "gauge_all_42.db",
        "counter_42.db",
        "gauge_livesum_7.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    process_dead(42, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_42.db",
        "gauge_all_42.db",
        "gauge_livesum_7.db",
    ]


def test_a_dead_child_is_restarted_with_back_off(tmp_path: Path, caplog) -> None:
    sup = _supervisor(tmp_path, children=[Child("0")])  # the "targets" are the sleep: exits at once
    sup.start_child(sup.children[0])
    first = sup.children[0].pid
    assert supervise.wait(first, 10) == 0
    (tmp_path / f"gauge_livesum_{first}.db").write_bytes(b"")
    with caplog.at_level(logging.ERROR, "ews.up"):
        sup.step()
    assert "target 0 exited with code 0; restarting in 1 s" in caplog.text
    assert not (tmp_path / f"gauge_livesum_{first}.db").exists()
    child = sup.children[0]
    assert child.pid is None and child.restarts == 1 and child.next_start > time.monotonic()
    child.next_start = 0.0
    sup.step()
    assert child.pid not in (None, first)
    supervise.wait(child.pid, 10)


def test_held_child_starts_when_the_simulator_answers(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        sup = _supervisor(
            tmp_path,
            children=[Child("30", held=True)],
            held_until=[("127.0.0.1", port)],
            held_since=time.monotonic(),
        )
        sup.step()
        assert sup.children[0].pid is None  # nothing listens yet
        listener.listen()
        sup.step()
    pid = sup.children[0].pid
    assert pid is not None and not sup.children[0].held
    sup.shutdown()
    assert supervise.poll(pid) is not None


def test_shutdown_kills_what_ignores_sigterm(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(supervise, "CHILD_STOP_TIMEOUT", 0.5)
    sup = _supervisor(tmp_path, children=[Child("x")])
    sup.child_argv = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ]
    sup.start_child(sup.children[0])
    time.sleep(0.5)  # its handler is in place
    sup.shutdown()
    assert supervise.poll(sup.children[0].pid) == -signal.SIGKILL


def test_a_dead_server_is_restarted(tmp_path: Path, caplog) -> None:
    from ews_runtime.servers import free_port

    port = free_port()
    listen = (
        f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    )
    server = Server(
        "fake-server",
        [sys.executable, "-c", listen],
        "127.0.0.1",
        port,
        str(tmp_path / "d"),
        str(tmp_path / "log"),
    )
    server.start(timeout=10)
    first = server.pid
    os.kill(first, signal.SIGKILL)
    supervise.wait(first, 10)
    with caplog.at_level(logging.INFO, "ews.up"):
        server.check()
        assert f"fake-server exited with code {-signal.SIGKILL}; restarting in 0.5 s" in caplog.text
        server.next_start = 0.0
        server.check()
        assert f"fake-server restarted on port {port}" in caplog.text
    assert server.pid not in (None, first)
    server.stop()


def test_the_supervisor_imports_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import ews_runtime.supervise; "
        "print(sorted(m for m in set(sys.modules) - before "
        "if m.split('.')[0] not in sys.stdlib_module_names and m.split('.')[0] != 'ews_runtime'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    heavy = "import sys, ews_runtime.supervise; print(sorted({'dataclasses', 'typing', 'pathlib', 'subprocess'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", heavy], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_bad_handover_stops_the_children(tmp_path: Path) -> None:
    """Without a usable handover the supervisor cannot watch what `ews up` started: it stops it, exit 1."""
    code = (
        "import os, subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True); "
        "os.execv(sys.executable, [sys.executable, '-m', 'ews_runtime.supervise', '--handover-fd', '99'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "no usable handover" in done.stderr
    pid = int(done.stdout.split()[0])
    assert not Path(f"/proc/{pid}").exists()
