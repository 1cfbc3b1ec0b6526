"""The demo history (``ews_simulator.history``): what it generates, and when."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ews_contracts.events import ReadingTaken
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import Settings
from ews_simulator import SimulatedSite, history

END = datetime(2026, 11, 30, 14, 21, 24, tzinfo=UTC)
GAP_S = 15 * 60  # the aggregator marks longer intervals "estimated"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    settings = Settings(_env_file=None, EWS_DATA_DIR=str(tmp_path_factory.mktemp("data")))
    profiles = load_profiles()
    origin = history.origin_for(END, settings.site)
    times, series = history.build(settings.site, profiles, origin, END)
    return settings, profiles, origin, times, series


def test_origin_is_the_first_day_of_the_decade_chart(demo):
    settings, _, origin, times, _ = demo
    assert origin.astimezone(settings.site.tz).replace(tzinfo=None) == datetime(2017, 1, 1)
    assert times[0] == int(origin.timestamp()) and times[-1] == int(END.timestamp())


def test_last_13_months_every_15_minutes_daily_before(demo):
    settings, _, _, times, _ = demo
    tz = settings.site.tz
    dense_from = int(datetime(2025, 10, 1, tzinfo=tz).timestamp())  # 13 months before November 2026
    steps = [(a, b - a) for a, b in zip(times, times[1:], strict=False)]
    assert all(step <= GAP_S for a, step in steps if a >= dense_from)
    older = [step for a, step in steps if a < dense_from]
    assert older and all(23 * 3600 <= step <= 25 * 3600 for step in older)  # local midnights (DST days)


def test_every_counter_device_has_a_series(demo):
    settings, _, _, _, series = demo
    names = {s.device.id for s in series}
    assert {"m1", "e2", "water", "gas", "ev1", "ev2a", "ev2b", "hot-water", "gen1", "f1-light"} <= names
    assert not names & {"io1", "io2", "mccb-spare", "acb-tie", "f1-signals"}  # no counters
    by_id = {s.device.id: s for s in series}
    assert set(by_id["gas"].values) == {"pulse_count", "gas_volume"}
    assert set(by_id["water"].values) == {"pulse_count", "water_volume"}
    assert set(by_id["m1"].values) == {"energy_active_import"}


def test_counters_rise_from_zero_to_what_the_live_simulator_serves(demo):
    settings, profiles, origin, _, series = demo
    at_end = SimulatedSite(settings.site, profiles, start_time=END, origin=origin)
    later = SimulatedSite(settings.site, profiles, start_time=END + timedelta(seconds=5), origin=origin)
    for s in series:
        for quantity, column in s.values.items():
            assert column[0] == 0.0, (s.device.id, quantity)
            assert all(b >= a for a, b in zip(column, column[1:], strict=False)), (s.device.id, quantity)
            assert column[-1] == at_end.value(s.device.id, quantity), (s.device.id, quantity)
            assert column[-1] <= later.value(s.device.id, quantity), (s.device.id, quantity)
            assert column[-1] < 2**32 - 1  # far below every register's range


def test_gas_heats_in_winter_water_flows_in_summer(demo):
    settings, _, _, times, series = demo
    tz = settings.site.tz
    by_id = {s.device.id: s for s in series}

    def used(device: str, quantity: str, start: datetime, end: datetime) -> float:
        column = by_id[device].values[quantity]
        index = {t: k for k, t in enumerate(times)}
        return (
            column[index[int(end.replace(tzinfo=tz).timestamp())]]
            - column[index[int(start.replace(tzinfo=tz).timestamp())]]
        )

    jan, jul = (datetime(2022, 1, 1), datetime(2022, 2, 1)), (datetime(2022, 7, 1), datetime(2022, 8, 1))
    assert used("gas", "gas_volume", *jan) > 3 * used("gas", "gas_volume", *jul)
    assert used("water", "water_volume", *jul) > used("water", "water_volume", *jan)
    assert used("ev1", "energy_active_import", *jan) > 0


def test_events_are_reading_taken_json_with_deterministic_ids(demo):
    settings, _, _, times, series = demo
    events = history.readings(settings.site, times, series)
    checked = 0
    for n, (subject, event_id, data) in enumerate(events):
        if n % 50_000:
            continue
        reading = ReadingTaken.model_validate_json(data)
        assert reading.model_dump_json().encode() == data
        assert reading.subject == subject and reading.headers() == {"Nats-Msg-Id": event_id}
        assert event_id == ReadingTaken.id_for("demo", reading.device, reading.occurred_at)
        checked += 1
    assert checked > 10


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return Settings(_env_file=None, EWS_DATA_DIR=str(tmp_path), NATS_URL="nats://127.0.0.1:1", **env)


def test_only_for_the_bundled_demo(tmp_path: Path):
    own = tmp_path / "site.yaml"
    own.write_text(history.BUNDLED_DEMO_SITE.read_text())
    assert history.eligible(settings_for(tmp_path))
    assert history.eligible(settings_for(tmp_path, EWS_SITE_FILE=str(history.BUNDLED_DEMO_SITE)))
    assert not history.eligible(
        settings_for(tmp_path, EWS_SITE_FILE=str(own))
    )  # a copy is a site of one's own
    assert not history.eligible(settings_for(tmp_path, EWS_DEMO_HISTORY="0"))
    plan = asyncio.run(history.plan(settings_for(tmp_path, EWS_SITE_FILE=str(own))))
    assert plan == history.HistoryPlan(origin=None) and not (tmp_path / history.MARKER).exists()


def test_marker_decides_on_later_starts(tmp_path: Path):
    settings = settings_for(tmp_path)
    origin = "2016-12-31T23:00:00+00:00"
    history.write_marker(settings, {"state": "done", "origin": origin, "end": END.isoformat()})
    plan = asyncio.run(history.plan(settings))  # no NATS needed: the marker answers
    assert plan.origin == datetime.fromisoformat(origin) and not plan.publish
    history.write_marker(settings, {"state": "publishing", "origin": origin, "end": END.isoformat()})
    plan = asyncio.run(history.plan(settings))
    assert plan.publish and plan.end == END  # an interrupted run: again, to the same end
    history.write_marker(settings, {"state": "skipped"})
    assert asyncio.run(history.plan(settings)) == history.HistoryPlan(origin=None)
    assert json.loads((tmp_path / history.MARKER).read_text())["state"] == "skipped"


def test_without_nats_nothing_is_decided(tmp_path: Path):
    plan = asyncio.run(history.plan(settings_for(tmp_path)))
    assert plan == history.HistoryPlan(origin=None) and not (tmp_path / history.MARKER).exists()
