"""``Idempotency-Key`` on classify: a retried request returns the first screening instead of making a
second one; keys are unique per organisation and bound to the request they were first used for."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import HEALTHY_CBC
from tests.records.conftest import Tenant
from tests.records.helpers import classified, classify, consented_patient, eventually, ok


async def _screenings_of(gateway: httpx.AsyncClient, headers: dict, patient_id: str) -> list[str]:
    items = ok(await gateway.get("/api/screening/history", params={"patient_id": patient_id}, headers=headers))
    return [s["id"] for s in items["items"]]


async def test_a_retry_with_the_same_key_returns_the_first_screening(gateway: httpx.AsyncClient,
                                                                      org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab)
    key = str(uuid.uuid4())
    first = await classify(gateway, lab, patient["external_id"], key=key)
    recorded = await classified(gateway, lab, patient["external_id"], key=key)  # a retry, waiting if need be
    retry = await classify(gateway, lab, patient["external_id"], key=key)
    assert first.status_code in (200, 202) and "idempotent-replayed" not in first.headers
    assert retry.status_code == 200 and retry.headers.get("idempotent-replayed") == "true"
    assert first.json()["id"] == recorded["id"] == retry.json()["id"]
    if first.status_code == 200:
        assert retry.json() == first.json()
    assert await _screenings_of(gateway, lab, patient["id"]) == [first.json()["id"]]


async def test_concurrent_requests_with_one_key_make_one_screening(gateway: httpx.AsyncClient,
                                                                   org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab)
    key = str(uuid.uuid4())
    answers = await asyncio.gather(*(classify(gateway, lab, patient["external_id"], key=key) for _ in range(4)))
    assert {a.status_code for a in answers} <= {200, 202}
    assert len({a.json()["id"] for a in answers}) == 1
    await asyncio.sleep(0.5)
    assert len(await _screenings_of(gateway, lab, patient["id"])) == 1


async def test_a_key_reused_for_a_different_request_is_refused(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab)
    key = str(uuid.uuid4())
    assert (await classify(gateway, lab, patient["external_id"], key=key)).status_code in (200, 202)
    reused = await classify(gateway, lab, patient["external_id"], key=key, cbc=HEALTHY_CBC | {"age": 47})
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["field"] == "header.Idempotency-Key"


async def test_a_retry_is_answered_even_after_the_consent_was_revoked(gateway: httpx.AsyncClient,
                                                                      org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab)
    key = str(uuid.uuid4())
    first = await classified(gateway, lab, patient["external_id"], key=key)
    consent = ok(await gateway.get("/api/consents", params={"patient_id": patient["id"]}, headers=lab))["items"][0]
    ok(await gateway.post(f"/api/consents/{consent['id']}/revoke", headers=lab))
    assert (await classified(gateway, lab, patient["external_id"], key=key))["id"] == first["id"]


async def test_keys_are_per_organisation(gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant) -> None:
    key = str(uuid.uuid4())
    mine = await consented_patient(gateway, org_a.org.headers["lab"])
    theirs = await consented_patient(gateway, org_b.org.headers["lab"], external_id=mine["external_id"])
    a = await classified(gateway, org_a.org.headers["lab"], mine["external_id"], key=key)
    b = await classified(gateway, org_b.org.headers["lab"], theirs["external_id"], key=key)
    assert a["id"] != b["id"] and b["patient_id"] == theirs["id"]


async def test_without_a_key_two_requests_make_two_screenings(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab)
    first = await classified(gateway, lab, patient["external_id"])
    second = await classified(gateway, lab, patient["external_id"])
    assert first["id"] != second["id"]


async def test_the_key_is_kept_in_the_intake_with_a_fingerprint_free_of_phi(
    gateway: httpx.AsyncClient, engine: AsyncEngine, org_a: Tenant,
) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, name="Fiona Fingerprint")
    key = str(uuid.uuid4())
    first = await classified(gateway, lab, patient["external_id"], key=key, name="Fiona Fingerprint")

    async def stored() -> Any:
        async with engine.connect() as conn:
            return (await conn.execute(text(
                "SELECT screening_id, request_fingerprint, outcome::text FROM gateway.screening_intake "
                "WHERE idempotency_key = :k AND outcome IS NOT NULL"), {"k": key})).first()

    row = await eventually(stored)
    assert str(row[0]) == first["id"] and len(row[1]) == 64
    assert "Fiona" not in row[2] and first["id"] in row[2]


async def test_a_malformed_key_is_refused_before_anything_happens(gateway: httpx.AsyncClient,
                                                                  org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab)
    response = await classify(gateway, lab, patient["external_id"], key="has spaces in it")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert await _screenings_of(gateway, lab, patient["id"]) == []
