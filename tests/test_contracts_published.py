"""Published contracts: the committed AsyncAPI catalogue matches the event models (drift check)."""

import json
from pathlib import Path

from ews_contracts.catalogue import EVENTS, catalogue_json

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "asyncapi.json"


def test_committed_asyncapi_is_up_to_date():
    assert COMMITTED.read_text(encoding="utf-8") == catalogue_json(), (
        "docs/asyncapi.json drifted from the event models: run `.venv/bin/ews asyncapi` and commit it"
    )


def test_every_event_is_in_the_catalogue_with_its_envelope():
    doc = json.loads(COMMITTED.read_text(encoding="utf-8"))
    schemas = doc["components"]["schemas"]
    for model in EVENTS:
        assert model.__name__ in doc["channels"]
        schema = schemas[model.__name__]
        for field in ("event_id", "site", "occurred_at", "schema_version"):
            assert field in schema["properties"], (model.__name__, field)
