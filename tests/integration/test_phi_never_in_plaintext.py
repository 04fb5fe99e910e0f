"""A canary patient name travels the whole platform and is found in plaintext nowhere but the API answer."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from tests.conftest import HEALTHY_CBC, new_patient_id


async def all_database_text(engine: AsyncEngine) -> str:
    """Every row of every table of every schema, as text (bytea columns appear hex-encoded)."""
    async with engine.connect() as conn:
        tables = (await conn.execute(text(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"))).all()
        chunks = []
        for schema, table in tables:
            rows = await conn.scalars(text(f'SELECT t::text FROM "{schema}"."{table}" t'))
            chunks.extend(rows.all())
    return "\n".join(chunks)


async def all_topic_bytes(bootstrap: str) -> bytes:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"phi-probe-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=5, enable_auto_commit=False)
    consumer.subscribe(pattern=r"^clinomic\..+")
    await consumer.start()
    chunks: list[bytes] = []
    try:
        idle = 0
        while idle < 10:
            batch = await consumer.getmany(timeout_ms=200)
            idle = 0 if batch else idle + 1
            chunks += [m.value or b"" for records in batch.values() for m in records]
    finally:
        await consumer.stop()
    assert chunks, "the probe read no event at all"
    return b"\n".join(chunks)


async def test_a_patient_name_is_never_stored_published_audited_or_logged_in_plaintext(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, admin: dict, engine: AsyncEngine
) -> None:
    """The canary travels every way a name can: patient record, consent wording, classify, an explicit
    rename, search, history, export; it is readable through the API and nowhere else."""
    canary = f"Quixwhistle Canary {uuid.uuid4().hex[:8]}"
    renamed = f"Quixwhistle Renamed {uuid.uuid4().hex[:8]}"
    patient = new_patient_id()
    created = await gateway.post("/api/patients", headers=lab, json={"external_id": patient, "name": canary})
    assert created.status_code == 201
    patient_id = created.json()["id"]
    consent = await gateway.post("/api/consents", headers=lab, json={
        "patient_id": patient_id, "method": "written", "text": f"I, {canary}, agree to B12 screening."})
    assert consent.status_code == 201
    response = await gateway.post("/api/screening/classify", headers=lab,
                                  json={"patient": {"external_id": patient, "name": canary}, "cbc": HEALTHY_CBC})
    assert response.status_code == 200 and canary not in response.text
    history = await gateway.get("/api/screening/history", params={"patient_external_id": patient}, headers=lab)
    assert history.json()["items"][0]["patient_name"] == canary  # it is stored, readable by the right role
    found = await gateway.post("/api/patients/search", json={"name": canary}, headers=lab)
    assert [p["id"] for p in found.json()["items"]] == [patient_id]
    consents = await gateway.get("/api/consents", params={"patient_id": patient_id}, headers=lab)
    assert canary in consents.json()["items"][0]["text"]
    export = await gateway.get("/api/screening/export", params={"patient_id": patient_id}, headers=admin)
    assert canary in export.text
    rename = await gateway.patch(f"/api/patients/{patient_id}", json={"name": renamed}, headers=lab)
    assert rename.status_code == 200
    await asyncio.sleep(1.5)  # let the ledger and the outbox catch up

    database = await all_database_text(engine)
    assert patient in database, "the probe must see the screening it is looking into"
    for secret in (canary, renamed):
        assert secret not in database and secret.encode().hex() not in database

    topics = await all_topic_bytes(platform.env["KAFKA_BOOTSTRAP_SERVERS"])
    assert patient.encode() in topics and patient_id.encode() in topics
    assert canary.encode() not in topics and renamed.encode() not in topics

    for name, log in platform.logs.items():
        text_of_log = log.read_text(errors="replace")
        assert canary not in text_of_log and renamed not in text_of_log, f"{name} logged the name"
