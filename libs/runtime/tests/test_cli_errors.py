"""`ews` start-up failures: one clear line on stderr, non-zero exit, never a traceback."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ews_runtime.servers import free_port

EWS = [sys.executable, "-m", "ews_runtime.cli"]


def run_ews(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("EWS_", "NATS_", "REDIS_", "CLICKHOUSE_"))
    }
    base.update(
        EWS_DATA_DIR=str(tmp_path / "data"),
        NATS_URL=f"nats://127.0.0.1:{free_port()}",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        EWS_HTTP_PORT=str(free_port()),
        EWS_SIMULATE="0",
    )
    base.update(env)
    return subprocess.run(EWS + args, env=base, capture_output=True, text=True, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0]


def test_http_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_ews(["up"], tmp_path, EWS_HTTP_PORT=str(port))
    assert_one_line_error(result, f"port {port} is already in use", "web server")


def test_missing_redis_server(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_ews(["up"], tmp_path, PATH=str(empty))
    assert_one_line_error(result, "redis-server is not installed", "apt-get install redis-server")


def test_malformed_site_file(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: demo\nname: x\ntimezone: Nowhere/Land\ntariffs: [{effective_from: 2020-01-01, "
        "electricity_per_kwh: 0.2}]\ngateways: [{id: g, host: h}]\ndevices: []\n"
    )
    result = run_ews(["up", "--site", str(site)], tmp_path)
    assert_one_line_error(result, f"{site}:3:", "timezone")


def test_bad_environment_variable(tmp_path):
    result = run_ews(["up"], tmp_path, EWS_HTTP_PORT="eighty")
    assert_one_line_error(result, "EWS_HTTP_PORT")


def test_unknown_target(tmp_path):
    result = run_ews(["run", "pollr"], tmp_path)
    assert_one_line_error(result, "unknown target pollr", "poller")


@pytest.mark.parametrize("args", [["frobnicate"], []])
def test_bad_cli_arguments_exit_nonzero(tmp_path, args):
    result = run_ews(args, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_check_site_reports_device_profile_problems(tmp_path):
    from ews_contracts.settings import BUNDLED_DEMO_SITE

    good = run_ews(["check-site", str(BUNDLED_DEMO_SITE)], tmp_path)
    assert good.returncode == 0 and "— OK" in good.stdout, good.stderr
    text = BUNDLED_DEMO_SITE.read_text().replace(
        "profile: multifunction-meter-412045", "profile: no-such-meter", 1
    )
    bad = tmp_path / "site.yaml"
    bad.write_text(text)
    result = run_ews(["check-site", str(bad)], tmp_path)
    assert_one_line_error(result, "device 'm1'", "unknown device profile 'no-such-meter'")


def test_up_with_an_unknown_device_profile_is_one_line(tmp_path):
    from ews_contracts.settings import BUNDLED_DEMO_SITE

    bad = tmp_path / "site.yaml"
    bad.write_text(
        BUNDLED_DEMO_SITE.read_text().replace("profile: ev-station-greenup", "profile: ev-statoin", 1)
    )
    result = run_ews(["up", "--site", str(bad)], tmp_path)
    assert_one_line_error(result, "device 'ev1'", "unknown device profile 'ev-statoin'")
