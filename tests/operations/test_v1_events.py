"""The ledger event of a migrated record (clinomic_ops.v1.writer.event_of): deterministic, in the organisation's
chain, and free of PHI (no name, no ciphertext, no patient identifier of v1)."""

from __future__ import annotations

import uuid

from clinomic_ops.v1 import mapping
from clinomic_ops.v1.run import v1_decryptor
from clinomic_ops.v1.writer import event_of
from shared.events import Topic
from shared.events.catalog import CATALOG
from tests.operations.v1_fixtures import V1Data


def planned(collection: str) -> tuple[V1Data, list[mapping.Planned]]:
    data = V1Data()
    plan = mapping.plan({c: data.collections[c] for c in mapping.V1_COLLECTIONS}, v1_decryptor([data.key]))
    return data, plan.records[collection]


def test_a_patients_event_carries_neither_its_name_nor_its_v1_id() -> None:
    data, patients = planned("patients")
    patient = next(p for p in patients if p.v1_id == "PID-0001")
    body = event_of(patient, uuid.uuid4()).model_dump_json()
    assert "PID-0001" not in body and "Jane" not in body and mapping.FERNET_PREFIX not in body
    assert '"v1_id":null' in body and str(patient.id) in body


def test_a_labs_event_names_its_v1_code_and_organisation() -> None:
    data, labs = planned("labs")
    payload = event_of(labs[0], uuid.uuid4()).payload
    assert (payload.v1_id, payload.v1_org_id) == (f"LAB-{data.suffix}", data.org_a)


def test_the_event_id_is_the_same_on_every_run_and_the_tenant_is_the_organisation() -> None:
    _, screenings = planned("screenings")
    first, second = event_of(screenings[0], uuid.uuid4()), event_of(screenings[0], uuid.uuid4())
    assert first.event_id == second.event_id and first.tenant_id == screenings[0].org_id


def test_the_migration_topic_is_catalogued_for_the_audit_ledger() -> None:
    [channel] = [c for c in CATALOG if c.topic == Topic.MIGRATION]
    assert channel.consumers == ("audit",) and [k.event_type for k in channel.events] == ["RecordMigrated"]
