"""docker-compose.yml cannot run here (no Docker engine): check that everything it names exists in the code."""

from pathlib import Path
from urllib.parse import urlparse

import yaml
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import load_site
from ews_runtime.targets import available_targets

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SETTING_NAMES = {f.alias for f in Settings.model_fields.values()}


def ews_services():
    return {name: svc for name, svc in SERVICES.items() if svc.get("image") == "ews:latest"}


def test_every_ews_service_runs_an_existing_target():
    targets = set(available_targets())
    seen = set()
    for name, svc in ews_services().items():
        command = svc["command"]
        assert command[0] == "run", name
        for target in command[1].split(","):
            assert target in targets, f"{name}: unknown target {target}"
            seen.add(target)
    # every installed target has a place in the split deployment
    assert seen == targets


def test_environment_variables_are_settings():
    for name, svc in ews_services().items():
        for var in svc["environment"]:
            assert var in SETTING_NAMES, f"{name}: {var} is not read by ews_contracts.settings.Settings"


def test_urls_point_at_compose_services_and_their_ports():
    known_ports = {"nats": 4222, "redis": 6379, "clickhouse": 8123}
    for name, svc in ews_services().items():
        env = svc["environment"]
        for var in ("NATS_URL", "REDIS_URL", "CLICKHOUSE_URL"):
            url = urlparse(env[var])
            assert url.hostname in SERVICES, f"{name}: {var} host {url.hostname} is not a compose service"
            assert url.port == known_ports[url.hostname]
    ch = SERVICES["clickhouse"]["environment"]
    url = urlparse(ews_services()["aggregator"]["environment"]["CLICKHOUSE_URL"])
    assert (url.username, url.password, url.path.strip("/")) == (
        ch["CLICKHOUSE_USER"],
        ch["CLICKHOUSE_PASSWORD"],
        ch["CLICKHOUSE_DB"],
    )


def test_redis_requires_the_password_every_service_uses():
    command = SERVICES["redis"]["command"]
    required = command[command.index("--requirepass") + 1]
    assert required.startswith("${EWS_REDIS_PASSWORD:?"), required  # compose refuses to start without it
    for name, svc in ews_services().items():
        url = urlparse(svc["environment"]["REDIS_URL"])
        assert url.password == "${EWS_REDIS_PASSWORD}", name


def test_gateway_api_port_and_bind():
    api = SERVICES["gateway-api"]
    port = api["environment"]["EWS_HTTP_PORT"]
    assert api["ports"] == [f"{port}:{port}"]
    assert api["environment"]["EWS_HTTP_HOST"] == "0.0.0.0"


def test_mounted_files_exist_and_site_is_valid():
    for svc in SERVICES.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    site_path = ews_services()["poller"]["environment"]["EWS_SITE_FILE"]
    local = ROOT / "deploy/sites" / Path(site_path).name
    site = load_site(local)
    assert {g.host for g in site.gateways} == {"simulator"}
    assert SERVICES["simulator"]["profiles"] == ["demo"]
    assert SERVICES["simulator"]["environment"]["EWS_SIMULATOR_BIND"] == "0.0.0.0"
    # same site as the bundled demo, only the gateway host differs
    bundled = load_site(BUNDLED_DEMO_SITE)
    assert site.model_dump(exclude={"gateways"}) == bundled.model_dump(exclude={"gateways"})


def test_dockerfile_installs_the_locked_workspace_and_runs_ews():
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert "uv sync --locked --all-packages" in text
    assert 'ENTRYPOINT ["ews"]' in text
    nats = SERVICES["nats"]
    assert "./deploy/nats/nats.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert "jetstream" in (ROOT / "deploy/nats/nats.conf").read_text()


def test_every_service_container_serves_its_metrics_on_the_compose_network():
    """No shared multiprocess folder between containers: each ews process serves its own metrics
    (EWS_METRICS_PORT, ews_contracts.metrics.serve_own) on every interface of its container."""
    services = ews_services()
    assert {"poller", "aggregator", "commands", "auth", "gateway-api"} <= set(services)
    for name, svc in services.items():
        env = svc["environment"]
        port = env.get("EWS_METRICS_PORT")
        assert port is not None and 0 < int(port) < 65536, f"{name}: no EWS_METRICS_PORT"
        assert env.get("EWS_METRICS_HOST") == "0.0.0.0", (
            f"{name}: metrics reachable only inside the container"
        )
        assert "PROMETHEUS_MULTIPROC_DIR" not in env, name
        assert port != env.get("EWS_HTTP_PORT"), f"{name}: the metrics port is the web port"
        settings = Settings(**{k: v for k, v in env.items() if k.startswith("EWS_METRICS")})
        assert (settings.metrics_port, settings.metrics_host) == (int(port), "0.0.0.0")
