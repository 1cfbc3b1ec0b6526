"""domain/commands.py against a real nats-server and redis-server.

The routes run in a minimal Litestar app that does what the core lifespan promises (app.state.settings,
.site, .broker, .redis) with server-side sessions; a test-only route puts a role in the session (the
login flow itself is the auth domain's business). The outcome side is driven by publishing
CommandCompleted / CommandFailed on JetStream, exactly as the commands service does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from ews_contracts.bus import ensure_streams, make_broker, publish_event
from ews_contracts.events import CommandCompleted, CommandExpired, CommandFailed, CommandRequested
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import Settings
from ews_gateway_api.domain import commands
from litestar import Litestar, Request, post
from litestar.middleware.session.server_side import ServerSideSessionConfig
from litestar.stores.memory import MemoryStore
from litestar.testing import AsyncTestClient

pytestmark = pytest.mark.integration


@post("/test/session", status_code=204)
async def _set_role(request: Request[Any, Any, Any], data: dict[str, str]) -> None:
    request.set_session({"role": data["role"]})


def make_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def core(app: Litestar) -> AsyncIterator[None]:
        broker = make_broker(settings.nats_url, "gateway-api-test")
        await broker.connect()
        await ensure_streams(broker)
        app.state.settings = settings
        app.state.site = settings.site
        app.state.profiles = load_profiles(settings.profiles_dir)
        app.state.broker = broker
        app.state.redis = aioredis.from_url(settings.redis_url)
        try:
            yield
        finally:
            await app.state.redis.aclose()
            await broker.stop()

    return Litestar(
        route_handlers=[commands.router, _set_role],
        lifespan=[core, commands.lifespan],
        middleware=[ServerSideSessionConfig().middleware],
        stores={"sessions": MemoryStore()},
    )


@pytest.fixture
async def app_client(nats_url: str, redis_clean: str, tmp_path) -> AsyncIterator[AsyncTestClient]:
    settings = Settings(NATS_URL=nats_url, REDIS_URL=redis_clean, EWS_DATA_DIR=str(tmp_path))
    async with AsyncTestClient(app=make_app(settings)) as client:
        yield client


async def login(client: AsyncTestClient, role: str) -> None:
    assert (await client.post("/test/session", json={"role": role})).status_code == 204


async def requests_on_stream(nats_url: str) -> list[CommandRequested]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("EWS_COMMANDS", subjects_filter="ews.demo.command-requested.*")
        if not info.state.messages:
            return []
        sub = await js.pull_subscribe("ews.demo.command-requested.*", stream="EWS_COMMANDS")
        try:
            msgs = await sub.fetch(10, timeout=1.0)
        except nats.errors.TimeoutError:
            return []
        return [CommandRequested.model_validate_json(m.data) for m in msgs]
    finally:
        await nc.close()


async def wait_status(client: AsyncTestClient, command_id: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        resp = await client.get(f"/api/v1/commands/{command_id}")
        assert resp.status_code == 200, resp.text
        if resp.json()["status"] == status:
            return resp.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"command {command_id} never became {status}: {resp.json()}")


async def test_anonymous_and_wrong_role_are_refused(app_client: AsyncTestClient) -> None:
    body = {"device": "ev1", "action": "charge", "value": "start"}
    assert (await app_client.post("/api/v1/commands", json=body)).status_code == 401
    assert (await app_client.get("/api/v1/commands/abc")).status_code == 401
    await login(app_client, "user")
    assert (await app_client.post("/api/v1/commands", json=body)).status_code == 403
    assert (await app_client.get("/api/v1/commands/abc")).status_code == 403


async def test_command_requested_then_completed(
    app_client: AsyncTestClient, nats_url: str, redis_clean: str
) -> None:
    await login(app_client, "greenUp")
    resp = await app_client.post(
        "/api/v1/commands", json={"device": "ev1", "action": "charge", "value": "start"}
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert (body["status"], body["device"], body["action"], body["value"], body["requested_by"]) == (
        "requested",
        "ev1",
        "charge",
        "start",
        "greenUp",
    )
    command_id = body["id"]

    # the request is on the stream, as the commands service will see it
    (published,) = await requests_on_stream(nats_url)
    assert (
        published.command_id,
        published.device,
        published.action,
        published.value,
        published.requested_by,
    ) == (command_id, "ev1", "charge", "start", "greenUp")
    # the record is in Redis with a TTL of a few days
    r = aioredis.from_url(redis_clean)
    try:
        ttl = await r.ttl(f"ews:demo:command:{command_id}")
    finally:
        await r.aclose()
    assert 2 * 86_400 < ttl <= commands.RECORD_TTL

    assert (await app_client.get(f"/api/v1/commands/{command_id}")).json()["status"] == "requested"

    broker = make_broker(nats_url, "fake-commands-service")
    await broker.connect()
    try:
        await publish_event(
            broker,
            CommandCompleted(
                event_id=f"{command_id}.outcome",
                site="demo",
                command_id=command_id,
                device="ev1",
                action="charge",
                value="start",
                readback="start",
            ),
        )
        done = await wait_status(app_client, command_id, "completed")
        assert done["readback"] == "start" and done["error"] is None and done["finished_at"]
        assert done["requested_by"] == "greenUp" and done["requested_at"]

        # a late duplicate outcome does not rewrite a finished record
        await publish_event(
            broker,
            CommandFailed(
                site="demo", command_id=command_id, device="ev1", action="charge", value="start", error="late"
            ),
        )
        await asyncio.sleep(0.3)
        assert (await app_client.get(f"/api/v1/commands/{command_id}")).json()["status"] == "completed"
    finally:
        await broker.stop()


async def test_command_failed_and_single_value_default(app_client: AsyncTestClient, nats_url: str) -> None:
    await login(app_client, "administrator")
    resp = await app_client.post(
        "/api/v1/commands", json={"device": "ev1", "action": "ev-socket", "value": "disable"}
    )
    assert resp.status_code == 202, resp.text
    command_id = resp.json()["id"]
    broker = make_broker(nats_url, "fake-commands-service")
    await broker.connect()
    try:
        await publish_event(
            broker,
            CommandFailed(
                event_id=f"{command_id}.outcome",
                site="demo",
                command_id=command_id,
                device="ev1",
                action="ev-socket",
                value="disable",
                error="write failed: gw1: cannot connect to 127.0.0.1:5020",
            ),
        )
        failed = await wait_status(app_client, command_id, "failed")
    finally:
        await broker.stop()
    assert failed["error"] == "write failed: gw1: cannot connect to 127.0.0.1:5020"
    assert failed["readback"] is None


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"device": "nope", "action": "charge", "value": "start"}, 404, "unknown device 'nope'"),
        ({"device": "ev1", "action": "boost", "value": "on"}, 400, "has no command 'boost'"),
        (
            {"device": "ev1", "action": "charge", "value": "go"},
            400,
            "does not accept 'go'; allowed: start, wait",
        ),
        ({"device": "ev1", "action": "charge"}, 400, "needs a value: one of start, wait"),
        ({"device": "m1", "action": "charge", "value": "start"}, 400, "accepts no commands"),
        ({"device": "ev1"}, 400, ""),
    ],
)
async def test_bad_requests_are_refused_before_publishing(
    app_client: AsyncTestClient, nats_url: str, body: dict, status: int, fragment: str
) -> None:
    await login(app_client, "installer")
    resp = await app_client.post("/api/v1/commands", json=body)
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert fragment in detail and "\n" not in detail
    assert await requests_on_stream(nats_url) == []


async def test_unknown_command_is_404(app_client: AsyncTestClient) -> None:
    await login(app_client, "greenUp")
    resp = await app_client.get("/api/v1/commands/0123456789abcdef")
    assert resp.status_code == 404
    assert "unknown command '0123456789abcdef'" in resp.json()["detail"]


async def test_deadline_default_and_per_request_then_expired(
    app_client: AsyncTestClient, nats_url: str
) -> None:
    await login(app_client, "greenUp")
    default = (
        await app_client.post(
            "/api/v1/commands", json={"device": "ev1", "action": "charge", "value": "start"}
        )
    ).json()
    span = datetime.fromisoformat(default["deadline"]) - datetime.fromisoformat(default["requested_at"])
    assert span == timedelta(seconds=30)
    short = await app_client.post(
        "/api/v1/commands",
        json={"device": "ev1", "action": "charge", "value": "wait", "deadline_seconds": 2.5},
    )
    assert short.status_code == 202
    body = short.json()
    span = datetime.fromisoformat(body["deadline"]) - datetime.fromisoformat(body["requested_at"])
    assert span == timedelta(seconds=2.5)
    published = {r.command_id: r for r in await requests_on_stream(nats_url)}
    assert published[body["id"]].deadline == datetime.fromisoformat(body["deadline"])
    for bad in (0, -1, 601, "soon"):
        resp = await app_client.post(
            "/api/v1/commands",
            json={"device": "ev1", "action": "charge", "value": "wait", "deadline_seconds": bad},
        )
        assert resp.status_code == 400, (bad, resp.text)

    broker = make_broker(nats_url, "fake-commands-service")
    await broker.connect()
    try:
        await publish_event(
            broker,
            CommandExpired(
                event_id=f"{body['id']}.outcome",
                site="demo",
                command_id=body["id"],
                device="ev1",
                action="charge",
                value="wait",
                deadline=datetime.fromisoformat(body["deadline"]),
                error="not executed: the bus owner (poller) did not answer before the deadline",
            ),
        )
        done = await wait_status(app_client, body["id"], "expired")
        assert done["error"].startswith("not executed: the bus owner") and done["finished_at"]
    finally:
        await broker.stop()


async def test_without_any_outcome_a_command_reads_expired_after_its_deadline(
    app_client: AsyncTestClient, monkeypatch
) -> None:
    """Nothing ever answered (the commands service and the bus owner away): it ends expired, not requested."""
    monkeypatch.setattr(commands, "EXPIRY_GRACE", 0.5)
    await login(app_client, "greenUp")
    body = (
        await app_client.post(
            "/api/v1/commands",
            json={"device": "ev1", "action": "charge", "value": "start", "deadline_seconds": 0.5},
        )
    ).json()
    assert body["status"] == "requested"
    done = await wait_status(app_client, body["id"], "expired")
    assert "never reached the bus owner" in done["error"]


async def test_an_unconfirmed_request_is_202_and_sent_again_once(
    app_client: AsyncTestClient, nats_url: str, monkeypatch
) -> None:
    """The bus did not confirm (NATS stalled): the request may have reached it, so 202 requested, never
    'failed, try again'; it is sent again with the same Nats-Msg-Id and stored once."""
    real = commands.publish_event
    calls: list[str] = []

    async def first_unconfirmed(broker, event):  # noqa: ANN001
        calls.append(event.event_id)
        await real(broker, event)  # it does reach the stream ...
        if len(calls) == 1:
            raise TimeoutError("nats: timeout")  # ... but its confirmation is lost

    monkeypatch.setattr(commands, "publish_event", first_unconfirmed)
    await login(app_client, "greenUp")
    resp = await app_client.post(
        "/api/v1/commands", json={"device": "ev1", "action": "charge", "value": "start"}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "requested"
    for _ in range(50):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(calls) == 2 and calls[0] == calls[1]  # the same message again
    assert [r.command_id for r in await requests_on_stream(nats_url)] == [resp.json()["id"]]  # stored once


async def test_idempotency_key_returns_the_first_command(app_client: AsyncTestClient, nats_url: str) -> None:
    await login(app_client, "greenUp")
    body = {"device": "ev1", "action": "charge", "value": "start"}
    first = await app_client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "k-1"})
    again = await app_client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    other = await app_client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "k-2"})
    assert other.json()["id"] != first.json()["id"]
    reused = await app_client.post(
        "/api/v1/commands", json={**body, "value": "wait"}, headers={"Idempotency-Key": "k-1"}
    )
    assert reused.status_code == 409 and "Idempotency-Key" in reused.json()["detail"]
    # concurrent retries of one key: one command
    same = await asyncio.gather(
        *(
            app_client.post("/api/v1/commands", json=body, headers={"Idempotency-Key": "k-3"})
            for _ in range(5)
        )
    )
    assert len({r.json()["id"] for r in same}) == 1
    ids = [r.command_id for r in await requests_on_stream(nats_url)]
    assert sorted(ids) == sorted({first.json()["id"], other.json()["id"], same[0].json()["id"]})


def test_routes_declare_permission_and_operation_id() -> None:
    handlers = [commands.request_command, commands.get_command]
    assert [h.operation_id for h in handlers] == ["requestCommand", "getCommand"]
    for h in handlers:
        assert [getattr(g, "permission", None) for g in h.guards] == ["command-devices"]
    json.dumps([h.operation_id for h in handlers])


async def test_an_inferred_expiry_is_recorded_and_only_a_real_outcome_replaces_it(
    app_client: AsyncTestClient, nats_url: str, redis_clean: str, monkeypatch, caplog
) -> None:
    """GET records the expiry it infers from the silence after the deadline and the grace (it reads the
    same every time); the bus owner's real outcome arriving later (held up past the grace) replaces it —
    what happened wins — with one line saying so; a redelivery of that outcome changes nothing more."""
    monkeypatch.setattr(commands, "EXPIRY_GRACE", 0.2)
    await login(app_client, "greenUp")
    sent = []
    for device, seconds in (("ev1", 0.2), ("ev2a", 30)):
        body = {"device": device, "action": "charge", "value": "start", "deadline_seconds": seconds}
        sent.append((await app_client.post("/api/v1/commands", json=body)).json())
    late, marker = sent
    expired = await wait_status(app_client, late["id"], "expired")
    # the expiry is recorded, not only computed for the answer
    r = aioredis.from_url(redis_clean)
    try:
        stored = json.loads(await r.get(commands.record_key("demo", late["id"])))
    finally:
        await r.aclose()
    assert stored["status"] == "expired" and stored["finished_at"]

    broker = make_broker(nats_url, "fake-commands-service")
    await broker.connect()
    try:
        for command, device in ((late, "ev1"), (marker, "ev2a")):
            await publish_event(
                broker,
                CommandCompleted(
                    event_id=f"{command['id']}.outcome",
                    site="demo",
                    command_id=command["id"],
                    device=device,
                    action="charge",
                    value="start",
                    readback="start",
                ),
            )
        # the consumer handles the outcomes in order: once the marker's is recorded, the late one was seen
        await wait_status(app_client, marker["id"], "completed")
    finally:
        await broker.stop()
    assert expired["error"] == commands.NO_OUTCOME
    after = (await app_client.get(f"/api/v1/commands/{late['id']}")).json()
    assert (after["status"], after["readback"], after["error"]) == ("completed", "start", None)
    replaced = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and late["id"] in r.getMessage()
    ]
    assert len(replaced) == 1 and "replaces the expiry" in replaced[0], replaced
    # a real expiry decided by the bus owner is not replaced by a contradicting outcome
    r = aioredis.from_url(redis_clean)
    try:
        decided = await commands.apply_outcome(
            r,
            "demo",
            CommandExpired(
                event_id=f"{marker['id']}.x",
                site="demo",
                command_id="c-real",
                device="ev2a",
                action="charge",
                value="start",
                deadline=commands.utcnow(),
                error="past its deadline",
            ),
        )
        again = await commands.apply_outcome(
            r,
            "demo",
            CommandCompleted(
                event_id=f"{marker['id']}.y",
                site="demo",
                command_id="c-real",
                device="ev2a",
                action="charge",
                value="start",
                readback="start",
            ),
        )
    finally:
        await r.aclose()
    assert decided.status == again.status == "expired"


async def test_the_first_outcome_sticks_against_a_racing_expiry(redis_clean: str) -> None:
    """apply_outcome and the expiry decide on the same record at once: whichever is stored first stands."""
    r = aioredis.from_url(redis_clean)
    try:
        now = datetime.now(tz=commands.utcnow().tzinfo)
        record = commands.CommandStatus(
            id="c1", status="requested", device="ev1", action="charge", value="start",
            requested_at=now - timedelta(seconds=120), deadline=now - timedelta(seconds=90),
        )  # fmt: skip
        await r.set(commands.record_key("demo", "c1"), record.model_dump_json())
        outcome = CommandCompleted(
            site="demo", command_id="c1", device="ev1", action="charge", value="start", readback="start"
        )
        results = await asyncio.gather(
            commands.apply_outcome(r, "demo", outcome), commands.expire_record(r, "demo", record)
        )
        stored = json.loads(await r.get(commands.record_key("demo", "c1")))
        assert results[0].status == results[1].status == stored["status"]
    finally:
        await r.aclose()
