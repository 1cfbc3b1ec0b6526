"""`ews backup FILE` / `ews restore FILE`: with the stack stopped (they start nats-server and redis-server on the
data folder for the command) and with servers running; errors are one line, never a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from ews_contracts.backup import TarGzWriter, check_codes, check_event, codes_key, parse_record, record_line
from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import ReadingTaken
from ews_contracts.natsclient import connect_fast
from ews_contracts.rebuild import RebuildMarker, current_marker
from ews_contracts.streams import READINGS
from ews_contracts.subjects import Kind
from ews_runtime.servers import NatsServer, RedisServer, free_port, probe, redis_password

EWS = [sys.executable, "-m", "ews_runtime.cli"]
HASH = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def env_for(data: Path, nats_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("EWS_", "NATS_", "REDIS_", "CLICKHOUSE_"))
    }
    env.update(EWS_DATA_DIR=str(data), NATS_URL=nats_url, REDIS_URL=redis_url, **extra)
    return env


def ews(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(EWS + args, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


async def seed(nats_url: str, redis_url: str, n: int) -> None:
    nc = await connect_fast(nats_url, "test-seed")
    js = nc.jetstream()
    await ensure_streams_with(js)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for k in range(n):
        t = t0 + timedelta(minutes=15 * k)
        event = ReadingTaken(
            event_id=ReadingTaken.id_for("demo", "m1", t),
            site="demo",
            device="m1",
            profile="multifunction-meter-412045",
            occurred_at=t,
            values={"energy_active_import": 1000.0 + 250.0 * k},
        )
        await js.publish(event.subject, event.model_dump_json().encode(), headers=event.headers())
    await nc.close()
    redis = aioredis.from_url(redis_url)
    await redis.set(
        codes_key("demo", "administrator"), json.dumps({"pin": HASH, "puk": HASH, "default": False})
    )
    await redis.aclose()


async def stored(nats_url: str, redis_url: str) -> tuple[int, bytes | None, RebuildMarker | None]:
    nc = await connect_fast(nats_url, "test-count")
    js = nc.jetstream()
    messages = (await js.stream_info(READINGS.name)).state.messages
    marker = await current_marker(js)
    await nc.close()
    redis = aioredis.from_url(redis_url)
    codes = await redis.get(codes_key("demo", "administrator"))
    await redis.aclose()
    return messages, codes, marker


@pytest.mark.integration
def test_backup_and_restore_with_the_stack_stopped(tmp_path: Path) -> None:
    """Box A: servers running (seeded), `ews backup`; box B: nothing running, `ews restore` starts the servers
    on its data folder, restores, stops them; the data stays in the folder for `ews up`."""
    archive = tmp_path / "site.tar.gz"
    with (
        NatsServer(tmp_path / "a" / "nats", free_port()) as nats_a,
        RedisServer(tmp_path / "a" / "redis", free_port()) as redis_a,
    ):
        asyncio.run(seed(nats_a.url, redis_a.url, 500))
        result = ews(["backup", str(archive)], env_for(tmp_path / "a", nats_a.url, redis_a.url))
        assert result.returncode == 0, result.stderr
        assert "500 readings" in result.stdout and f"wrote {archive}" in result.stdout
    with tarfile.open(archive, "r:gz") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["counts"]["readings"] == 500 and manifest["counts"]["roles"] == 1

    data_b = tmp_path / "b"
    nats_port, redis_port = free_port(), free_port()
    env_b = env_for(data_b, f"nats://127.0.0.1:{nats_port}", f"redis://127.0.0.1:{redis_port}/0")
    result = ews(["restore", str(archive)], env_b)
    assert result.returncode == 0, result.stderr
    assert "the stack is not running: started nats-server and redis-server" in result.stdout
    assert "500 readings" in result.stdout
    assert "rebuilds the figures when it starts" in result.stdout
    assert probe("127.0.0.1", nats_port) is None and probe("127.0.0.1", redis_port) is None  # stopped again
    # what `ews up` will find in the data folder: the readings, the codes, the aggregator's rebuild marker
    with (
        NatsServer(data_b / "nats", nats_port) as nats_b,
        RedisServer(data_b / "redis", redis_port) as redis_b,
    ):
        messages, codes, marker = asyncio.run(stored(nats_b.url, redis_b.url))
    assert messages == 500
    assert codes is not None and json.loads(codes)["pin"] == HASH
    assert marker is not None and marker.due()

    # and a backup of the stopped box B holds the same readings
    again = tmp_path / "again.tar.gz"
    result = ews(["backup", str(again)], env_b)
    assert result.returncode == 0, result.stderr
    with tarfile.open(again, "r:gz") as tar:
        readings = tar.extractfile("readings/000001.ndjson").read()
    with tarfile.open(archive, "r:gz") as tar:
        assert tar.extractfile("readings/000001.ndjson").read() == readings


@pytest.mark.integration
def test_restore_errors_are_one_line(tmp_path: Path) -> None:
    with (
        NatsServer(tmp_path / "nats", free_port()) as nats,
        RedisServer(tmp_path / "redis", free_port()) as redis,
    ):
        env = env_for(tmp_path / "data", nats.url, redis.url)
        assert_one_line_error(
            ews(["restore", str(tmp_path / "missing.tar.gz")], env), "ews restore: error: cannot read"
        )
        garbage = tmp_path / "garbage.tar.gz"
        garbage.write_bytes(b"not an archive at all")
        assert_one_line_error(ews(["restore", str(garbage)], env), "damaged archive: not gzip data")
        asyncio.run(seed(nats.url, redis.url, 20))
        archive = tmp_path / "a.tar.gz"
        assert ews(["backup", str(archive)], env).returncode == 0
        truncated = tmp_path / "truncated.tar.gz"
        truncated.write_bytes(archive.read_bytes()[:-100])
        assert_one_line_error(ews(["restore", str(truncated)], env), "damaged archive")
        # another site's archive: the same file, restored by a box of another site
        other_site = tmp_path / "other.yaml"
        other_site.write_text(
            "site: other\nname: Other\ntariffs: [{effective_from: 2020-01-01, electricity_per_kwh: 0.2}]\n"
            "gateways: [{id: gw1, host: 127.0.0.1, port: 5020}]\n"
            "devices: [{id: m1, name: M1, profile: energy-meter-rs485-3ph, gateway: gw1, address: 1}]\n"
        )
        result = ews(["restore", str(archive), "--site", str(other_site)], env)
        assert_one_line_error(result, "foreign site 'demo': this is site 'other'")
        assert asyncio.run(stored(nats.url, redis.url))[2] is None  # nothing was touched
        # a directory where the backup should be written
        assert_one_line_error(ews(["backup", str(tmp_path)], env), "ews backup: error: cannot write")
        # with the aggregator not running, the restore itself works and says so
        result = ews(["restore", str(archive), "--no-wait"], env)
        assert result.returncode == 0, result.stderr
        assert "20 readings" in result.stdout


@pytest.mark.integration
def test_archive_is_a_plain_tar_gz(tmp_path: Path) -> None:
    """Readable by any tar: the members in order, NDJSON lines with the original payload bytes."""
    with (
        NatsServer(tmp_path / "nats", free_port()) as nats,
        RedisServer(tmp_path / "redis", free_port()) as redis,
    ):
        asyncio.run(seed(nats.url, redis.url, 3))
        archive = tmp_path / "a.tar.gz"
        result = ews(["backup", str(archive)], env_for(tmp_path / "data", nats.url, redis.url))
        assert result.returncode == 0, result.stderr
    listing = subprocess.run(["tar", "tzf", str(archive)], capture_output=True, text=True, check=True).stdout
    assert listing.split() == [
        "backup.json",
        "config/history.ndjson",
        "auth/codes.json",
        "readings/000001.ndjson",
        "manifest.json",
    ]
    with tarfile.open(archive, "r:gz") as tar:
        lines = tar.extractfile("readings/000001.ndjson").read().splitlines()
        identity = json.load(io.BytesIO(tar.extractfile("backup.json").read()))
    first = json.loads(lines[0])
    assert first["subject"] == "ews.demo.reading.m1" and first["id"] == first["data"].split('"')[3]
    assert ReadingTaken.model_validate_json(first["data"]).values == {"energy_active_import": 1000.0}
    assert identity["format"] == "ews-backup" and identity["site"] == "demo"


@pytest.mark.integration
def test_backup_finds_the_password_of_ews_up_redis(tmp_path: Path) -> None:
    """REDIS_URL without a password: `ews backup` uses the one `ews up` keeps in data/redis/password, with
    the stack running and with it stopped (then the redis-server it starts requires that password too)."""
    data = tmp_path / "data"
    password = redis_password(data / "redis", create=True)
    redis_port = free_port()
    plain_url = f"redis://127.0.0.1:{redis_port}/0"
    with (
        NatsServer(data / "nats", free_port()) as nats,
        RedisServer(data / "redis", redis_port, password=password) as redis,
    ):
        assert redis.url != plain_url and password in redis.url
        asyncio.run(seed(nats.url, redis.url, 3))
        result = ews(["backup", str(tmp_path / "running.tar.gz")], env_for(data, nats.url, plain_url))
        assert result.returncode == 0, result.stderr
        nats_url = nats.url
    result = ews(["backup", str(tmp_path / "stopped.tar.gz")], env_for(data, nats_url, plain_url))
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr


# --- the archive format, without servers ------------------------------------------------------------


def test_message_lines_keep_the_payload_byte_for_byte() -> None:
    payload = '{"event_id":"x","note":"quote \\" é\\n","values":{"a":1e16}}'
    line = record_line("ews.demo.reading.m1", "id-1", payload)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_record(line) == ("ews.demo.reading.m1", "id-1", payload)
    for bad, why in (
        (b"[1, 2]", "not a message record"),
        (b'{"subject": "s", "id": "", "data": "d"}', "1 to 256 characters"),
        (b'{"subject": "s", "id": "i"}', "subject, an id and data"),
        (b"{oops", "not JSON"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_record(bad)


def test_events_are_checked_against_the_site_and_their_subject() -> None:
    event = ReadingTaken(site="demo", device="m1", profile="p", values={"energy_active_import": 1.0})
    data = event.model_dump_json()
    assert check_event("demo", {Kind.READING}, event.subject, data) == event
    for site, subj, why in (
        ("other", event.subject, "message of site 'demo'"),
        ("demo", "ews.demo.reading.m2", "belongs on 'ews.demo.reading.m1'"),
        ("demo", "ews.demo.status.m1", "does not belong here"),
        ("demo", "ews.demo.nonsense.m1", "unknown kind"),
        ("demo", "ews.demo.reading", "is not ews.<site>.<kind>.<id>"),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            check_event(site, {Kind.READING}, subj, data)
    with pytest.raises(ValueError, match="not a valid ReadingTaken"):
        check_event("demo", {Kind.READING}, event.subject, '{"site": "demo"}')


def test_code_hashes_are_checked() -> None:
    good = {"roles": {"administrator": {"pin": HASH, "puk": HASH, "default": True}}}
    assert check_codes(good) == good["roles"]
    for document, why in (
        ({"roles": {"root": {"pin": HASH, "puk": HASH, "default": True}}}, "unknown role 'root'"),
        ({"roles": {"user": {"pin": "11111", "puk": HASH, "default": True}}}, "user.pin: not an argon2 hash"),
        ({"roles": {"user": {"pin": HASH, "puk": HASH}}}, "user.default"),
        ([], "expected"),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            check_codes(document)


def test_the_streamed_tar_gz_is_a_standard_one() -> None:
    writer = TarGzWriter(1_700_000_000, level=1)
    out = bytearray()
    writer.add("backup.json", b'{"a": 1}\n')
    out += writer.take(sync=True)
    assert out[:2] == b"\x1f\x8b"  # the first bytes leave at once
    writer.add("readings/000001.ndjson", b"x" * 700)
    out += writer.close()
    with tarfile.open(fileobj=io.BytesIO(bytes(out)), mode="r:gz") as tar:
        assert tar.getnames() == ["backup.json", "readings/000001.ndjson"]
        assert tar.extractfile("readings/000001.ndjson").read() == b"x" * 700
        assert tar.getmember("backup.json").mtime == 1_700_000_000
