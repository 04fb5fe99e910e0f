"""PHI at rest and in events: names and consent texts are stored as Fernet ciphertexts with their key id,
names also as a keyed blind index (exact-match search without decrypting); record events carry ids only;
every response that shows PHI, and every export, is itself an event."""

from __future__ import annotations

import csv
import io
import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from shared.crypto import key_id
from tests.records.conftest import Tenant
from tests.records.helpers import (
    classified,
    classify, consented_patient, create_doctor, create_lab, create_patient, eventually, ok, record_consent,
    record_event, topic_messages,
)


def _schema(org_id: str) -> str:
    return f"tenant_{uuid.UUID(org_id).hex}"


async def test_a_name_is_stored_as_a_ciphertext_with_the_newest_key_id_and_a_blind_index(
    gateway: httpx.AsyncClient, platform: Platform, engine: AsyncEngine, org_a: Tenant,
) -> None:
    patient = await create_patient(gateway, org_a.org.headers["lab"], name="Cipher Stored")
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            f"SELECT name_ciphertext, name_key_id, name_index FROM {_schema(org_a.org.id)}.patients WHERE id = :i"),
            {"i": patient["id"]})).one()
    newest = platform.env["MASTER_ENCRYPTION_KEY"].split(",")[0].strip()
    assert row[0].startswith("gAAAAA") and "Cipher" not in row[0]
    assert row[1] == key_id(newest.encode())
    assert len(row[2]) == 64 and "Cipher" not in row[2]


async def test_a_consent_text_is_stored_encrypted(gateway: httpx.AsyncClient, engine: AsyncEngine,
                                                  org_a: Tenant) -> None:
    patient = await consented_patient(gateway, org_a.org.headers["lab"])
    async with engine.connect() as conn:
        stored = await conn.scalar(text(
            f"SELECT text_ciphertext FROM {_schema(org_a.org.id)}.consents WHERE patient_id = :p"),
            {"p": patient["id"]})
    assert stored.startswith("gAAAAA") and "blood count" not in stored


async def test_search_by_name_matches_exactly_regardless_of_case_and_spacing(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    lab = org_a.org.headers["lab"]
    name = f"Sorcha Searchable {uuid.uuid4().hex[:6]}"
    patient = await create_patient(gateway, lab, name=name)

    async def search(query: str) -> list[str]:
        return [p["id"] for p in ok(await gateway.post("/api/patients/search", json={"name": query},
                                                       headers=lab))["items"]]

    assert await search(name) == [patient["id"]]
    assert await search("  " + name.upper().replace(" ", "   ")) == [patient["id"]]
    assert await search(name.rsplit(" ", 1)[0]) == []  # no partial matches: it is an exact-match index


async def test_the_same_name_has_a_different_blind_index_in_each_organisation(
    gateway: httpx.AsyncClient, engine: AsyncEngine, org_a: Tenant, org_b: Tenant,
) -> None:
    name = "Twin Name Acrossorgs"
    mine = await create_patient(gateway, org_a.org.headers["lab"], name=name)
    theirs = await create_patient(gateway, org_b.org.headers["lab"], name=name)
    async with engine.connect() as conn:
        indexes = [await conn.scalar(text(f"SELECT name_index FROM {_schema(org)}.patients WHERE id = :i"),
                                     {"i": pid})
                   for org, pid in ((org_a.org.id, mine["id"]), (org_b.org.id, theirs["id"]))]
    assert indexes[0] != indexes[1]


async def test_record_events_carry_ids_and_field_names_never_names_or_texts(
    gateway: httpx.AsyncClient, platform: Platform, org_a: Tenant,
) -> None:
    lab = org_a.org.headers["lab"]
    name = f"Eventless Person {uuid.uuid4().hex[:6]}"
    patient = await consented_patient(gateway, lab, name=name)
    await gateway.patch(f"/api/patients/{patient['id']}", json={"name": name + " Jr"}, headers=lab)
    await gateway.get(f"/api/patients/{patient['id']}", headers=lab)
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    created = await record_event(bootstrap, "PatientCreated", patient_id=patient["id"])
    recorded = await record_event(bootstrap, "ConsentRecorded", patient_id=patient["id"])
    await record_event(bootstrap, "PatientUpdated", patient_id=patient["id"])
    assert created["payload"]["via"] == "api" and recorded["payload"]["method"] == "written"
    everything = str(await topic_messages(bootstrap, "clinomic.records"))
    assert name not in everything and "blood count" not in everything and "gAAAAA" not in everything
    assert patient["external_id"] not in everything


async def test_creating_labs_and_doctors_and_revoking_consents_are_events(
    gateway: httpx.AsyncClient, platform: Platform, org_a: Tenant,
) -> None:
    lab = await create_lab(gateway, org_a.org.headers["admin"])
    doctor = await create_doctor(gateway, org_a.org.headers["admin"])
    patient = await create_patient(gateway, org_a.org.headers["lab"])
    consent = await record_consent(gateway, org_a.org.headers["lab"], patient["id"])
    ok(await gateway.post(f"/api/consents/{consent['id']}/revoke", headers=org_a.org.headers["lab"]))
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    await record_event(bootstrap, "LabCreated", lab_id=lab["id"])
    await record_event(bootstrap, "DoctorCreated", doctor_id=doctor["id"])
    revoked = await record_event(bootstrap, "ConsentRevoked", consent_id=consent["id"])
    assert revoked["payload"]["patient_id"] == patient["id"] and revoked["tenant_id"] == org_a.org.id


async def test_showing_a_name_is_an_event_and_showing_none_is_not(
    gateway: httpx.AsyncClient, platform: Platform, org_a: Tenant,
) -> None:
    lab = org_a.org.headers["lab"]
    named = await create_patient(gateway, lab, name="Viewed Person")
    unnamed = await create_patient(gateway, lab)
    ok(await gateway.get(f"/api/patients/{named['id']}", headers=lab))
    ok(await gateway.get(f"/api/patients/{unnamed['id']}", headers=lab))
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "PhiViewed", endpoint="get_patient",
                               patient_ids=[named["id"]])
    me = ok(await gateway.get("/api/auth/me", headers=lab))
    assert event["actor"]["user_id"] == me["id"] and event["payload"]["record_count"] == 1
    viewed = await topic_messages(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "clinomic.records")
    assert not any(e["event_type"] == "PhiViewed" and unnamed["id"] in e["payload"]["patient_ids"] for e in viewed)


async def test_reading_screenings_with_names_is_an_event(gateway: httpx.AsyncClient, platform: Platform,
                                                        org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, name="History Viewed")
    await classified(gateway, lab, patient["external_id"])
    ok(await gateway.get("/api/screening/history", params={"patient_id": patient["id"]}, headers=lab))
    await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "PhiViewed", endpoint="history",
                       patient_ids=[patient["id"]])


async def test_an_export_contains_names_and_is_an_event_counting_its_rows(
    gateway: httpx.AsyncClient, platform: Platform, org_a: Tenant,
) -> None:
    lab, admin = org_a.org.headers["lab"], org_a.org.headers["admin"]
    patient = await consented_patient(gateway, lab, name="=HYPERLINK(\"http://x\")")
    screening = await classified(gateway, lab, patient["external_id"])
    response = await gateway.get("/api/screening/export", params={"patient_id": patient["id"]}, headers=admin)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["screening_id"], r["patient_name"]) for r in rows] == \
        [(screening["id"], "'=HYPERLINK(\"http://x\")")]  # a spreadsheet shows it, never runs it
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "RecordsExported",
                               tenant_id=org_a.org.id, filters=["patient_id"])
    assert event["payload"]["row_count"] == 1 and event["payload"]["patient_count"] == 1


async def test_the_audit_ledger_records_record_events(gateway: httpx.AsyncClient, platform: Platform,
                                                      engine: AsyncEngine, org_a: Tenant) -> None:
    patient = await create_patient(gateway, org_a.org.headers["lab"])
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "PatientCreated", patient_id=patient["id"])

    async def ledgered() -> bool:
        async with engine.connect() as conn:
            return bool(await conn.scalar(text("SELECT count(*) FROM audit.entries WHERE event_id = :e"),
                                          {"e": event["event_id"]}))

    assert await eventually(ledgered, timeout=20)
