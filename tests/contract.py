"""The committed AsyncAPI document as a validator: a message's payload and headers against the schemas of the
channel its subject belongs to (jsonschema-rs, JSON Schema draft 7 with formats asserted)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "asyncapi.json"


@cache
def document() -> dict[str, Any]:
    return json.loads(DOCUMENT.read_text(encoding="utf-8"))


@cache
def validator(pointer: str) -> jsonschema_rs.Draft7Validator:
    """A validator of the schema at ``pointer`` (``#/components/…``), its references resolved in the document."""
    return jsonschema_rs.Draft7Validator(
        {"$ref": pointer, "components": document()["components"]}, validate_formats=True
    )


def channel_of(subject: str) -> tuple[str, dict[str, Any]]:
    """The channel whose address (parameters as one token each) matches ``subject``."""
    for name, channel in document()["channels"].items():
        address = channel.get("address")
        if address and re.fullmatch(re.sub(r"\\\{[a-z]+\\\}", r"[^.]+", re.escape(address)), subject):
            return name, channel
    raise AssertionError(f"no channel of the AsyncAPI document for {subject!r}")


def message_of(channel: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (ref,) = [m["$ref"] for m in channel["messages"].values()]
    name = ref.rsplit("/", 1)[1]
    return name, document()["components"]["messages"][name]


def problems(subject: str, data: bytes, headers: dict[str, str] | None = None) -> list[str]:
    """What is wrong with a message by the document ([] when it is valid): its payload against the
    message's schema, its headers against the message's headers schema."""
    _, channel = channel_of(subject)
    name, message = message_of(channel)
    try:
        payload = json.loads(data)
    except ValueError as exc:
        return [f"payload is not JSON: {exc}"]
    out = [f"{name}: {e.message}" for e in validator(message["payload"]["$ref"]).iter_errors(payload)]
    if headers is not None and "headers" in message:
        headers_schema = jsonschema_rs.Draft7Validator(message["headers"])
        out += [f"{name} headers: {e.message}" for e in headers_schema.iter_errors(dict(headers))]
    return out
