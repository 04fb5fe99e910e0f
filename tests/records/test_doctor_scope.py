"""A doctor sees only the patients referred to them (their doctor record links their user id), and only
those patients' consents and screenings; anything else is answered as if it did not exist."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import bearer, login
from tests.records.conftest import Tenant
from tests.records.helpers import classified, classify, consented_patient, create_doctor, create_user, ok


@pytest.fixture(scope="module")
async def other(gateway: httpx.AsyncClient, org_a: Tenant) -> dict:
    """A patient of organisation A referred to another doctor, with a consent and a screening."""
    lab = org_a.org.headers["lab"]
    doctor = await create_doctor(gateway, org_a.org.headers["admin"])
    patient = await consented_patient(gateway, lab, name="Olga Otherdoctor", referring_doctor_id=doctor["id"])
    screening = await classified(gateway, lab, patient["external_id"])
    consent = ok(await gateway.get("/api/consents", params={"patient_id": patient["id"]}, headers=lab))["items"][0]
    return {"doctor": doctor, "patient": patient, "screening": screening, "consent": consent}


async def test_a_doctor_lists_only_patients_referred_to_them(gateway: httpx.AsyncClient, org_a: Tenant,
                                                              other: dict) -> None:
    doctor = org_a.org.headers["doctor"]
    items = ok(await gateway.get("/api/patients", params={"limit": 200}, headers=doctor))["items"]
    assert {p["id"] for p in items} == {org_a.patient["id"]}
    assert items[0]["name"] == org_a.name


async def test_a_doctor_gets_404_for_a_patient_referred_to_someone_else(
    gateway: httpx.AsyncClient, org_a: Tenant, other: dict,
) -> None:
    doctor = org_a.org.headers["doctor"]
    assert (await gateway.get(f"/api/patients/{other['patient']['id']}", headers=doctor)).status_code == 404
    assert ok(await gateway.get(f"/api/patients/{org_a.patient['id']}", headers=doctor))["name"] == org_a.name


async def test_a_doctor_sees_only_the_screenings_of_their_patients(
    gateway: httpx.AsyncClient, org_a: Tenant, other: dict,
) -> None:
    doctor = org_a.org.headers["doctor"]
    history = ok(await gateway.get("/api/screening/history", params={"limit": 200}, headers=doctor))["items"]
    assert {s["patient_id"] for s in history} == {org_a.patient["id"]}
    assert (await gateway.get(f"/api/screenings/{other['screening']['id']}", headers=doctor)).status_code == 404
    assert ok(await gateway.get(f"/api/screenings/{org_a.screening['id']}", headers=doctor))["patient_name"] == \
        org_a.name


async def test_a_doctor_sees_only_the_consents_of_their_patients(
    gateway: httpx.AsyncClient, org_a: Tenant, other: dict,
) -> None:
    doctor = org_a.org.headers["doctor"]
    consents = ok(await gateway.get("/api/consents", params={"limit": 200}, headers=doctor))["items"]
    assert {c["patient_id"] for c in consents} == {org_a.patient["id"]}
    assert (await gateway.get(f"/api/consents/{other['consent']['id']}", headers=doctor)).status_code == 404


async def test_a_doctor_finds_by_name_only_their_patients(gateway: httpx.AsyncClient, org_a: Tenant,
                                                          other: dict) -> None:
    doctor = org_a.org.headers["doctor"]
    assert ok(await gateway.post("/api/patients/search", json={"name": "Olga Otherdoctor"}, headers=doctor)
              )["items"] == []
    assert ok(await gateway.post("/api/patients/search", json={"name": "Olga Otherdoctor"},
                                 headers=org_a.org.headers["lab"]))["items"][0]["id"] == other["patient"]["id"]


async def test_referring_a_patient_to_another_doctor_moves_who_may_see_it(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    lab, admin = org_a.org.headers["lab"], org_a.org.headers["admin"]
    second_user, second = await create_user(gateway, admin, "doctor")
    second_record = await create_doctor(gateway, admin, user_id=second_user)
    patient = await consented_patient(gateway, lab, referring_doctor_id=org_a.doctor["id"])
    ok(await gateway.patch(f"/api/patients/{patient['id']}", json={"referring_doctor_id": second_record["id"]},
                           headers=lab))
    assert (await gateway.get(f"/api/patients/{patient['id']}", headers=org_a.org.headers["doctor"])).status_code \
        == 404
    assert ok(await gateway.get(f"/api/patients/{patient['id']}", headers=second))["id"] == patient["id"]


async def test_a_doctor_without_a_doctor_record_sees_no_patient(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    _, unlinked = await create_user(gateway, org_a.org.headers["admin"], "doctor")
    assert ok(await gateway.get("/api/patients", headers=unlinked))["items"] == []
    assert ok(await gateway.get("/api/screening/history", headers=unlinked))["items"] == []
    assert (await gateway.get(f"/api/patients/{org_a.patient['id']}", headers=unlinked)).status_code == 404


async def test_the_demo_doctor_may_not_submit_screenings(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    doctor = bearer(await login(gateway, "doctor_demo"))
    assert (await classify(gateway, doctor, org_a.patient["external_id"])).status_code == 403
