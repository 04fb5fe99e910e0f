"""The AsyncAPI document: generated from the catalog, one channel per topic, one message per event version,
every payload the envelope's JSON Schema; the committed copy is the generated one; the gateway serves it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from shared.events import analytics, batch, identity, migration, records, screening
from shared.events.catalog import CATALOG, asyncapi_document, asyncapi_json
from shared.events.records import RECORDS_TOPIC
from shared.events.topics import Topic

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
CONTRACT_MODULES = (screening, identity, records, batch, analytics, migration)


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + \
            [r for value in node.values() for r in references(value)]
    if isinstance(node, list):
        return [r for value in node for r in references(value)]
    return []


def declared_kinds() -> set[tuple[str, int]]:
    """Every ``(event type, version)`` constant of the contract modules."""
    return {value for module in CONTRACT_MODULES for name, value in vars(module).items()
            if name.isupper() and isinstance(value, tuple) and len(value) == 2
            and isinstance(value[0], str) and isinstance(value[1], int)}


def test_every_topic_has_a_catalog_entry() -> None:
    assert {channel.topic for channel in CATALOG} == {t.value for t in Topic} | {RECORDS_TOPIC}
    assert len(CATALOG) == len({channel.topic for channel in CATALOG})


def test_every_event_type_of_the_contract_modules_is_in_the_catalog() -> None:
    catalogued = [(kind.event_type, kind.version) for channel in CATALOG for kind in channel.events]
    assert set(catalogued) == declared_kinds()
    assert len(catalogued) == len(set(catalogued)), "an event version is published on one topic"


def test_the_document_has_a_channel_per_topic_and_a_message_per_event_version() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    assert {c["address"] for c in document["channels"].values()} == {channel.topic for channel in CATALOG}
    messages = document["components"]["messages"]
    versions = {(m["name"], int(m["headers"]["properties"]["event_version"]["const"]))
                for m in messages.values()}
    assert versions == declared_kinds()
    for operation in document["operations"].values():
        assert operation["action"] == "send"


def test_every_reference_in_the_document_resolves() -> None:
    document = asyncapi_document()
    refs = references(document)
    assert refs
    for ref in refs:
        assert isinstance(resolve(document, ref), dict), ref


@pytest.mark.parametrize("channel", CATALOG, ids=lambda c: c.topic)
def test_each_message_payload_is_the_json_schema_of_the_envelope_with_its_payload(channel: Any) -> None:
    document = asyncapi_document()
    for kind in channel.events:
        message = document["components"]["messages"][kind.message_id]
        envelope_ref, pinned = message["payload"]["allOf"]
        envelope = resolve(document, envelope_ref["$ref"])
        assert envelope["type"] == "object"
        assert {"event_id", "event_type", "event_version", "payload"} <= set(envelope["required"])
        payload = resolve(document, envelope["properties"]["payload"]["$ref"])
        assert payload["type"] == "object"
        assert set(payload["properties"]) == set(payload_fields(kind.payload))
        assert pinned["properties"] == {"event_type": {"const": kind.event_type},
                                        "event_version": {"const": kind.version}}


def payload_fields(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == asyncapi_json(), \
        "regenerate it: uv run python -m shared.events.catalog docs/asyncapi.json"


async def test_the_gateway_serves_the_asyncapi_document_to_signed_in_users(
    gateway: httpx.AsyncClient, lab: dict[str, str],
) -> None:
    assert (await gateway.get("/api/events/asyncapi.json")).status_code == 401
    response = await gateway.get("/api/events/asyncapi.json", headers=lab)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert json.loads(response.text) == asyncapi_document()
