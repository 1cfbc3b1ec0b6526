"""GET /api/v1/readings.csv and POST /api/v1/readings/import on real servers (nats-server, redis-server,
chDB): the export of stored readings, the line-by-line import report, the events it publishes, the
audit record, and — with the real aggregator consuming JetStream in this process — imported readings
in /api/v1/consumption, unchanged by a second import even past JetStream's dedupe window."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from ews_aggregator.service import DURABLE
from ews_aggregator.service import serve as aggregator_serve
from ews_analytics import export
from ews_contracts.events import AuditRecorded, ReadingTaken
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_contracts.streams import AUDIT, READINGS
from httpx import AsyncClient
from litestar import Litestar
from nats.js.errors import NotFoundError

from .conftest import session_for

pytestmark = pytest.mark.integration

EXPORT = "/api/v1/readings.csv"
IMPORT = "/api/v1/readings/import"
M1 = "multifunction-meter-412045"
H = datetime(2025, 6, 1, 8, tzinfo=UTC)  # 10:00 in Paris


async def as_role(client: AsyncClient, app: Litestar, role: str) -> None:
    client.cookies.clear()
    client.cookies.update(await session_for(app, role))


async def raw_rows(settings: Settings, rows: list[tuple[str, str, datetime, float]]) -> None:
    await get_store(settings.clickhouse_dsn).insert(
        f"{settings.clickhouse_database}.readings",
        [("demo", d, q, ts, v, M1, f"e{i}") for i, (d, q, ts, v) in enumerate(rows)],
        ["site", "device", "quantity", "ts", "value", "profile", "event_id"],
    )


def parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def stream_messages(settings: Settings, stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of a stream: (subject, headers, data)."""
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        out = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            msg = await js.get_msg(stream, seq)
            out.append((msg.subject, dict(msg.headers or {}), msg.data))
        return out
    finally:
        await nc.close()


async def readings_published(settings: Settings) -> list[tuple[str, ReadingTaken]]:
    """(Nats-Msg-Id, event) of every ReadingTaken in EWS_READINGS."""
    return [
        (headers["Nats-Msg-Id"], ReadingTaken.model_validate_json(data))
        for subject, headers, data in await stream_messages(settings, READINGS.name)
        if ".reading." in subject
    ]


def by_line(body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {item["line"]: item for item in body["report"]}


# --- export ----------------------------------------------------------------------------------------


async def test_export_of_a_period(client: AsyncClient, app: Litestar, settings: Settings) -> None:
    ea, p = "energy_active_import", "power_active"
    await raw_rows(
        settings,
        [
            ("m1", ea, H, 1000.0),
            ("m1", p, H, 2500.5),
            ("m1", ea, H + timedelta(minutes=15), 1000.25),
            ("m1", ea, H + timedelta(minutes=15), 1000.25),  # stored twice: exported once
            ("m1", p, H + timedelta(minutes=30, milliseconds=250), 1800.0),
            ("m1", ea, datetime(2025, 5, 31, 21, 59, tzinfo=UTC), 990.0),  # 23:59 local the day before
            ("m1", ea, datetime(2025, 6, 1, 22, 0, tzinfo=UTC), 1100.0),  # 00:00 local the day after
            ("e2", ea, H, 5.0),  # another device
        ],
    )
    await as_role(client, app, "installer")
    resp = await client.get(EXPORT, params={"device": "m1", "from": "2025-06-01", "to": "2025-06-01"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    assert 'filename="readings-m1-2025-06-01.csv"' in resp.headers["content-disposition"]
    assert parse_csv(resp.text) == [
        ["time", "energy_active_import (Wh)", "power_active (W)"],
        ["2025-06-01T10:00:00+02:00", "1000", "2500.5"],
        ["2025-06-01T10:15:00+02:00", "1000.25", ""],
        ["2025-06-01T10:30:00.250+02:00", "", "1800"],
    ]
    # a datetime end is excluded; an offset sent unencoded ('+' read as a space) still works;
    # a datetime without an offset is the site's local time
    resp = await client.get(f"{EXPORT}?device=m1&from=2025-06-01T10:00:00+02:00&to=2025-06-01T10:30:00.250")
    assert resp.status_code == 200, resp.text
    assert [r[0] for r in parse_csv(resp.text)[1:]] == [
        "2025-06-01T10:00:00+02:00",
        "2025-06-01T10:15:00+02:00",
    ]
    # a longer period: the day before and after are included, the file is named after both
    resp = await client.get(EXPORT, params={"device": "m1", "from": "2025-05-31", "to": "2025-06-02"})
    rows = parse_csv(resp.text)
    assert 'filename="readings-m1-2025-05-31-2025-06-02.csv"' in resp.headers["content-disposition"]
    assert rows[1] == ["2025-05-31T23:59:00+02:00", "990", ""] and rows[-1] == [
        "2025-06-02T00:00:00+02:00",
        "1100",
        "",
    ]
    # no readings: the header line alone
    resp = await client.get(EXPORT, params={"device": "e3", "from": "2025-06-01"})
    assert resp.status_code == 200 and parse_csv(resp.text) == [["time"]]


async def test_export_is_streamed_in_chunks_with_the_same_result(
    client: AsyncClient, app: Litestar, settings: Settings, monkeypatch
) -> None:
    ea, p = "energy_active_import", "power_active"
    rows = []
    for i in range(40):  # every 10 minutes, over 7 hours: many hours, many chunks
        ts = H + timedelta(minutes=10 * i)
        rows += [("m1", ea, ts, 1000.0 + i), ("m1", p, ts, 100.0 * i)]
    await raw_rows(settings, rows)
    await as_role(client, app, "administrator")
    params = {"device": "m1", "from": "2025-06-01", "to": "2025-06-01"}
    whole = (await client.get(EXPORT, params=params)).text
    monkeypatch.setattr(export, "CHUNK_VALUES", 5)
    plan = await export.plan_export(
        get_store(settings.clickhouse_dsn),
        settings.clickhouse_database,
        settings.site,
        "m1",
        datetime(2025, 5, 31, 22, tzinfo=UTC),
        datetime(2025, 6, 1, 22, tzinfo=UTC),
    )
    assert len(plan.chunks) == 7 and plan.values == 80  # one chunk per hour of 12 values
    chunked = (await client.get(EXPORT, params=params)).text
    assert chunked == whole and len(parse_csv(whole)) == 41


async def test_export_refuses_bad_devices_and_dates(client: AsyncClient, app: Litestar) -> None:
    assert (await client.get(EXPORT, params={"device": "m1"})).status_code == 401
    await as_role(client, app, "user")
    resp = await client.get(EXPORT, params={"device": "m1"})
    assert resp.status_code == 403 and resp.json()["code"] == "forbidden"
    await as_role(client, app, "administrator")
    for params, code, fragment in [
        ({"device": "nope"}, "unknown-device", "unknown device 'nope'"),
        ({"device": "hvac-rest"}, "virtual-device", "device 'hvac-rest' is virtual"),
        ({"device": "m1", "from": "2025-13-01"}, "invalid-date", "invalid time '2025-13-01'"),
        ({"device": "m1", "from": "yesterday"}, "invalid-date", "invalid time 'yesterday'"),
        ({"device": "m1", "from": "2025-06-02", "to": "2025-06-01"}, "empty-period", "the period is empty"),
        ({"device": "m1", "from": "1900-01-01"}, "date-out-of-range", "out of range"),
    ]:
        resp = await client.get(EXPORT, params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        assert body["code"] == code and fragment in body["detail"] and "\n" not in body["detail"], body


# --- import: the report and the events -----------------------------------------------------------

NOW = datetime.now(UTC)
FUTURE = (NOW + timedelta(days=2)).isoformat()

COMMA_FILE = f"""device,time,quantity,value,unit
m1,2024-03-01T00:00:00+01:00,energy_active_import,1234.5,kWh
m1,2024-03-01T00:00:00+01:00,energy_active_export,10,
m1,2024-03-01T01:00:00+01:00,energy_active_import,1234600,Wh
water,2024-03-01T00:00:00Z,water_volume,1.5,m3
water,2024-03-01T01:00:00Z,water_volume,1600,dm3
m1,2024-03-01 02:00,energy_active_import,1234700,Wh
m1,01/03/2024 02:00+01:00,energy_active_import,1234700,Wh
nope,2024-03-01T02:00:00+01:00,energy_active_import,1,Wh
m1,2024-03-01T02:00:00+01:00,energy_active_importt,1,Wh
m1,2024-03-01T02:00:00+01:00,power_active,1,W
water,2024-03-01T02:00:00+01:00,water_volume,1,kWh
m1,2024-03-01T02:00:00+01:00,energy_active_import,twelve,Wh

m1,2024-03-01T02:00:00+01:00,energy_active_import,-5,Wh
hvac-rest,2024-03-01T02:00:00+01:00,energy_active_import,5,Wh
io1,2024-03-01T02:00:00+01:00,energy_active_import,5,Wh
m1,2024-03-01T02:00:00+01:00,energy_active_import,,Wh
m1,{FUTURE},energy_active_import,1234800,Wh
m1,2024-03-01T01:00:00+01:00,energy_active_import,1234.6,kWh
m1,2024-03-01T01:00:00+01:00,energy_active_import,1234.7,kWh
m1,2024-03-01T03:00:00+01:00,energy_active_import,1234800,Wh,extra
"""


async def test_import_reports_every_line_and_publishes_one_event_per_device_and_time(
    client: AsyncClient, app: Litestar, settings: Settings
) -> None:
    await as_role(client, app, "installer")
    resp = await client.post(IMPORT, content=COMMA_FILE.encode(), headers={"content-type": "text/csv"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    lines = by_line(body)
    assert {n for n, item in lines.items() if item["status"] == "accepted"} == {2, 3, 4, 5, 6}
    expected = {
        7: "no-utc-offset",
        8: "invalid-time",
        9: "unknown-device",
        10: "unknown-quantity",
        11: "not-a-counter",
        12: "unknown-unit",
        13: "invalid-value",
        15: "negative-value",
        16: "virtual-device",
        17: "no-counter",
        18: "missing-cell",
        19: "time-out-of-range",
        21: "conflicts-with-line",
        22: "too-many-cells",
    }
    for n, code in expected.items():
        assert lines[n]["status"] == "refused" and lines[n]["code"] == code, lines[n]
        assert lines[n]["reason"] and "\n" not in lines[n]["reason"]
    assert lines[20] == {
        "line": 20,
        "status": "unchanged",
        "code": "repeated",
        "reason": "same reading as line 4",
    }
    assert 14 not in lines  # a blank line is not a data line
    assert "'2024-03-01 02:00' has no UTC offset" in lines[7]["reason"]
    assert "unit 'kWh' is not a unit of water_volume: use dm3, l, m3" == lines[12]["reason"]
    assert "use a counter of device 'm1': energy_active_import, energy_active_export" in lines[10]["reason"]
    assert (body["lines"], body["accepted"], body["unchanged"], body["refused"]) == (20, 5, 1, 14)
    assert (body["events"], body["devices"]) == (4, ["m1", "water"])

    published = await readings_published(settings)
    events = {(e.device, e.occurred_at): e for _, e in published}
    assert len(published) == 4 == len(events)
    t0 = datetime(2024, 2, 29, 23, tzinfo=UTC)
    first = events[("m1", t0)]  # two quantities of one time: one event
    assert first.values == {"energy_active_import": 1234500.0, "energy_active_export": 10.0}
    assert first.profile == M1 and first.site == "demo"
    assert events[("m1", t0 + timedelta(hours=1))].values == {"energy_active_import": 1234600.0}
    assert events[("water", datetime(2024, 3, 1, tzinfo=UTC))].values == {"water_volume": 1500.0}
    assert events[("water", datetime(2024, 3, 1, 1, tzinfo=UTC))].profile == "pulse-concentrator-004687"
    for msg_id, event in published:
        assert msg_id == event.event_id and event.event_id.startswith(f"demo.{event.device}.")

    # the same file again before anything is stored: the same event ids, dropped by JetStream
    resp = await client.post(IMPORT, content=COMMA_FILE.encode(), headers={"content-type": "text/csv"})
    assert resp.status_code == 200 and resp.json()["events"] == 4
    assert len(await readings_published(settings)) == 4

    audits = [
        AuditRecorded.model_validate_json(data) for _, _, data in await stream_messages(settings, AUDIT.name)
    ]
    imported = [a for a in audits if a.action == "readings-imported"]
    assert len(imported) == 2 and imported[0].role == "installer"
    assert (
        "20 lines, 5 accepted, 1 unchanged, 14 refused; 4 readings published (m1, water)"
        in imported[0].detail
    )


async def test_semicolon_file_from_a_form_upload(
    client: AsyncClient, app: Litestar, settings: Settings
) -> None:
    content = (
        "\ufeffDevice;Time;Quantity;Value;Unit\r\n"
        "e2;2024-03-01T00:00:00+01:00;energy_active_import;1234,5;kWh;\r\n"
        "e2;2024-03-01T00:15:00+01:00;energy_active_import;1234600;\r\n"
        "e2;2024-03-01T00:30:00+01:00;energy_active_import;1 234,5;kwh\r\n"
        "e2;2024-03-01T00:45:00+01:00;energy_active_import;abc;Wh\r\n"
        "gas;2024-03-01T00:00:00+01:00;gas_volume;12,25;m³\r\n"
    ).encode()
    await as_role(client, app, "administrator")
    resp = await client.post(IMPORT, files={"file": ("history.csv", content, "text/csv")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [(i["line"], i["status"]) for i in body["report"]] == [
        (2, "accepted"),
        (3, "accepted"),
        (4, "accepted"),
        (5, "refused"),
        (6, "accepted"),
    ]
    assert body["report"][3]["reason"] == "value 'abc' is not a number"
    values = {(e.device, e.occurred_at.minute): e.values for _, e in await readings_published(settings)}
    assert values == {
        ("e2", 0): {"energy_active_import": 1234500.0},
        ("e2", 15): {"energy_active_import": 1234600.0},
        ("e2", 30): {"energy_active_import": 1234500.0},
        ("gas", 0): {"gas_volume": 12250.0},
    }
    audit = [AuditRecorded.model_validate_json(d) for _, _, d in await stream_messages(settings, AUDIT.name)]
    assert audit[-1].role == "administrator" and audit[-1].detail.startswith("history.csv: 5 lines")


async def test_import_refuses_what_it_cannot_read(client: AsyncClient, app: Litestar) -> None:
    csv_type = {"content-type": "text/csv"}
    assert (await client.post(IMPORT, content=b"x", headers=csv_type)).status_code == 401
    await as_role(client, app, "user")
    assert (await client.post(IMPORT, content=b"x", headers=csv_type)).status_code == 403
    await as_role(client, app, "installer")
    for content, status, code in [
        (b"", 400, "empty-file"),
        (b"\n  \n", 400, "empty-file"),
        (b"device,time,value\nm1,2024-03-01T00:00:00Z,1\n", 400, "missing-columns"),
        (b"device;time;quantity;value;Value\n", 400, "duplicate-column"),
    ]:
        resp = await client.post(IMPORT, content=content, headers=csv_type)
        assert resp.status_code == status and resp.json()["code"] == code, resp.text
    resp = await client.post(IMPORT, content=b"device,time,value\n", headers=csv_type)
    assert "the header line lacks quantity" in resp.json()["detail"]
    resp = await client.post(IMPORT, json={"device": "m1"})
    assert resp.status_code == 415 and resp.json()["code"] == "unsupported-media-type"
    resp = await client.post(
        IMPORT, files={"other": ("x.txt", b"device,time,quantity,value\n", "text/plain")}
    )
    assert resp.status_code == 200  # the form's one file is taken whatever its field
    resp = await client.post(IMPORT, files={"comment": (None, "no file")})
    assert resp.status_code == 400 and resp.json()["code"] == "no-file", resp.text
    # the limit is 20 MB (above Litestar's default 10 MB): 11 MB pass, 21 MB are refused with 413
    header = b"device,time,quantity,value\nm1,2024-03-01T00:00:00Z,energy_active_import,1\n"
    padding = (b" " * 99 + b"\n") * (11 * 1024 * 1024 // 100)
    resp = await client.post(IMPORT, content=header + padding, headers=csv_type)
    assert resp.status_code == 200 and resp.json()["accepted"] == 1, resp.text[:300]
    resp = await client.post(IMPORT, content=header + padding * 2, headers=csv_type)
    assert resp.status_code == 413 and resp.json()["code"] == "too-large"
    assert resp.json()["detail"] == "the file is too large: at most 20 MB"


# --- end to end: the aggregator accounts imported readings, a second import changes nothing -----


async def eventually(check: Callable[[], Awaitable[Any]], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
async def aggregator(client: AsyncClient, settings: Settings) -> AsyncIterator[None]:
    """The real aggregator (durable JetStream consumer -> chDB) as a task of this process."""
    threshold = gc.get_threshold()  # the aggregator tunes the collector for its process
    task = asyncio.create_task(aggregator_serve(settings), name="aggregator")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    gc.set_threshold(*threshold)


async def aggregated(settings: Settings) -> bool:
    """The aggregator has acknowledged every message of EWS_READINGS."""
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(READINGS.name)).state.last_seq
        try:
            info = await js.consumer_info(READINGS.name, DURABLE)
        except NotFoundError:
            return False
        return info.ack_floor.stream_seq >= last
    finally:
        await nc.close()


# 15-minute readings of m1 on 2024-03-01 (Paris, +01:00) 10:00 → 12:00 and of the water meter
E2E_FILE = (
    "device;time;quantity;value;unit\n"
    + "".join(
        f"m1;2024-03-01T{10 + i // 4:02d}:{15 * (i % 4):02d}:00+01:00;energy_active_import;{1000 + 0.25 * i * i};kWh\n"
        for i in range(9)
    )
    + "".join(
        f"water;2024-03-01T{10 + i // 4:02d}:{15 * (i % 4):02d}:00+01:00;water_volume;{50 + 0.1 * i:.1f};m3\n"
        for i in range(9)
    )
)


async def day_figures(client: AsyncClient, scope: str) -> tuple[float, list[float | None]]:
    resp = await client.get(
        "/api/v1/consumption", params={"scope": scope, "period": "day", "date": "2024-03-01"}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["total"]["value"], [None if b.get("no_data") else b["value"] for b in body["buckets"]]


async def test_imported_readings_are_accounted_and_a_second_import_changes_nothing(
    client: AsyncClient, app: Litestar, settings: Settings, aggregator: None
) -> None:
    await as_role(client, app, "installer")
    resp = await client.post(IMPORT, content=E2E_FILE.encode(), headers={"content-type": "text/csv"})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["accepted"], resp.json()["events"]) == (18, 18)
    # 1000 + 0.25 i² kWh at 10:00 + 15 min × i: 10:00–11:00 = 4 kWh, 11:00–12:00 = 12 kWh
    m1 = await eventually(
        lambda: _if(day_figures(client, "device:m1"), lambda f: f[0] == 16000.0), 30, "m1's imported energy"
    )
    assert m1[1][10:12] == [4000.0, 12000.0] and m1[1][9] is None and m1[1][12] is None
    water = await day_figures(client, "device:water")
    assert water[0] == pytest.approx(800.0) and water[1][10:12] == pytest.approx([400.0, 400.0])

    # the same file again: every line already stored, nothing published, the same figures
    published = await stream_messages(settings, READINGS.name)
    assert len(published) == 18
    resp = await client.post(IMPORT, content=E2E_FILE.encode(), headers={"content-type": "text/csv"})
    body = resp.json()
    assert (body["accepted"], body["unchanged"], body["events"]) == (0, 18, 0)
    assert {i["code"] for i in body["report"]} == {"already-stored"}
    assert len(await stream_messages(settings, READINGS.name)) == 18
    # another value at a stored time is refused (the stored reading stays), the same value is unchanged
    changed = (
        "device,time,quantity,value,unit\n"
        "m1,2024-03-01T10:15:00+01:00,energy_active_import,1000.3,kWh\n"
        "m1,2024-03-01T10:30:00+01:00,energy_active_import,1001,kWh\n"
    )
    resp = await client.post(IMPORT, content=changed.encode(), headers={"content-type": "text/csv"})
    refused, same = resp.json()["report"]
    assert refused["code"] == "another-value-stored" and same["code"] == "already-stored"
    assert refused["reason"] == "another value (1000250 Wh) is already stored for this time: it stays"
    assert len(await stream_messages(settings, READINGS.name)) == 18

    # past JetStream's dedupe window the same events are stored in the stream again: the aggregator's
    # store keeps one reading per device, counter and time, and the figures stay the same
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        config = (await js.stream_info(READINGS.name)).config
        config.duplicate_window = 0.5
        await js.update_stream(config)
        await asyncio.sleep(1.5)
        for subject, headers, data in published:
            ack = await js.publish(subject, data, headers={"Nats-Msg-Id": headers["Nats-Msg-Id"]})
            assert not ack.duplicate
    finally:
        await nc.close()
    assert len(await stream_messages(settings, READINGS.name)) == 36
    await eventually(lambda: aggregated(settings), 30, "the aggregator to take the repeated events")
    assert await day_figures(client, "device:m1") == m1
    assert (await day_figures(client, "device:water"))[0] == pytest.approx(800.0)
    rows = await get_store(settings.clickhouse_dsn).query(
        f"SELECT count() FROM {settings.clickhouse_database}.readings FINAL WHERE site = 'demo'"
    )
    assert rows[0][0] == 18

    # and the export gives back what was imported, in the canonical unit
    resp = await client.get(EXPORT, params={"device": "m1", "from": "2024-03-01"})
    rows = parse_csv(resp.text)
    assert rows[0] == ["time", "energy_active_import (Wh)"] and len(rows) == 10
    assert rows[2] == ["2024-03-01T10:15:00+01:00", "1000250"]


async def _if(figures: Awaitable[tuple[float, list[float | None]]], ok: Callable[[Any], bool]) -> Any:
    value = await figures
    return value if ok(value) else None
