"""What `ews up --hub` runs: hub-live and the aggregator group, one member on chDB (EWS_HUB_AGGREGATORS)."""

from __future__ import annotations

import pytest
from ews_contracts.settings import Settings
from ews_runtime.servers import StartupError
from ews_runtime.up import Mode, target_groups


@pytest.fixture
def hub_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Settings:  # noqa: ANN001
    monkeypatch.setenv("EWS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    monkeypatch.delenv("EWS_HUB_AGGREGATORS", raising=False)
    return Settings()


def test_the_hub_runs_one_aggregator_group_member_by_default(hub_settings: Settings) -> None:
    assert target_groups(hub_settings, Mode("hub")) == ["hub-live", "aggregator-group,gateway-api,auth"]


def test_several_members_need_a_clickhouse_server(
    hub_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EWS_HUB_AGGREGATORS", "3")
    with pytest.raises(StartupError, match="needs a ClickHouse server") as refused:
        target_groups(hub_settings, Mode("hub"))
    assert "\n" not in str(refused.value)
    monkeypatch.setenv("CLICKHOUSE_URL", "http://default:@127.0.0.1:8123/ews")
    assert target_groups(Settings(), Mode("hub")) == [
        "hub-live",
        "auth",
        "gateway-api",
        *["aggregator-group"] * 3,
    ]


@pytest.mark.parametrize("value", ["0", "two", "-1", "100"])
def test_a_bad_number_of_members_is_refused(
    hub_settings: Settings, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("EWS_HUB_AGGREGATORS", value)
    with pytest.raises(StartupError, match="EWS_HUB_AGGREGATORS"):
        target_groups(hub_settings, Mode("hub"))


def test_a_box_runs_no_group(hub_settings: Settings) -> None:
    assert "aggregator-group" not in ",".join(target_groups(hub_settings, Mode("box")))
