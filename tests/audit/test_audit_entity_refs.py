"""Which identifiers of an event the ledger indexes for the entity filter (pure)."""

from __future__ import annotations

from typing import Any

from audit.domain import entity_refs, may_hold_digested_fields
from audit.ledger import canonical_json


def refs(event: Any) -> set[str]:
    return set(entity_refs(canonical_json(event)))


def test_ids_at_any_depth_are_indexed_but_not_the_tenant() -> None:
    event = {
        "event_id": "e1",
        "tenant_id": "t1",
        "correlation_id": "c1",
        "payload": {"screening_id": "s1", "patient": {"external_id": "P-0001"}, "items": [{"id": "i1"}]},
    }
    assert refs(event) == {"e1", "c1", "s1", "P-0001", "i1"}


def test_lists_of_ids_are_indexed() -> None:
    assert refs({"user_ids": ["u1", "u2"], "other": ["x"]}) == {"u1", "u2"}


def test_free_text_and_non_id_fields_are_not_indexed() -> None:
    event = {
        "name_ciphertext": {"sha256": "ab"},
        "note": "x",
        "hidden": 'a "b_id":"c" d',
        "payload": {"label_id": "has space", "n_id": 7, "x_id": "a" * 129, "idea": "no"},
    }
    assert refs(event) == set()


def test_a_repeated_id_is_indexed_once() -> None:
    assert entity_refs(canonical_json({"a_id": "same", "b": {"c_id": "same"}})) == ["same"]


def test_only_messages_that_could_hold_a_ciphertext_field_are_walked() -> None:
    assert may_hold_digested_fields(b'{"patient": {"name_ciphertext": "gAAA"}}')
    assert may_hold_digested_fields(b'{"name\\u005fciphertext": "gAAA"}')
    assert not may_hold_digested_fields(b'{"payload": {"screening_id": "s1"}}')
