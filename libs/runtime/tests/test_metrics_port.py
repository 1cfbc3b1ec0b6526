"""``ews run <target>`` with EWS_METRICS_PORT (a split deployment, as docker-compose.yml runs it): the
process serves its own metrics, the target's among them, on http://EWS_METRICS_HOST:port/metrics."""

from __future__ import annotations

import httpx
import pytest
from ews_runtime.servers import free_port

from tests.helpers import clean_env, start_ews, stop, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_ews_run_serves_the_targets_metrics_on_its_port(tmp_path, nats_url: str, redis_clean: str) -> None:
    port = free_port()
    env = clean_env(
        NATS_URL=nats_url,
        REDIS_URL=redis_clean,
        EWS_DATA_DIR=str(tmp_path / "data"),
        EWS_METRICS_PORT=str(port),
        EWS_METRICS_HOST="127.0.0.1",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "commands.log"
    proc = start_ews(["run", "commands"], env, log)
    try:

        def scrape() -> str | None:
            assert proc.poll() is None, log.read_text()
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

        text = wait_until(scrape, 60, "the commands process to serve its metrics")
        assert "# TYPE ews_commands_outcomes_total counter" in text, text[:3000]
        assert "process_start_time_seconds" in text
        assert f"metrics on http://127.0.0.1:{port}/metrics" in log.read_text()
    finally:
        assert stop(proc) == 0, log.read_text()
