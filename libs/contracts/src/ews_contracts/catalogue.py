"""The NATS contract as an AsyncAPI 3 document: ``ews asyncapi`` writes docs/asyncapi.json, and a test (and
``ews asyncapi --check``) fails when the committed file drifts from the code.

FastStream generates the payload schemas from the pydantic models (one publisher per message, as the
services declare theirs); this module assembles the rest from the code that decides the behaviour, so
the document says what the product does:

- channels and their parameters from ``subjects`` (events ``ews.<site>.<kind>.<device>``, request/reply
  ``ews.<site>.rpc-auth.<op>``, ``ews.<site>.rpc-poller.<op>`` and ``ews.<site>.rpc-aggregator.<op>`` with
  ``events.AUTH_OPERATIONS``, ``events.POLLER_OPERATIONS`` and ``AGGREGATOR_OPERATIONS``);
- streams (name, subjects, retention, limits, dedupe window) from ``streams``, as ``x-ews-stream`` on each
  channel and ``x-ews-streams``, with their names at a hub from ``streamnames`` (``x-ews-hub``, and the
  ``hub`` server); the ``Nats-Msg-Id`` (and ``Ews-Producer``) headers in each message;
- the hub's lease bucket (``x-ews-kv-buckets``, internal; its constants live in the aggregator service,
  which this library does not import: tests/test_contracts_published.py compares them);
- who may publish what from ``intake`` (``OPEN_TO_OUTSIDERS``, its causes, ``SUPPORTED_SCHEMA_VERSIONS``):
  operations are written **from an integrator's point of view** (AsyncAPI 3: ``send`` = you may publish,
  ``receive`` = you may subscribe), with ``x-ews-access`` = ``open`` / ``read`` / ``internal``;
- the envelope every message carries made ``required``, ``schema_version`` pinned to the supported
  versions, and reading values keyed by the ``Quantity`` enumeration with its units (``quantities``).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel, Field

from .events import (
    AUTH_OPERATIONS,
    POLLER,
    POLLER_OPERATIONS,
    PRODUCER_HEADER,
    AuditRecorded,
    CommandCompleted,
    CommandExpired,
    CommandFailed,
    CommandRequested,
    DeviceStatusChanged,
    Event,
    MessageRejected,
    ReadingTaken,
    SiteConfigured,
)
from .hub import HUB_DOMAIN, edge_domain
from .intake import (
    CAUSE_DESCRIPTIONS,
    ID_MAX,
    OPEN_TO_OUTSIDERS,
    PAYLOAD_LIMIT,
    STATUS_FROM_OUTSIDE,
    SUPPORTED_SCHEMA_VERSIONS,
)
from .quantities import COUNTERS, Quantity, unit_of
from .rebuild import RPC_QUEUE, RebuildStatus, aggregator_rpc
from .site import RESERVED_SITE_ID
from .streamnames import BOX, StreamNames
from .streams import ALL_STREAMS, AUDIT, DEAD_LETTER, READINGS, StreamSpec, stream_for
from .subjects import PREFIX, Kind

EVENTS: tuple[type[Event], ...] = (
    ReadingTaken,
    DeviceStatusChanged,
    CommandRequested,
    CommandCompleted,
    CommandFailed,
    CommandExpired,
    AuditRecorded,
    SiteConfigured,
    MessageRejected,
)
LAST_TOKEN = {AuditRecorded: "role", SiteConfigured: None, MessageRejected: "kind"}  # default: device
ENVELOPE = ("event_id", "site", "occurred_at", "schema_version")
REPLACED_BY = 12  # months a superseded schema version is still published beside the new one
SITE_PARAMETER = {"description": "Site id (`site:` of the site file), e.g. `demo`."}
PARAMETERS = {
    "device": {"description": "Device id of the site's configuration, e.g. `m1`."},
    "role": {
        "description": "Role of the audited action: administrator, greenUp, installer, user or unknown."
    },
    "kind": {"description": "Kind token of the rejected message's subject: `reading` or `status`."},
}

HUB = StreamNames("{site}", hub=True)  # a site's streams at the hub, the site id left as a parameter
HUB_OWN_STREAMS: tuple[StreamSpec, ...] = (AUDIT,)  # what ``bus.ensure_hub_streams`` declares, for site "hub"


class AggregatorRebuildRequest(BaseModel):
    """Rebuild now: sent by a restore once it has republished the readings (``ews restore``,
    ``POST /api/v1/restore``). The marker in place of the aggregator's durable consumer says what to
    rebuild; the aggregator answers at once and rebuilds in the background."""

    restore: str = Field(default="", description="Id of the restore (informational).")


class AggregatorStatusRequest(BaseModel):
    """The aggregator's rebuild progress (an empty object)."""


AGGREGATOR_OPERATIONS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "rebuild": (AggregatorRebuildRequest, RebuildStatus),
    "status": (AggregatorStatusRequest, RebuildStatus),
}
"""Answered by the aggregator of a box or an edge on ``rebuild.aggregator_rpc(site, operation)``."""

# The hub's aggregator group (services/aggregator: lease.BUCKET, group.SITE_KEY, MEMBER_KEY, LEASE_TTL)
LEASE_BUCKET = "ews-hub-aggregators"
LEASE_KEYS = ("site.<site>", "member.<member>")
LEASE_TTL = 15.0

# who produces and who consumes each kind inside the product (documentation)
PRODUCT = {
    Kind.READING: ("poller; gateway-api (CSV import); simulator (demo history); integrators", "aggregator"),
    Kind.STATUS: ("poller", "aggregator (checks it; the live state is kept by the poller)"),
    Kind.COMMAND_REQUESTED: ("gateway-api (POST /api/v1/commands)", "commands"),
    Kind.COMMAND_COMPLETED: ("commands", "gateway-api"),
    Kind.COMMAND_FAILED: ("commands", "gateway-api"),
    Kind.COMMAND_EXPIRED: ("commands", "gateway-api"),
    Kind.AUDIT: ("auth; gateway-api (backup, restore, readings imported)", "none (the audit log)"),
    Kind.SITE_CONFIGURED: (
        "gateway-api (Configuration, PUT /api/v1/site/config); ews site import; start-up "
        "(the site file seeds version 1)",
        "every service",
    ),
    Kind.DEAD_LETTER: ("aggregator", "none (for people and integrators)"),
}
READ_NOTES = {
    Kind.STATUS: f"Produced by the poller only (header `{PRODUCER_HEADER}: {POLLER}`): one you publish is "
    f'not accepted, it is dead-lettered with the reason "{STATUS_FROM_OUTSIDE}". The header is not a security '
    f"boundary: anyone allowed to publish on `{PREFIX}.*.{Kind.STATUS}.*` can set it. Who may publish there "
    "is decided by NATS permissions: give the poller's user alone publish rights on "
    f"`{PREFIX}.*.{Kind.STATUS}.*`, and integrators publish rights on `{PREFIX}.*.{Kind.READING}.*` only.",
    Kind.COMMAND_REQUESTED: "Read only: command devices with `POST /api/v1/commands` (roles, audit). The commands "
    "service executes what arrives on this subject without a role check: deny integrators the right to "
    "publish here (NATS authorization).",
    Kind.SITE_CONFIGURED: "Read only: change the configuration with `PUT /api/v1/site/config`.",
    Kind.DEAD_LETTER: "What the product did not accept, kept 30 days: the reason, the cause and the original "
    "subject, headers and payload (and its sequence in its stream).",
}

DESCRIPTION = """\
The NATS contract of an energy web server site, for integrators: what you may publish, what you may read,
and what happens to a message the product does not accept. Operations are written from **your** point of
view (AsyncAPI 3): `send` = you may publish it, `receive` = you may subscribe to it. `x-ews-access` says the
same per operation: `open` (anyone may publish, checked strictly), `read` (subscribe only), `internal`
(request/reply between the product's services, listed for NATS permissions: do not call them).

**Subjects** are `ews.<site>.<kind>.<device>` (audit events: `.<role>`; configuration: `.config`). Every
event carries `event_id` (also sent as the `Nats-Msg-Id` header: JetStream stores one message per id
within the stream's dedupe window), `site`, `occurred_at` (UTC, RFC 3339 with its offset) and
`schema_version`. Events are kept in JetStream streams (`x-ews-streams`, and `x-ews-stream` on each
channel: name, subjects, retention, limits, dedupe window).

**Publishing readings** (`ews.<site>.reading.<device>`, stream EWS_READINGS; in a multi-site deployment at
the site's edge, never at the hub: see the `hub` server): publish with JetStream (the
reading is stored once the publish is acknowledged) and a deterministic `event_id` sent as `Nats-Msg-Id`
(e.g. `<site>.<device>.<epoch ms>`), so a retry is dropped as a duplicate. Each reading is checked
strictly: every envelope field present, the subject's site and device equal to the payload's, a supported
`schema_version`, exact JSON types (no number as a string, no unknown field), value names from the
`Quantity` enumeration in their fixed units (counters cumulative: the product computes the intervals),
a device of the site's configuration with its profile (`GET /api/v1/devices` gives both). A message that
fails is not stored: it is published to the dead-letter stream EWS_DEAD_LETTER on
`ews.<site>.dead-letter.<kind>` as a `MessageRejected` (cause, reason, original subject, headers and
payload), and the aggregator logs one line per cause (then a count a minute), never one per message. It
never stalls the stream: the next message is processed. `ews replay` applies the same rules and gives the
same figures, byte for byte.

**Consuming**: create your own durable consumer on the stream (named after your application, never
`aggregator`), filtered on the subjects you need (e.g. `ews.<site>.reading.*`), with explicit acks, and
ack after processing: it resumes where it stopped after a restart or an outage, within the stream's
retention (EWS_READINGS keeps everything; EWS_DEAD_LETTER 30 days). Delivery is at least once: dedupe by
`event_id`. Readings may arrive out of time order (late readings, imported history): order by
`occurred_at`. For a live view only, an ordered ephemeral consumer is enough. Tolerate fields you do not
know (see the version policy). At a hub the streams are named per site (`hub_name` of `x-ews-stream`, e.g.
EWS_READINGS_<site>): the same consumer, on the site's stream.

**schema_version policy**: an additive change (a new optional field, a new quantity, a new kind of event)
keeps the version; consumers must ignore what they do not know. A breaking change (a field removed,
renamed or retyped, a unit changed) gets a new version, published beside the old one — the same event in
both versions — for at least 12 months, and the product keeps accepting readings of the old version over
that period; `x-ews-schema-versions` lists the versions supported now. The schemas here are exact for the
current version (`additionalProperties: false` is what the product accepts from you).

**Access**: the product's NATS has no accounts by default; give integrators their own user with publish
rights on `ews.*.reading.*` only and subscribe rights on what they read (the `x-ews-access` of each
operation), and keep `internal` subjects and key-value buckets (`x-ews-kv-buckets`) to the product's
services. Headers such as `Ews-Producer` say who produced an event; they prove nothing: NATS permissions
decide who may publish on a subject.
"""


def _text(model: type[BaseModel]) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split())


def _schemas() -> dict[str, Any]:
    """The payload schemas, generated by FastStream from the models (one publisher per message)."""
    broker = NatsBroker("nats://127.0.0.1:4222")
    models: list[type[BaseModel]] = [*EVENTS]
    for operations in (AUTH_OPERATIONS, POLLER_OPERATIONS, AGGREGATOR_OPERATIONS):
        for request, reply in operations.values():
            models += [request, reply]
    for model in dict.fromkeys(models):  # once each (a reply may answer several operations)
        broker.publisher(f"schema.{model.__name__}", title=model.__name__, schema=model)
    spec = AsyncAPI(broker, schema_version="3.0.0").to_specification()
    schemas: dict[str, Any] = json.loads(spec.to_json())["components"]["schemas"]
    for model in EVENTS:
        schema = schemas[model.__name__]
        schema["required"] = [*ENVELOPE, *(f for f in schema.get("required", []) if f not in ENVELOPE)]
        properties = schema["properties"]
        properties["event_id"].update(minLength=1, maxLength=ID_MAX)
        version = properties["schema_version"]
        version.pop("default", None)
        version["enum"] = list(SUPPORTED_SCHEMA_VERSIONS)
    values = schemas[ReadingTaken.__name__]["properties"]["values"]
    values["propertyNames"] = {"$ref": "#/components/schemas/Quantity"}
    values["description"] = "Quantity -> value in the quantity's fixed unit (`Quantity`, `x-ews-units`)."
    schemas["Quantity"] = {
        "title": "Quantity",
        "type": "string",
        "description": "Every measured value is published under one of these names, in its fixed unit "
        "(`x-ews-units`; '' = no unit). Counters (`x-ews-counters`) are cumulative: the product turns "
        "their differences into energy and volume. Sign convention: import positive.",
        "enum": [str(q) for q in Quantity],
        "x-ews-units": {str(q): unit_of(q) for q in Quantity},
        "x-ews-counters": sorted(str(q) for q in COUNTERS) + ["pulse_count"],
    }
    return dict(sorted(schemas.items()))


def _stream(spec: StreamSpec) -> dict[str, Any]:
    return {
        "name": BOX.of(spec),
        "hub_name": HUB.of(spec),  # the hub's copy of the site's stream, sourced from its edge
        "subjects": spec.subjects,
        "description": spec.description,
        "storage": "file",
        "retention": "limits",
        "discard": "old",
        "max_age_seconds": spec.max_age,  # 0: kept forever
        "max_bytes": spec.max_bytes,  # -1: no limit
        "duplicate_window_seconds": spec.duplicate_window,
    }


def _headers(model: type[Event], spec: StreamSpec) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "Nats-Msg-Id": {
            "type": "string",
            "description": f"The event_id. JetStream stores one message per id within "
            f"{spec.duplicate_window:.0f} s ({spec.name}'s dedupe window): a retry is acknowledged as a "
            "duplicate and not stored again.",
        }
    }
    if model is DeviceStatusChanged:
        properties[PRODUCER_HEADER] = {
            "const": POLLER,
            "description": "The product service that produced the event: status events come from the poller. "
            "Not a proof of origin: NATS permissions decide who may publish on the subject.",
        }
    return {"type": "object", "properties": properties}


def _channel_id(model: type[BaseModel]) -> str:
    return model.__name__


def _event_channel(model: type[Event]) -> dict[str, Any]:
    spec = stream_for(model.KIND)
    last = LAST_TOKEN.get(model, "device")
    address = f"{PREFIX}.{{site}}.{model.KIND}." + (f"{{{last}}}" if last else "config")
    parameters = {"site": SITE_PARAMETER, **({last: PARAMETERS[last]} if last else {})}
    producers, consumers = PRODUCT[model.KIND]
    return {
        "address": address,
        "title": model.__name__,
        "description": f"{_text(model)} Stream {spec.name}.",
        "parameters": parameters,
        "messages": {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}},
        "x-ews-stream": _stream(spec),
        "x-ews-produced-by": producers,
        "x-ews-consumed-by": consumers,
    }


def _event_message(model: type[Event]) -> dict[str, Any]:
    return {
        "name": model.__name__,
        "title": model.__name__,
        "summary": _text(model).split(". ")[0].rstrip(".") + ".",
        "contentType": "application/json",
        "headers": _headers(model, stream_for(model.KIND)),
        "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
    }


def _reference(channel: str, message: str) -> dict[str, Any]:
    return {"$ref": f"#/channels/{channel}/messages/{message}"}


def _event_operations(model: type[Event]) -> dict[str, Any]:
    channel = _channel_id(model)
    messages = [_reference(channel, model.__name__)]
    out: dict[str, Any] = {}
    if model.KIND in OPEN_TO_OUTSIDERS:
        out[f"publish{model.__name__}"] = {
            "action": "send",
            "title": f"Publish a {model.__name__}",
            "summary": "Anyone may publish readings for a device of the site's configuration.",
            "description": "Checked strictly (see the document's description and `x-ews-dead-letter`): a "
            "reading that fails is not stored but dead-lettered with its reason. Publish through JetStream "
            "and wait for the acknowledgement; send the event_id as `Nats-Msg-Id`. In a multi-site "
            f"deployment publish a site's readings at its edge (the site's box, stream {READINGS.name}), "
            "never at the hub (`x-ews-hub`).",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": messages,
            "x-ews-access": "open",
            "x-ews-dead-letter": f"{PREFIX}.{{site}}.{Kind.DEAD_LETTER}.{model.KIND}",
        }
    out[f"receive{model.__name__}"] = {
        "action": "receive",
        "title": f"Read {model.__name__} events",
        "summary": READ_NOTES.get(model.KIND, "Subscribe only; the product publishes these.")
        .split(". ")[0]
        .rstrip(".")
        + ".",
        "description": READ_NOTES.get(model.KIND, "Subscribe only; the product publishes these.")
        + " Use a durable consumer of your own on the stream to resume after a restart.",
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": messages,
        "x-ews-access": "read",
    }
    return out


def _rpc_address(service: str, operation: str) -> str:
    if service == "aggregator":
        return aggregator_rpc("{site}", operation)
    return f"{PREFIX}.{{site}}.rpc-{service}.{operation}"


def _hub_name(spec: StreamSpec) -> str:
    """A site's stream at the hub, as the prose writes it (``EWS_READINGS_<site>``)."""
    return StreamNames("<site>", hub=True).of(spec)


def _hub_server() -> str:
    per_site = ", ".join(f"`{_hub_name(spec)}`" for spec in ALL_STREAMS)
    own = ", ".join(
        f"`{spec.name}` holding `{'`, `'.join(spec.subjects_of(RESERVED_SITE_ID))}`"
        for spec in HUB_OWN_STREAMS
    )
    return (
        "The hub of a multi-site deployment (`ews up --hub`; docker-compose.yml, deploy/nats/nats.conf): clients "
        f"on port 4222, JetStream domain `{HUB_DOMAIN}`; each site's box (an edge, JetStream domain "
        f"`{edge_domain('<site>')}`) joins as a leaf node on port 7422. **Streams are named per site** at the "
        f"hub: {per_site} (`hub_name` in `x-ews-stream`, `x-ews-hub`). Each sources the edge's stream of the "
        "same name without the suffix: its messages keep their subjects (and site token), so a consumer at the "
        "hub is the one of a box on the site's stream, e.g. a durable consumer on "
        f"`{_hub_name(READINGS)}` filtered on `{PREFIX}.<site>.{Kind.READING}.*`. The hub's own audit (its "
        f"roles' logins, code changes and refusals) is {own}. **Publishing**: a site's readings must be "
        "published at its edge (the site's box, its stream "
        f"`{READINGS.name}`), which checks them, dead-letters what it refuses (copied to "
        f"`{_hub_name(DEAD_LETTER)}`) and forwards the rest, also after a WAN outage. No stream at the hub "
        "stores a reading (the per-site streams only source the edges'): a JetStream publish made at the hub "
        "is stored by the edge only while its leaf link is up, and is refused (no stream answers) when it is "
        "not. Everything at the hub is read-only for integrators."
    )


def _hub() -> dict[str, Any]:
    return {
        "description": "A multi-site deployment's hub: its JetStream domain, the name of each site's stream "
        "there (sourced from the site's edge, JetStream domain `edge_jetstream_domain`), the hub's own "
        "streams, and where readings are published (`edge`: at the site's box, never at the hub).",
        "jetstream_domain": HUB_DOMAIN,
        "edge_jetstream_domain": edge_domain("{site}"),
        "streams": {spec.name: HUB.of(spec) for spec in ALL_STREAMS},
        "own_streams": [
            {
                "name": spec.name,
                "subjects": spec.subjects_of(RESERVED_SITE_ID),
                "description": spec.description,
            }
            for spec in HUB_OWN_STREAMS
        ],
        "aggregator_durable": HUB.aggregator_durable,
        "publish": "edge",
    }


def _kv_buckets() -> list[dict[str, Any]]:
    return [
        {
            "bucket": LEASE_BUCKET,
            "stream": f"KV_{LEASE_BUCKET}",
            "subjects": [f"$KV.{LEASE_BUCKET}.>"],
            "keys": list(LEASE_KEYS),
            "ttl_seconds": LEASE_TTL,
            "deployment": "hub",
            "description": "Leases of the hub's aggregator group: `site.<site>` names the member accounting the "
            "site, `member.<member>` counts the members; a key not renewed within `ttl_seconds` expires. "
            "Internal: keep it to the hub's aggregators (NATS permissions on its subjects and on the "
            "JetStream API).",
            "x-ews-access": "internal",
        }
    ]


def _rpc(
    service: str, operations: dict[str, tuple[type[BaseModel], type[BaseModel]]], served_by: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    channels: dict[str, Any] = {}
    operation_objects: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for operation, (request, reply) in operations.items():
        name = "".join(part.capitalize() for part in [service, *operation.split("-")])
        channels[name] = {
            "address": _rpc_address(service, operation),
            "title": f"rpc-{service}.{operation}",
            "description": f"Request/reply (core NATS, not persisted), answered by the {served_by}: "
            f"{request.__name__} -> {reply.__name__}. Internal to the product.",
            "parameters": {"site": SITE_PARAMETER},
            "messages": {request.__name__: {"$ref": f"#/components/messages/{request.__name__}"}},
        }
        channels[f"{name}Reply"] = {
            "address": None,
            "title": f"rpc-{service}.{operation} reply",
            "description": "The request's NATS reply subject (an inbox the requester subscribed to).",
            "messages": {reply.__name__: {"$ref": f"#/components/messages/{reply.__name__}"}},
        }
        operation_objects[f"request{name}"] = {
            "action": "send",
            "title": f"rpc-{service}.{operation}",
            "summary": f"Internal request/reply of the {served_by}; not for integrators.",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [_reference(name, request.__name__)],
            "reply": {
                "channel": {"$ref": f"#/channels/{name}Reply"},
                "messages": [_reference(f"{name}Reply", reply.__name__)],
            },
            "x-ews-access": "internal",
        }
        for model in (request, reply):
            messages[model.__name__] = {
                "name": model.__name__,
                "title": model.__name__,
                **({"summary": _text(model)} if _text(model) else {}),
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            }
    return channels, operation_objects, messages


def build_document(version: str = "1") -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for model in EVENTS:
        channels[_channel_id(model)] = _event_channel(model)
        operations.update(_event_operations(model))
        messages[model.__name__] = _event_message(model)
    for service, table, served_by in (
        ("auth", AUTH_OPERATIONS, "auth service (queue group auth)"),
        ("poller", POLLER_OPERATIONS, "bus owner (the poller)"),
        (
            "aggregator",
            AGGREGATOR_OPERATIONS,
            f"aggregator of a single box or an edge after a restore (queue group {RPC_QUEUE}; the hub's "
            "aggregators answer none)",
        ),
    ):
        more_channels, more_operations, more_messages = _rpc(service, table, served_by)
        channels.update(more_channels)
        operations.update(more_operations)
        messages.update(more_messages)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Energy web server: the NATS contract",
            "version": version,
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "single-box": {
                "host": "{box}:4222",
                "protocol": "nats",
                "description": "`ews up` / `make run`: everything on one box, nats-server with JetStream on "
                "disk. It listens on 127.0.0.1:4222 unless NATS_URL names another server: to let "
                "integrators in from the LAN, run nats-server on the box's address (with accounts) and "
                "point NATS_URL at it.",
                "variables": {"box": {"default": "127.0.0.1", "description": "The box's address."}},
            },
            "hub": {
                "host": "{hub}:4222",
                "protocol": "nats",
                "description": _hub_server(),
                "variables": {"hub": {"description": "The hub's address."}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": _schemas(), "messages": dict(sorted(messages.items()))},
        "x-ews-streams": [_stream(spec) for spec in ALL_STREAMS],
        "x-ews-hub": _hub(),
        "x-ews-kv-buckets": _kv_buckets(),
        "x-ews-schema-versions": {
            "supported": list(SUPPORTED_SCHEMA_VERSIONS),
            "additive_change": "keeps the version (consumers ignore unknown fields)",
            "breaking_change": "a new version, published beside the old one for at least "
            f"{REPLACED_BY} months",
            "overlap_months": REPLACED_BY,
        },
        "x-ews-dead-letter": {
            "stream": DEAD_LETTER.name,
            "subject": f"{PREFIX}.{{site}}.{Kind.DEAD_LETTER}.{{kind}}",
            "message": MessageRejected.__name__,
            "checked_streams": [READINGS.name],
            "payload_limit_bytes": PAYLOAD_LIMIT,
            "causes": CAUSE_DESCRIPTIONS,
        },
    }


def catalogue_json() -> str:
    return json.dumps(build_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
