"""Backup and restore through the real app: GET /api/v1/backup, POST /api/v1/restore, GET /api/v1/restore.

Real nats-server, redis-server and chDB; the aggregator, the auth service and the gateway-api run in this
process (as ``ews run aggregator,gateway-api`` does with chDB), one "box" per NATS server + ClickHouse
database + Redis database.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from ews_aggregator.service import serve as aggregator_serve
from ews_auth import codes as auth_codes
from ews_auth.codes import CodeStore
from ews_auth.service import serve as auth_serve
from ews_contracts import backup as core
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.natsclient import connect_fast
from ews_contracts.rebuild import AGGREGATOR_DURABLE, RebuildMarker
from ews_contracts.roles import Role
from ews_contracts.settings import Settings
from ews_contracts.siteconfig import ConfigStore, site_of
from ews_contracts.streams import CONFIG, READINGS
from ews_gateway_api.app import create_app
from ews_gateway_api.domain import backup as domain
from ews_gateway_api.testing import app_client
from ews_runtime.servers import NatsServer, free_port
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for

pytestmark = pytest.mark.integration

SITE = "demo"
PARIS_DST = datetime(2025, 3, 29, 0, 0, tzinfo=UTC)  # 15-minute readings over the spring DST change
COUNTERS = {"m1": 1200.0, "e2": 800.0, "ev1": 2500.0, "gen1": 400.0}  # Wh per 15 minutes
PULSES = {"water": 3.0, "gas": 5.0}  # pulses per 15 minutes (× 10 dm³)
PROFILES = {
    "m1": "multifunction-meter-412045",
    "e2": "energy-meter-rs485-3ph",
    "ev1": "ev-station-greenup",
    "gen1": "generic-meter-ea",
    "water": "pulse-concentrator-004687",
    "gas": "pulse-concentrator-004687",
}
QUERIES = [
    f"/api/v1/consumption?scope={scope}&period={period}&date={day}"
    for scope in (
        "total-electricity",
        "total-global",
        "zone:building",
        "circuit:utilities",
        "device:m1",
        "device:water",
        "device:hvac-rest",
    )
    for period, day in (
        ("day", "2025-03-30"),
        ("day", "2025-03-31"),
        ("month", "2025-03-15"),
        ("year", "2025-01-01"),
        ("decade", "2025-01-01"),
    )
] + [
    "/api/v1/consumption?scope=total-electricity&period=month&date=2025-03-01&split=circuit",
    "/api/v1/consumption?scope=total-global&period=year&date=2024-06-01&split=medium",
    "/api/v1/consumption/datalogger.csv?scope=total-global&period=month&date=2025-03-01",
    "/api/v1/consumption/compare?a=device:m1&b=device:e2&period=day&date=2025-03-30",
]


def readings() -> list[ReadingTaken]:
    """Daily readings through 2024, then every 15 minutes from 29 March to 1 April 2025, for six devices."""
    times = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=d) for d in range(0, 450, 1)]
    times = [t for t in times if t < PARIS_DST] + [
        PARIS_DST + timedelta(minutes=15 * k) for k in range(4 * 96)
    ]
    out = []
    for device, profile in PROFILES.items():
        counter = 0.0
        last = times[0]
        for t in times:
            steps = (t - last).total_seconds() / 900
            last = t
            if device in PULSES:
                counter += PULSES[device] * steps
                values = {"pulse_count": round(counter)}
            else:
                counter += COUNTERS[device] * steps * (1.0 + 0.25 * (t.hour in range(8, 19)))
                values = {"energy_active_import": round(counter, 1)}
            out.append(
                ReadingTaken(
                    event_id=ReadingTaken.id_for(SITE, device, t),
                    site=SITE,
                    device=device,
                    profile=profile,
                    occurred_at=t,
                    values=values,
                )
            )
    return out


@pytest.fixture
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        auth_codes, "PasswordHasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


@asynccontextmanager
async def box(settings: Settings) -> AsyncIterator[tuple[Litestar, AsyncClient]]:
    """The aggregator, the auth service and the gateway-api on ``settings``."""
    tasks = [asyncio.create_task(aggregator_serve(settings)), asyncio.create_task(auth_serve(settings))]
    app = create_app(settings)
    try:
        async with app_client(app) as client:
            for _ in range(200):
                if (await client.post("/api/v1/auth/login", json={"pin": "00000"})).status_code != 503:
                    break
                await asyncio.sleep(0.05)
            for key in await app.state.redis.keys(f"ews:{SITE}:auth:limits:*"):
                await app.state.redis.delete(key)
            admin = await session_for(app, "administrator")
            for _ in range(300):  # the aggregator answers once it has migrated its database
                resp = await client.get("/api/v1/restore", cookies=admin)
                if resp.status_code == 200 and resp.json()["aggregator"] == "answering":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the aggregator did not start")
            yield app, client
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def publish(nats_url: str, events: list[Any]) -> None:
    nc = await connect_fast(nats_url, "test-publisher")
    try:
        js = nc.jetstream()
        for i in range(0, len(events), 500):
            await asyncio.gather(
                *(
                    js.publish(e.subject, e.model_dump_json().encode(), headers=e.headers())
                    for e in events[i : i + 500]
                )
            )
    finally:
        await nc.close()


async def accounted(nats_url: str, seconds: float = 60.0) -> None:
    """Until the aggregator's durable consumer has acked every reading of the stream."""
    nc = await connect_fast(nats_url, "test-wait")
    try:
        js = nc.jetstream()
        for _ in range(int(seconds / 0.2)):
            with suppress(Exception):
                info = await js.consumer_info(READINGS.name, AGGREGATOR_DURABLE)
                if (
                    RebuildMarker.of(info) is None
                    and info.num_pending == 0
                    and info.num_ack_pending == 0
                    and info.delivered.stream_seq > 0
                ):
                    return
            await asyncio.sleep(0.2)
        raise AssertionError("the aggregator did not account every reading")
    finally:
        await nc.close()


async def rebuilt(
    client: AsyncClient, cookies: dict[str, str], restore_id: str, seconds: float = 60.0
) -> dict:
    for _ in range(int(seconds / 0.2)):
        resp = await client.get("/api/v1/restore", cookies=cookies)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        status = body.get("rebuild") or {}
        if status.get("restore") == restore_id and status.get("state") == "idle":
            return body
        assert status.get("state") != "failed", body
        await asyncio.sleep(0.2)
    raise AssertionError(f"no rebuild of restore {restore_id}: {body}")


async def answers(client: AsyncClient, cookies: dict[str, str]) -> dict[str, bytes]:
    out = {}
    for query in QUERIES:
        resp = await client.get(query, cookies=cookies)
        assert resp.status_code == 200, f"{query}: {resp.status_code} {resp.text[:200]}"
        out[query] = resp.content
    return out


def settings_b(tmp_path: Path, nats_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh box: its own NATS, ClickHouse database, Redis database and data folder."""
    for key, value in {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/1",
        "CLICKHOUSE_DATABASE": "t_restored_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:8],
        "EWS_DATA_DIR": str(tmp_path / "data-b"),
    }.items():
        monkeypatch.setenv(key, value)
    return Settings()


async def test_restore_into_a_fresh_box_answers_every_query_byte_for_byte(
    settings: Settings, redis_clean: str, cheap_argon2: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = readings()
    statuses = [
        DeviceStatusChanged(site=SITE, device="ev1", state="fault", previous="on", reason="test"),
        DeviceStatusChanged(site=SITE, device="ev1", state="on", previous="fault"),
    ]
    async with box(settings) as (app, client):
        admin = await session_for(app, "administrator")
        # history of the configuration: the seed (version 1), then a change from the API
        nc = await connect_fast(settings.nats_url, "test-config")
        store = ConfigStore(nc.jetstream(), SITE)
        first = await store.latest()
        assert first is not None and first.version == 1
        # (a new price too: the rebuild must account with the restored configuration, not the site file's)
        seeded = site_of(first)
        tariff = seeded.tariffs[0].model_copy(update={"electricity_per_kwh": 0.3})
        renamed = seeded.model_copy(update={"name": "Restored building", "tariffs": [tariff]})
        await store.put(renamed, expected=1, changed_by="administrator", how="api")
        for _ in range(100):  # the services follow it live
            if app.state.site.name == "Restored building":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        history_a = [(e.event_id, e.version, e.document) for e in await store.history()]
        await nc.close()
        # codes changed from the factory ones
        await CodeStore(app.state.redis, SITE).set_codes(Role.ADMINISTRATOR, "24680", "13579 2468 13579")
        codes_a = await core.read_codes(app.state.redis, SITE)
        await publish(settings.nats_url, events + statuses)
        await accounted(settings.nats_url)
        expected = await answers(client, admin)
        day = json.loads(expected[QUERIES[0]])
        assert day["total"]["value"] > 0 and len(day["buckets"]) == 23  # the DST day of Europe/Paris
        assert day["total"]["cost"] == pytest.approx(day["total"]["value"] / 1000 * 0.3)

        resp = await client.get("/api/v1/backup", cookies=admin, headers={"Accept-Encoding": "gzip"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/gzip"
        assert "content-encoding" not in resp.headers  # already gzip: never compressed twice
        disposition = resp.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="ews-backup-demo-') and disposition.endswith(
            '.tar.gz"'
        )
        archive = resp.content

    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        codes_file = tar.extractfile("auth/codes.json").read().decode()
    assert names[0] == "backup.json" and names[-1] == "manifest.json"
    assert names[1:4] == ["config/history.ndjson", "auth/codes.json", "readings/000001.ndjson"]
    assert manifest["site"] == SITE and manifest["format_version"] == core.FORMAT_VERSION
    assert manifest["counts"]["readings"] == len(events)
    assert manifest["counts"]["statuses"] == 2
    assert manifest["counts"]["config_versions"] == 2
    assert manifest["counts"]["roles"] == 4
    assert "24680" not in codes_file and "$argon2" in codes_file  # hashes, never a code

    # a fresh box: new NATS server, new ClickHouse database, another Redis database
    with NatsServer(tmp_path / "nats-b", free_port(), log=tmp_path / "nats-b.log") as nats_b:
        fresh = settings_b(tmp_path, nats_b.url, settings.redis_url, monkeypatch)
        redis_b = aioredis.from_url(fresh.redis_url)
        await redis_b.flushdb()
        try:
            async with box(fresh) as (app_b, client_b):
                admin_b = await session_for(app_b, "administrator")
                before = await answers(client_b, admin_b)
                assert before != expected  # nothing there yet
                resp = await client_b.post(
                    "/api/v1/restore",
                    content=archive,
                    headers={"content-type": "application/gzip"},
                    cookies=admin_b,
                )
                assert resp.status_code == 200, resp.text
                result = resp.json()
                assert result["rebuild"] == "started"
                assert result["counts"]["readings"] == len(events)
                assert result["configuration_version"] == 3  # the backup's version 2, published anew
                assert set(result["roles_changed"]) == {
                    str(r) for r in Role
                }  # other hashes than the fresh box's
                assert result["signed_out"] is True
                # the restoring session was revoked with the administrator's others
                assert (await client_b.get("/api/v1/restore", cookies=admin_b)).status_code == 401
                admin_b = await session_for(app_b, "administrator")
                await rebuilt(client_b, admin_b, result["restore"])
                await accounted(fresh.nats_url)
                restored = await answers(client_b, admin_b)
                for query in QUERIES:
                    assert restored[query] == expected[query], query

                # the configuration's history, then the restore's version on top, applied live
                nc = await connect_fast(fresh.nats_url, "test-config")
                history_b = await ConfigStore(nc.jetstream(), SITE).history()
                await nc.close()
                assert [(e.event_id, e.version, e.document) for e in history_b[:-1]] == history_a
                top = history_b[-1]
                assert (top.version, top.how, top.changed_by) == (3, "restore", "administrator")
                assert top.document == history_a[-1][2]
                assert app_b.state.site.name == "Restored building"
                # the code hashes: the restored codes sign in
                assert await core.read_codes(redis_b, SITE) == codes_a
                client_b.cookies.clear()
                login = await client_b.post(
                    "/api/v1/auth/login", json={"pin": "24680", "puk": "13579 2468 13579"}
                )
                assert login.status_code == 200, login.text
                assert login.json()["role"] == "administrator"

                # restoring the same archive again (JetStream's dedupe window still holds every id)
                again = await client_b.post(
                    "/api/v1/restore",
                    files={"archive": ("backup.tar.gz", archive, "application/gzip")},
                    cookies=admin_b,
                )
                assert again.status_code == 200, again.text
                assert again.json()["duplicates"] == len(events) + 2 + 2  # readings, statuses, config
                assert again.json()["roles_changed"] == []
                await rebuilt(client_b, admin_b, again.json()["restore"])
                await accounted(fresh.nats_url)
                assert await answers(client_b, admin_b) == expected
                nc = await connect_fast(fresh.nats_url, "test-count")
                info = await nc.jetstream().stream_info(READINGS.name)
                await nc.close()
                assert info.state.messages == len(events) + 2
        finally:
            await redis_b.flushdb()
            await redis_b.aclose()


# --- refused archives ------------------------------------------------------------------------------


def rewrite(archive: bytes, change: dict[str, Any], fix_manifest: bool = True) -> bytes:
    """The archive with some members replaced (bytes, or a function of the old bytes); the manifest's
    checksums, sizes and identity follow unless ``fix_manifest`` is false."""
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for info in tar:
            members.append((info, tar.extractfile(info).read()))
    out: list[tuple[str, bytes]] = []
    for info, data in members:
        if info.name in change:
            new = change[info.name]
            data = new(data) if callable(new) else new
        out.append((info.name, data))
    if fix_manifest:
        manifest = json.loads(out[-1][1])
        identity = json.loads(out[0][1])
        manifest.update(identity)
        for entry, (name, data) in zip(manifest["members"], out[:-1], strict=True):
            assert entry["name"] == name
            entry["bytes"] = len(data)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
        out[-1] = ("manifest.json", json.dumps(manifest).encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in out:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def identity_with(**values: Any):
    def change(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), **values}).encode()

    return change


def first_line_with(old: bytes, new: bytes):
    def change(data: bytes) -> bytes:
        assert old in data
        return data.replace(old, new, 1)

    return change


async def state_of(app: Litestar, nats_url: str) -> dict[str, Any]:
    """What a restore would change: the streams, the aggregator's consumer, the codes, the figures."""
    nc = await connect_fast(nats_url, "test-state")
    try:
        js = nc.jetstream()
        readings_info = await js.stream_info(READINGS.name)
        config_info = await js.stream_info(CONFIG.name)
        consumer = await js.consumer_info(READINGS.name, AGGREGATOR_DURABLE)
        return {
            "readings": (readings_info.state.messages, readings_info.state.last_seq),
            "config": (config_info.state.messages, config_info.state.last_seq),
            "consumer": (consumer.config.deliver_subject, consumer.config.metadata),
            "codes": await core.read_codes(app.state.redis, SITE),
            "lock": await app.state.redis.get(core.lock_key(SITE)),
        }
    finally:
        await nc.close()


async def test_refused_archives_change_nothing(
    settings: Settings, redis_clean: str, cheap_argon2: None
) -> None:
    async with box(settings) as (app, client):
        admin = await session_for(app, "administrator")
        await publish(settings.nats_url, readings()[:300])
        await accounted(settings.nats_url)
        archive = (await client.get("/api/v1/backup", cookies=admin)).content
        figures = (await client.get(QUERIES[0], cookies=admin)).content
        before = await state_of(app, settings.nats_url)
        line = b'"site\\":\\"demo\\",'
        cases = [
            (b"", "backup-empty", "no archive"),
            (b"this is not a backup", "backup-damaged", "damaged archive: not gzip data"),
            (gzip.compress(b"plain text, gzip but not tar" * 50), "backup-damaged", "damaged archive"),
            (archive[: len(archive) // 2], "backup-damaged", "damaged archive: it ends too early"),
            (archive[:-30], "backup-damaged", "damaged archive"),
            (
                rewrite(archive, {"backup.json": identity_with(site="elsewhere")}),
                "backup-foreign-site",
                "foreign site 'elsewhere': this is site 'demo'",
            ),
            (
                rewrite(archive, {"backup.json": identity_with(format_version=7)}),
                "backup-newer-format",
                "newer format 7: this version reads backups up to format 1",
            ),
            (
                rewrite(archive, {"backup.json": identity_with(format="something-else")}),
                "backup-not-a-backup",
                "not a backup of the energy web server",
            ),
            (
                rewrite(
                    archive,
                    {"readings/000001.ndjson": first_line_with(b"1200.", b"1201.")},
                    fix_manifest=False,
                ),
                "backup-damaged",
                "damaged archive: the checksum of readings/000001.ndjson does not match the manifest",
            ),
            (
                rewrite(archive, {"readings/000001.ndjson": first_line_with(line, b'"site\\":\\"other\\",')}),
                "backup-invalid-member",
                "invalid archive member readings/000001.ndjson, line 1: event of site 'other'",
            ),
            (
                rewrite(archive, {"readings/000001.ndjson": lambda d: d + b"{not json}\n"}),
                "backup-invalid-member",
                "invalid archive member readings/000001.ndjson, line 301: not JSON",
            ),
            (
                rewrite(archive, {"manifest.json": b"{}"}, fix_manifest=False),
                "backup-damaged",
                "damaged archive: the manifest's format",
            ),
        ]
        for body, code, detail in cases:
            resp = await client.post(
                "/api/v1/restore",
                content=body,
                headers={"content-type": "application/octet-stream"},
                cookies=admin,
            )
            assert resp.status_code == 400, (code, resp.text)
            answer = resp.json()
            assert answer["code"] == code, answer
            assert answer["detail"].startswith(detail), answer
            assert "\n" not in answer["detail"]
        # a form without a file
        resp = await client.post("/api/v1/restore", files={"note": (None, "no file")}, cookies=admin)
        assert resp.status_code == 400 and resp.json()["code"] == "backup-empty", resp.text
        resp = await client.post("/api/v1/restore", data={"archive": "backup.tar.gz"}, cookies=admin)
        assert resp.status_code == 400 and resp.json()["code"] == "backup-empty", resp.text
        # a form whose file is another site's archive
        foreign = rewrite(archive, {"backup.json": identity_with(site="elsewhere")})
        resp = await client.post(
            "/api/v1/restore", files={"archive": ("b.tar.gz", foreign, "application/gzip")}, cookies=admin
        )
        assert resp.status_code == 400 and resp.json()["code"] == "backup-foreign-site", resp.text
        assert await state_of(app, settings.nats_url) == before
        assert (await client.get(QUERIES[0], cookies=admin)).content == figures
        # and the untouched archive is accepted
        resp = await client.post(
            "/api/v1/restore", content=archive, headers={"content-type": "application/gzip"}, cookies=admin
        )
        assert resp.status_code == 200, resp.text


async def test_only_backup_restore_roles(client: AsyncClient, app: Litestar) -> None:
    for path, method in (("/api/v1/backup", "GET"), ("/api/v1/restore", "POST"), ("/api/v1/restore", "GET")):
        client.cookies.clear()
        assert (await client.request(method, path)).status_code == 401
        for role in (Role.USER, Role.GREENUP):
            resp = await client.request(method, path, cookies=await session_for(app, str(role)))
            assert resp.status_code == 403, (path, role, resp.text)
            assert resp.json()["code"] == "forbidden"
    resp = await client.get("/api/v1/backup", cookies=await session_for(app, "installer"))
    assert resp.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        assert tar.getnames()[0] == "backup.json"
    resp = await client.get("/api/v1/restore", cookies=await session_for(app, "installer"))
    assert resp.status_code == 200 and resp.json() == {"aggregator": "not-running", "rebuild": None}


async def test_backup_and_restore_are_audited(client: AsyncClient, app: Litestar, settings: Settings) -> None:
    admin = await session_for(app, "administrator")
    archive = (await client.get("/api/v1/backup", cookies=admin)).content
    resp = await client.post(
        "/api/v1/restore", content=archive, headers={"content-type": "application/gzip"}, cookies=admin
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["rebuild"] == "pending"  # no aggregator runs in this test: it rebuilds when it starts
    nc = await connect_fast(settings.nats_url, "test-audit")
    try:
        js = nc.jetstream()
        actions = []
        for seq in range(1, (await js.stream_info("EWS_AUDIT")).state.last_seq + 1):
            record = json.loads((await js.get_msg("EWS_AUDIT", seq)).data)
            actions.append((record["action"], record["role"]))
        marker = RebuildMarker.of(await js.consumer_info(READINGS.name, AGGREGATOR_DURABLE))
    finally:
        await nc.close()
    assert ("backup", "administrator") in actions and ("restore", "administrator") in actions
    assert marker is not None and marker.restore == resp.json()["restore"] and marker.due()


def test_problem_messages_are_the_catalogue_msgids() -> None:
    assert domain.PROBLEM_MESSAGES == core.PROBLEMS
