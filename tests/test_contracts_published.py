"""Published contracts: the committed AsyncAPI document matches the code (drift check), says what an integrator
may publish and read, and its schemas accept exactly what the intake accepts."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ews_contracts.catalogue import EVENTS, catalogue_json
from ews_contracts.events import AUTH_OPERATIONS, POLLER_OPERATIONS, DeviceStatusChanged, ReadingTaken
from ews_contracts.hub import hub_stream_name
from ews_contracts.intake import CAUSES, SUPPORTED_SCHEMA_VERSIONS, Declarations, Intake, Rejected
from ews_contracts.quantities import Quantity, unit_of
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import load_site
from ews_contracts.streamnames import BOX, streams_for
from ews_contracts.streams import ALL_STREAMS, DEAD_LETTER
from ews_contracts.subjects import auth_rpc

from tests.contract import document, problems

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "asyncapi.json"
ENVELOPE = ("event_id", "site", "occurred_at", "schema_version")


def test_committed_asyncapi_is_up_to_date():
    assert COMMITTED.read_text(encoding="utf-8") == catalogue_json(), (
        "docs/asyncapi.json drifted from the code: run `.venv/bin/ews asyncapi` and commit it"
    )


def test_every_event_is_in_the_catalogue_with_its_envelope_required():
    doc = document()
    schemas = doc["components"]["schemas"]
    for model in EVENTS:
        assert model.__name__ in doc["channels"]
        schema = schemas[model.__name__]
        for field in ENVELOPE:
            assert field in schema["properties"] and field in schema["required"], (model.__name__, field)
        assert schema["properties"]["schema_version"]["enum"] == list(SUPPORTED_SCHEMA_VERSIONS)
        message = doc["components"]["messages"][model.__name__]
        assert "Nats-Msg-Id" in message["headers"]["properties"]


def test_outsiders_may_publish_readings_and_only_read_the_rest():
    doc = document()
    open_ops = {k: v for k, v in doc["operations"].items() if v["x-ews-access"] == "open"}
    assert list(open_ops) == ["publishReadingTaken"] and open_ops["publishReadingTaken"]["action"] == "send"
    for name, operation in doc["operations"].items():
        assert operation["x-ews-access"] in ("open", "read", "internal"), name
        if operation["x-ews-access"] == "read":
            assert operation["action"] == "receive", name
    status = doc["operations"]["receiveDeviceStatusChanged"]
    assert "poller only" in status["description"] and "publishDeviceStatusChanged" not in doc["operations"]
    assert doc["channels"]["DeviceStatusChanged"]["address"] == "ews.{site}.status.{device}"
    assert "POST /api/v1/commands" in doc["operations"]["receiveCommandRequested"]["description"]


def test_streams_dedupe_windows_and_the_dead_letter_channel_are_machine_readable():
    doc = document()
    assert [s["name"] for s in doc["x-ews-streams"]] == [s.name for s in ALL_STREAMS]
    for model in EVENTS:
        stream = doc["channels"][model.__name__]["x-ews-stream"]
        assert stream["duplicate_window_seconds"] > 0 and stream["retention"] == "limits", model.__name__
    dead = doc["channels"]["MessageRejected"]
    assert dead["address"] == "ews.{site}.dead-letter.{kind}"
    assert dead["x-ews-stream"]["name"] == DEAD_LETTER.name == doc["x-ews-dead-letter"]["stream"]
    assert dead["x-ews-stream"]["max_age_seconds"] == 30 * 86_400 and dead["x-ews-stream"]["max_bytes"] > 0
    assert set(doc["x-ews-dead-letter"]["causes"]) == set(CAUSES)
    assert set(doc["components"]["schemas"]["MessageRejected"]["properties"]["cause"]["enum"]) == set(CAUSES)
    assert (
        doc["x-ews-schema-versions"]["supported"] == [1]
        and doc["x-ews-schema-versions"]["overlap_months"] == 12
    )
    assert "schema_version policy" in doc["info"]["description"]


def test_servers_describe_a_single_box_and_a_hub():
    servers = document()["servers"]
    assert set(servers) == {"single-box", "hub"}
    assert all(s["protocol"] == "nats" and s["host"].endswith(":4222") for s in servers.values())
    assert "7422" in servers["hub"]["description"] and "leaf" in servers["hub"]["description"]


def test_quantities_are_an_enumeration_with_units():
    quantity = document()["components"]["schemas"]["Quantity"]
    assert quantity["enum"] == [str(q) for q in Quantity]
    assert (
        quantity["x-ews-units"]["energy_active_import"] == "Wh"
        and quantity["x-ews-units"]["water_volume"] == "dm³"
    )
    assert all(quantity["x-ews-units"][str(q)] == unit_of(q) for q in Quantity)
    values = document()["components"]["schemas"]["ReadingTaken"]["properties"]["values"]
    assert values["propertyNames"] == {"$ref": "#/components/schemas/Quantity"}


def test_request_reply_subjects_are_those_the_services_answer():
    from ews_auth.service import AuthService
    from ews_contracts.settings import Settings
    from faststream.nats import NatsBroker

    doc = document()
    settings = Settings()
    service = AuthService(settings, redis=object())
    broker = NatsBroker()
    service.attach(broker)
    answered = {sub.subject.broker_address for sub in broker.subscribers}
    assert answered == {auth_rpc(settings.site.site, op) for op in AUTH_OPERATIONS}
    poller_rpc_source = (ROOT / "services/poller/src/ews_poller/rpc.py").read_text()
    assert set(re.findall(r'poller_rpc\(poller\.site\.site, "([a-z-]+)"\)', poller_rpc_source)) == set(
        POLLER_OPERATIONS
    )
    for service_name, table in (("auth", AUTH_OPERATIONS), ("poller", POLLER_OPERATIONS)):
        for op, (request, reply) in table.items():
            channel = "".join(p.capitalize() for p in [service_name, *op.split("-")])
            assert doc["channels"][channel]["address"] == f"ews.{{site}}.rpc-{service_name}.{op}"
            operation = doc["operations"][f"request{channel}"]
            assert operation["x-ews-access"] == "internal" and operation["reply"]["messages"] == [
                {"$ref": f"#/channels/{channel}Reply/messages/{reply.__name__}"}
            ]
            assert request.__name__ in doc["components"]["schemas"]


T = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def reading(**changes) -> dict:
    data = ReadingTaken(
        event_id="demo.m1.1777888800000",
        site="demo",
        device="m1",
        profile="multifunction-meter-412045",
        occurred_at=T,
        values={"energy_active_import": 1234.5, "power_active": 500},
    ).model_dump(mode="json")
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return data


SAMPLES = [
    ("good", reading()),
    ("integers", reading(values={"energy_active_import": 12})),
    ("no states", reading(states=...)),
    ("value as a string", reading(values={"energy_active_import": "12"})),
    ("boolean value", reading(values={"energy_active_import": True})),
    ("schema_version 2", reading(schema_version=2)),
    ("schema_version as a string", reading(schema_version="1")),
    ("no event_id", reading(event_id=...)),
    ("empty event_id", reading(event_id="")),
    ("no occurred_at", reading(occurred_at=...)),
    ("no offset", reading(occurred_at="2026-05-04T10:00:00")),
    ("epoch seconds", reading(occurred_at=1777888800)),
    ("unknown field", reading(note="x")),
    ("unknown quantity", reading(values={"energy": 1.0})),
    ("not an object", [1, 2]),
]


@pytest.mark.parametrize(("what", "data"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_the_document_accepts_exactly_what_the_intake_accepts(what: str, data):
    """For what a payload alone decides (the device and profile need the site's configuration)."""
    intake = Intake("demo", Declarations.of(load_site(BUNDLED_DEMO_SITE)))
    raw = json.dumps(data).encode()
    try:
        intake.check("ews.demo.reading.m1", raw)
        accepted = True
    except Rejected:
        accepted = False
    assert (problems("ews.demo.reading.m1", raw) == []) == accepted, what


def test_the_pollers_status_events_validate_against_the_document():
    event = DeviceStatusChanged(
        site="demo", device="ev1", state="comm-error", previous=None, reason="timeout"
    )
    assert problems(event.subject, event.model_dump_json().encode(), event.headers()) == []
    assert problems(event.subject, event.model_dump_json().encode(), {"Ews-Producer": "me"}) != []


def test_no_description_points_at_python_code():
    """An integrator has the document, not the code: units and causes are named by the document's own parts."""
    text = COMMITTED.read_text(encoding="utf-8")
    assert "ews_contracts" not in text and ".py" not in text
    reading = document()["components"]["schemas"]["ReadingTaken"]
    assert "`Quantity`" in reading["description"] and "x-ews-units" in reading["description"]


def test_the_status_header_is_not_a_security_boundary():
    status = document()["operations"]["receiveDeviceStatusChanged"]["description"]
    assert "not a security boundary" in status and "NATS" in status and "ews.*.status.*" in status


def test_hub_streams_are_named_per_site_and_readings_are_published_at_the_edge():
    doc = document()
    at_hub = streams_for("demo", hub=True)
    for spec, described in zip(ALL_STREAMS, doc["x-ews-streams"], strict=True):
        assert described["name"] == spec.name == BOX.of(spec)
        assert described["hub_name"].format(site="demo") == at_hub.of(spec) == hub_stream_name(spec, "demo")
    for model in EVENTS:
        stream = doc["channels"][model.__name__]["x-ews-stream"]
        assert stream["hub_name"] == f"{stream['name']}_{{site}}", model.__name__
    hub = doc["x-ews-hub"]
    assert hub["streams"] == {spec.name: hub_stream_name(spec, "{site}") for spec in ALL_STREAMS}
    assert hub["aggregator_durable"].format(site="demo") == at_hub.aggregator_durable
    assert hub["publish"] == "edge"
    described = doc["servers"]["hub"]["description"]
    for spec in ALL_STREAMS:
        assert f"{spec.name}_<site>" in described
    assert "at its edge" in described and "ews.hub.audit.*" in described
    assert "at its edge" in doc["operations"]["publishReadingTaken"]["description"]


async def test_the_hubs_own_streams_are_those_it_declares(nats_url: str):
    """``ensure_hub_streams`` on a real nats-server: the streams the hub's services create are the document's."""
    import nats
    from ews_contracts.bus import ensure_hub_streams

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_hub_streams(js)
        created = {info.config.name: info.config.subjects for info in await js.streams_info()}
    finally:
        await nc.close()
    assert created == {s["name"]: s["subjects"] for s in document()["x-ews-hub"]["own_streams"]}


def test_the_hubs_lease_bucket_is_documented_as_internal():
    from ews_aggregator import group, lease

    (bucket,) = document()["x-ews-kv-buckets"]
    assert bucket["bucket"] == lease.BUCKET and bucket["stream"] == f"KV_{lease.BUCKET}"
    assert bucket["subjects"] == [f"$KV.{lease.BUCKET}.>"]
    assert bucket["keys"] == [f"{group.SITE_KEY}<site>", f"{group.MEMBER_KEY}<member>"]
    assert bucket["ttl_seconds"] == group.LEASE_TTL
    assert bucket["x-ews-access"] == "internal" and bucket["deployment"] == "hub"


def test_the_aggregators_request_reply_subjects_are_those_it_answers():
    """The subject the aggregator subscribes to and the operations its handler answers are the document's."""
    import asyncio

    from ews_aggregator.service import AggregatorService
    from ews_contracts.rebuild import RPC_QUEUE, RebuildStatus, aggregator_rpc

    doc = document()
    documented = {
        channel["title"].removeprefix("rpc-aggregator."): channel
        for channel in doc["channels"].values()
        if channel["title"].startswith("rpc-aggregator.") and channel.get("address")
    }
    assert set(documented) == {"rebuild", "status"}
    for op, channel in documented.items():
        assert channel["address"] == aggregator_rpc("{site}", op)
        assert RPC_QUEUE in channel["description"] and "hub" in channel["description"]
    source = (ROOT / "services/aggregator/src/ews_aggregator/service.py").read_text()
    assert 'self.nc.subscribe(aggregator_rpc(self.site_id, "*"), queue=RPC_QUEUE' in source

    class Request:  # the one thing of a nats-py Msg the handler uses
        def __init__(self, subject: str) -> None:
            self.subject, self.reply, self.answer = subject, "_INBOX.x", None

        async def respond(self, data: bytes) -> None:
            self.answer = json.loads(data)

    async def no_marker():
        return None

    service = AggregatorService.__new__(AggregatorService)
    service.status = RebuildStatus(state="idle")
    service.marker = no_marker
    for op in [*documented, "unknown-op"]:
        request = Request(aggregator_rpc("demo", op))
        asyncio.run(service.on_request(request))
        if op in documented:
            assert request.answer["state"] == "idle", op  # answered, not "unknown operation"
            operation = doc["operations"][f"requestAggregator{op.capitalize()}"]
            assert operation["x-ews-access"] == "internal"
            (reply,) = operation["reply"]["messages"]
            name = reply["$ref"].rsplit("/", 1)[1]
            assert problems_of_schema(name, request.answer) == [], op
        else:
            assert "unknown operation" in request.answer["error"]


def problems_of_schema(name: str, payload) -> list[str]:
    from tests.contract import validator

    return [e.message for e in validator(f"#/components/schemas/{name}").iter_errors(payload)]
