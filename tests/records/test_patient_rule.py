"""A screening never changes a patient: details that differ from the record are refused (409, naming the
fields), details left out are left alone; changes are explicit (PATCH) and published, naming the fields."""

from __future__ import annotations

import httpx

from devstack.stack import Platform
from tests.conftest import HEALTHY_CBC
from tests.records.conftest import Tenant
from tests.records.helpers import classified, classify, consented_patient, ok, record_event


async def test_classify_with_another_name_is_refused_and_the_record_keeps_its_name(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, name="Irene Original")
    response = await classify(gateway, lab, patient["external_id"], name="Ivan Impostor")
    assert response.status_code == 409
    assert response.json()["code"] == "patient_details_mismatch" and response.json()["fields"] == ["name"]
    assert ok(await gateway.get(f"/api/patients/{patient['id']}", headers=lab))["name"] == "Irene Original"
    assert ok(await gateway.get("/api/screening/history", params={"patient_id": patient["id"]},
                                headers=lab))["items"] == []


async def test_classify_without_a_name_keeps_the_recorded_one(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, name="Kept Name")
    created = await classified(gateway, lab, patient["external_id"])
    assert ok(await gateway.get(created["url"], headers=lab))["patient_name"] == "Kept Name"
    assert ok(await gateway.get(f"/api/patients/{patient['id']}", headers=lab))["name"] == "Kept Name"


async def test_the_same_name_written_differently_is_the_same_name(gateway: httpx.AsyncClient,
                                                                   org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, name="Zoë  van Dijk")
    assert (await classify(gateway, lab, patient["external_id"], name=" ZOË VAN  DIJK ")).status_code in (200, 202)


async def test_a_name_is_not_filled_in_by_a_screening_either(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab)
    response = await classify(gateway, lab, patient["external_id"], name="Newly Named")
    assert response.status_code == 409 and response.json()["fields"] == ["name"]
    assert ok(await gateway.get(f"/api/patients/{patient['id']}", headers=lab))["name"] is None


async def test_a_blood_count_of_the_other_sex_than_recorded_is_refused(gateway: httpx.AsyncClient,
                                                                       org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, sex="female")
    response = await classify(gateway, lab, patient["external_id"], cbc=HEALTHY_CBC | {"sex": "male"})
    assert response.status_code == 409 and response.json()["fields"] == ["sex"]


async def test_an_explicit_change_of_name_is_published_naming_the_field_not_the_value(
    gateway: httpx.AsyncClient, platform: Platform, org_a: Tenant,
) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, name="Maiden Name", age=30)
    edited = ok(await gateway.patch(f"/api/patients/{patient['id']}", json={"name": "Married Name", "age": 30},
                                    headers=lab))
    assert edited["name"] == "Married Name"
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "PatientUpdated", patient_id=patient["id"])
    assert event["payload"]["changed_fields"] == ["name"]
    assert "Name" not in str(event)
    assert (await classify(gateway, lab, patient["external_id"], name="Married Name")).status_code in (200, 202)


async def test_removing_a_name_takes_an_explicit_null_and_is_a_change(
    gateway: httpx.AsyncClient, platform: Platform, org_a: Tenant,
) -> None:
    lab = org_a.org.headers["lab"]
    patient = await consented_patient(gateway, lab, name="Soon Gone")
    assert ok(await gateway.patch(f"/api/patients/{patient['id']}", json={"age": 50}, headers=lab))["name"] == \
        "Soon Gone"
    removed = ok(await gateway.patch(f"/api/patients/{patient['id']}", json={"name": None}, headers=lab))
    assert removed["name"] is None
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "PatientUpdated", patient_id=patient["id"],
                               changed_fields=["name"])
    assert event["actor"]["role"] == "lab_technician"
