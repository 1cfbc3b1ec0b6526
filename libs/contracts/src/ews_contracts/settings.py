"""Settings read from the environment at start-up (never at import), shared by every service."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUNDLED_DEMO_SITE = Path(__file__).parent / "sites" / "demo.yaml"
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` as browsers write an ``Origin`` (lower case, no default port, IPv6 in
    brackets) from an origin, a URL (a ``Referer``) or ``scheme://`` + a ``Host`` header; None when it is
    not an http(s) origin (``null``, a bare word, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    name = f"[{host}]" if ":" in host else host
    return f"{scheme}://{name}" if port in (None, DEFAULT_PORTS[scheme]) else f"{scheme}://{name}:{port}"


class Settings(BaseSettings):
    """Environment variables (documented in the README's configuration table)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    site_file: Path | None = Field(
        default=None,
        alias="EWS_SITE_FILE",
        description="Site file (YAML). Unset: the bundled simulated demo site.",
    )
    data_dir: Path = Field(
        default=Path("data"), alias="EWS_DATA_DIR", description="Folder for all local state."
    )
    nats_url: str = Field(default="nats://127.0.0.1:4222", alias="NATS_URL")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    clickhouse_url: str | None = Field(
        default=None,
        alias="CLICKHOUSE_URL",
        description="http(s)://user:pass@host:8123/db for a ClickHouse server; unset = embedded chDB in EWS_DATA_DIR.",
    )
    clickhouse_database: str = Field(default="ews", alias="CLICKHOUSE_DATABASE")
    http_host: str = Field(default="127.0.0.1", alias="EWS_HTTP_HOST")
    http_port: int = Field(default=8080, alias="EWS_HTTP_PORT")
    simulator_bind: str = Field(default="127.0.0.1", alias="EWS_SIMULATOR_BIND")
    simulate: bool | None = Field(
        default=None,
        alias="EWS_SIMULATE",
        description="`ews up` also runs the device simulator for the site's gateways (default: only for the demo site).",
    )
    demo_history: bool = Field(
        default=True,
        alias="EWS_DEMO_HISTORY",
        description="On the first start of the bundled demo site, publish ten years of simulated readings.",
    )
    profiles_dir: Path | None = Field(
        default=None, alias="EWS_PROFILES_DIR", description="Extra folder of device profiles (YAML)."
    )
    poll_interval: float = Field(
        default=2.0, alias="EWS_POLL_INTERVAL", description="Seconds between counter polls."
    )
    aggregator_batch: int = Field(
        default=20_000,
        ge=100,
        le=200_000,
        alias="EWS_AGGREGATOR_BATCH",
        description="Readings the aggregator writes per batch when catching up (memory vs throughput).",
    )
    command_deadline: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        alias="EWS_COMMAND_DEADLINE",
        description="Seconds a device command may wait for its bus before it expires (never executed later).",
    )
    secure_cookies: bool = Field(default=False, alias="EWS_SECURE_COOKIES", description="Set behind HTTPS.")
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        alias="EWS_ALLOWED_ORIGINS",
        description="Comma-separated origins (scheme://host[:port]) whose pages may send state-changing "
        "requests besides the server's own address as the browser reaches it (e.g. behind an HTTPS proxy).",
    )
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        alias="EWS_TRUSTED_PROXIES",
        description="Comma-separated IP addresses or networks (CIDR) of reverse proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; from any other peer they are ignored.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        alias="EWS_METRICS_PORT",
        description="Serve this process's Prometheus metrics on http://EWS_METRICS_HOST:<port>/metrics (a "
        "split deployment; under `ews up` the gateway-api's /metrics serves every process's).",
    )
    metrics_host: str = Field(default="127.0.0.1", alias="EWS_METRICS_HOST")
    metrics_from: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("127.0.0.1", "::1"),
        alias="EWS_METRICS_FROM",
        description="Comma-separated addresses or networks allowed to read GET /metrics without a session "
        "(a Prometheus server); an administrator's or installer's session may always read it.",
    )
    log_level: str = Field(default="INFO", alias="EWS_LOG_LEVEL")
    hub: bool = Field(
        default=False,
        alias="EWS_HUB",
        description="The hub of a multi-site installation (`ews up --hub`): the gateway-api serves every "
        "site whose streams reach this NATS, and auth the hub's own codes (no site file).",
    )

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value or ())  # type: ignore[call-overload]
        origins = []
        for item in (str(i).strip().rstrip("/") for i in items):
            if not item:
                continue
            origin = normalize_origin(item)
            if origin is None or urlsplit(item).path or urlsplit(item).query:
                raise ValueError(
                    f"{item!r} is not an origin: write scheme://host[:port], e.g. https://ews.example"
                )
            origins.append(origin)
        return tuple(dict.fromkeys(origins))

    @field_validator("metrics_from", mode="before")
    @classmethod
    def _metrics_from(cls, value: object) -> tuple[str, ...]:
        return cls._proxies(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value or ())  # type: ignore[call-overload]
        proxies = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            try:
                proxy = (
                    ipaddress.ip_network(item, strict=False) if "/" in item else ipaddress.ip_address(item)
                )
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network: write e.g. 10.0.0.1 or 10.0.0.0/24"
                ) from None
            proxies.append(str(proxy))
        return tuple(dict.fromkeys(proxies))

    @property
    def site_path(self) -> Path:
        return self.site_file or BUNDLED_DEMO_SITE

    @property
    def uses_demo_site(self) -> bool:
        return self.site_file is None

    @property
    def runs_simulator(self) -> bool:
        return self.uses_demo_site if self.simulate is None else self.simulate

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def uses_chdb(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    @property
    def identity(self) -> str:
        """Whose codes, sessions and machine tokens these are (auth subjects, Redis keys): the site's id on
        a box or an edge, ``hub`` at the hub (its own four roles, which see every site)."""
        return "hub" if self.hub else self.site.site

    @cached_property
    def site(self):  # -> Site (import here keeps settings light)
        from .site import load_site

        return load_site(self.site_path)
