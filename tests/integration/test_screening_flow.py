"""End to end through the gateway's HTTP API: log in, classify, find it in history, verify the audit chain."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import HEALTHY_CBC, new_patient_id
from tests.records.helpers import consented_patient


async def classify(gateway: httpx.AsyncClient, headers: dict[str, str], **overrides: object) -> httpx.Response:
    """Classify for a patient with a screening consent (the default policy requires one)."""
    patient = overrides.pop("patient", {"external_id": new_patient_id(), "name": "Ada Example"})
    assert isinstance(patient, dict)
    await consented_patient(gateway, headers, **patient)
    body = {"patient": patient, "cbc": HEALTHY_CBC} | overrides
    return await gateway.post("/api/screening/classify", json=body, headers=headers)


async def test_login_returns_access_and_refresh_tokens(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/auth/login", json={"username": "lab_demo", "password": "Demo@2024"})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["access_token"].count(".") == 2 and body["refresh_token"]


async def test_wrong_password_and_unknown_user_get_the_same_answer(gateway: httpx.AsyncClient) -> None:
    wrong = await gateway.post("/api/auth/login", json={"username": "lab_demo", "password": "not-it-at-all"})
    unknown = await gateway.post("/api/auth/login", json={"username": "nobody_here", "password": "not-it-at-all"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_classify_answers_with_the_recorded_screening(gateway: httpx.AsyncClient, lab: dict) -> None:
    response = await classify(gateway, lab)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "classified"
    probabilities = body["assessment"]["probabilities"]
    assert abs(sum(probabilities.values()) - 1.0) < 1e-6
    assert body["assessment"]["risk_class"] in (1, 2, 3)
    assert "patient_name" not in body and "name_ciphertext" not in str(body)


async def test_classified_screening_appears_in_history_with_its_patient_name(
    gateway: httpx.AsyncClient, lab: dict
) -> None:
    patient = new_patient_id()
    created = await classify(gateway, lab, patient={"external_id": patient, "name": "Grace Example"})
    assert created.status_code == 200, created.text
    history = await gateway.get("/api/screening/history", params={"patient_external_id": patient}, headers=lab)
    assert history.status_code == 200
    items = history.json()["items"]
    assert [i["id"] for i in items] == [created.json()["id"]]
    assert items[0]["patient_name"] == "Grace Example"


async def test_screening_is_readable_by_its_url(gateway: httpx.AsyncClient, lab: dict) -> None:
    created = (await classify(gateway, lab)).json()
    fetched = await gateway.get(created["url"], headers=lab)
    assert fetched.status_code == 200
    assert fetched.json()["assessment"]["label"] == created["assessment"]["label"]


async def test_malformed_cbc_gets_422_naming_the_field(gateway: httpx.AsyncClient, lab: dict) -> None:
    response = await classify(gateway, lab, cbc=HEALTHY_CBC | {"mcv": 400})
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert any(e["field"] == "cbc.mcv" and "50–150" in e["message"] for e in errors)


async def test_missing_and_non_numeric_fields_get_422_not_500(gateway: httpx.AsyncClient, lab: dict) -> None:
    cbc = {k: v for k, v in HEALTHY_CBC.items() if k != "hb"} | {"rdw": "high"}
    response = await classify(gateway, lab, cbc=cbc)
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"cbc.hb", "cbc.rdw"} <= fields


async def test_classify_without_a_token_is_refused(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/screening/classify", json={})
    assert response.status_code == 401


async def test_doctor_may_not_submit_screenings(gateway: httpx.AsyncClient) -> None:
    from tests.conftest import bearer, login

    doctor = bearer(await login(gateway, "doctor_demo"))
    body = {"patient": {"external_id": new_patient_id()}, "cbc": HEALTHY_CBC}
    response = await gateway.post("/api/screening/classify", json=body, headers=doctor)
    assert response.status_code == 403


async def test_audit_chain_records_the_screening_and_verifies(
    gateway: httpx.AsyncClient, lab: dict, admin: dict
) -> None:
    created = (await classify(gateway, lab)).json()
    types: set[str] = set()
    for _ in range(50):  # the ledger consumes asynchronously; give it a moment
        entries = (await gateway.get("/api/audit", params={"limit": 200}, headers=admin)).json()["items"]
        types = {e["event_type"] for e in entries if created["id"] in str(e["content"])}
        if {"ScreeningRequested", "ScreeningClassified", "ScreeningRecorded"} <= types:
            break
        await asyncio.sleep(0.1)
    assert {"ScreeningRequested", "ScreeningClassified", "ScreeningRecorded"} <= types
    report = (await gateway.get("/api/audit/verify", headers=admin)).json()
    assert report["ok"] is True and report["checked"] >= 3


async def test_lab_technician_cannot_read_the_audit_ledger(gateway: httpx.AsyncClient, lab: dict) -> None:
    assert (await gateway.get("/api/audit", headers=lab)).status_code == 403
