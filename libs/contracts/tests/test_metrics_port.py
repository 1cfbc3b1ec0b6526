"""EWS_METRICS_PORT (issue 12, item 8): in a split deployment each process serves its own Prometheus metrics
over HTTP (``ews_contracts.metrics.serve_own``, called by ``ews run`` before its targets start)."""

from __future__ import annotations

import logging
import socket
import uuid

import httpx
import pytest
from ews_contracts.metrics import serve_own
from ews_contracts.settings import Settings
from prometheus_client import Counter


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def env(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # this process's own registry
    monkeypatch.setenv("EWS_DATA_DIR", str(tmp_path / "data"))


def test_a_process_serves_its_own_metrics_on_the_port(env: None) -> None:
    name = f"ews_test_{uuid.uuid4().hex[:8]}"
    counted = Counter(name, "Counted by this test", ["outcome"])
    counted.labels(outcome="completed").inc(3)
    port = free_port()
    server = serve_own(Settings(EWS_METRICS_PORT=str(port), EWS_METRICS_HOST="127.0.0.1"))
    assert server is not None
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        assert f'{name}_total{{outcome="completed"}} 3.0' in resp.text, resp.text[:2000]
        assert "process_start_time_seconds" in resp.text  # the process's own collectors too
        counted.labels(outcome="completed").inc()
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert f'{name}_total{{outcome="completed"}} 4.0' in resp.text  # read at each scrape
    finally:
        server.shutdown()
        server.server_close()


def test_no_port_serves_nothing(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EWS_METRICS_PORT", raising=False)
    assert serve_own(Settings()) is None


def test_a_taken_port_is_logged_not_fatal(env: None, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="ews.metrics"):
            assert serve_own(Settings(EWS_METRICS_PORT=str(port), EWS_METRICS_HOST="127.0.0.1")) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"metrics: cannot listen on 127.0.0.1:{port} (Address already in use); metrics not served"
    ]
