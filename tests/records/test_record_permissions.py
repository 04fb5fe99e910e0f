"""Who may do what with labs, doctors, patients, consents, the policy and exports (one organisation)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from devstack.stack import Platform
from tests.conftest import new_patient_id
from tests.records.conftest import Tenant
from tests.records.helpers import (
    create_doctor, create_lab, create_patient, create_user, ok, record_consent, record_event,
)

NOT_ADMINS = ("lab", "doctor", "auditor")


@pytest.mark.parametrize("role", NOT_ADMINS)
async def test_only_an_org_admin_creates_labs(gateway: httpx.AsyncClient, org_a: Tenant, role: str) -> None:
    response = await gateway.post("/api/labs", json={"name": "Not mine to make"}, headers=org_a.org.headers[role])
    assert response.status_code == 403


@pytest.mark.parametrize("role", NOT_ADMINS)
async def test_only_an_org_admin_creates_doctors(gateway: httpx.AsyncClient, org_a: Tenant, role: str) -> None:
    response = await gateway.post("/api/doctors", json={"name": "Dr Nobody"}, headers=org_a.org.headers[role])
    assert response.status_code == 403


@pytest.mark.parametrize("role", ("admin", *NOT_ADMINS))
async def test_every_role_of_the_organisation_reads_labs_and_doctors(
    gateway: httpx.AsyncClient, org_a: Tenant, role: str,
) -> None:
    headers = org_a.org.headers[role]
    assert org_a.lab["id"] in {x["id"] for x in ok(await gateway.get("/api/labs", headers=headers))["items"]}
    assert ok(await gateway.get(f"/api/doctors/{org_a.doctor['id']}", headers=headers))["name"] == \
        org_a.doctor["name"]


async def test_an_org_admin_edits_a_lab_and_the_change_names_its_fields(
    gateway: httpx.AsyncClient, platform: Platform, org_a: Tenant,
) -> None:
    made = await create_lab(gateway, org_a.org.headers["admin"], code=f"L-{uuid.uuid4().hex[:6]}")
    edited = ok(await gateway.patch(f"/api/labs/{made['id']}", json={"name": "Renamed Lab", "address": "1 Road"},
                                    headers=org_a.org.headers["admin"]))
    assert edited["name"] == "Renamed Lab" and edited["address"] == "1 Road"
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "LabUpdated", lab_id=made["id"])
    assert event["payload"]["changed_fields"] == ["address", "name"]
    assert event["actor"]["role"] == "org_admin" and event["tenant_id"] == org_a.org.id


async def test_a_deactivated_lab_stays_listed_as_inactive_and_takes_no_new_patients(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    made = await create_lab(gateway, org_a.org.headers["admin"])
    ok(await gateway.patch(f"/api/labs/{made['id']}", json={"active": False}, headers=org_a.org.headers["admin"]))
    inactive = ok(await gateway.get("/api/labs", params={"active": "false"}, headers=org_a.org.headers["lab"]))
    assert made["id"] in {x["id"] for x in inactive["items"]}
    response = await gateway.post("/api/patients", json={"external_id": new_patient_id(), "lab_id": made["id"]},
                                  headers=org_a.org.headers["lab"])
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "lab_id"


async def test_a_lab_code_is_unique_in_the_organisation(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    code = f"DUP-{uuid.uuid4().hex[:6]}"
    await create_lab(gateway, org_a.org.headers["admin"], code=code)
    again = await gateway.post("/api/labs", json={"name": "Other", "code": code},
                               headers=org_a.org.headers["admin"])
    assert again.status_code == 409


async def test_a_doctor_record_links_only_to_a_user_with_the_doctor_role(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    lab_user, _ = await create_user(gateway, org_a.org.headers["admin"], "lab_technician")
    response = await gateway.post("/api/doctors", json={"name": "Dr Wrongrole", "user_id": lab_user},
                                  headers=org_a.org.headers["admin"])
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "user_id"


async def test_a_doctor_user_links_to_one_doctor_record_only(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    response = await gateway.post("/api/doctors", json={"name": "Dr Twin", "user_id": org_a.org.user_ids["doctor"]},
                                  headers=org_a.org.headers["admin"])
    assert response.status_code == 409


async def test_an_org_admin_deactivates_a_doctor(gateway: httpx.AsyncClient, platform: Platform,
                                                 org_a: Tenant) -> None:
    made = await create_doctor(gateway, org_a.org.headers["admin"])
    ok(await gateway.patch(f"/api/doctors/{made['id']}", json={"active": False},
                           headers=org_a.org.headers["admin"]))
    assert ok(await gateway.get(f"/api/doctors/{made['id']}", headers=org_a.org.headers["lab"]))["active"] is False
    await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "DoctorDeactivated", doctor_id=made["id"])


@pytest.mark.parametrize("role", ("admin", "lab"))
async def test_lab_technicians_and_admins_create_and_edit_patients(
    gateway: httpx.AsyncClient, org_a: Tenant, role: str,
) -> None:
    headers = org_a.org.headers[role]
    made = await create_patient(gateway, headers, name="Edith Editable", age=40, sex="female",
                                lab_id=org_a.lab["id"])
    edited = ok(await gateway.patch(f"/api/patients/{made['id']}", json={"age": 41}, headers=headers))
    assert (edited["age"], edited["name"], edited["lab_id"]) == (41, "Edith Editable", org_a.lab["id"])


@pytest.mark.parametrize("role", ("doctor", "auditor"))
async def test_doctors_and_auditors_may_not_create_or_edit_patients(
    gateway: httpx.AsyncClient, org_a: Tenant, role: str,
) -> None:
    headers = org_a.org.headers[role]
    assert (await gateway.post("/api/patients", json={"external_id": new_patient_id()}, headers=headers)
            ).status_code == 403
    assert (await gateway.patch(f"/api/patients/{org_a.patient['id']}", json={"age": 1}, headers=headers)
            ).status_code == 403


async def test_an_auditor_reads_no_patient_consent_or_screening(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    headers = org_a.org.headers["auditor"]
    for path in ("/api/patients", f"/api/patients/{org_a.patient['id']}", "/api/consents",
                 f"/api/consents/{org_a.consent['id']}", "/api/screening/history",
                 f"/api/screenings/{org_a.screening['id']}"):
        assert (await gateway.get(path, headers=headers)).status_code == 403, path


async def test_an_external_patient_id_is_unique_in_the_organisation(gateway: httpx.AsyncClient,
                                                                     org_a: Tenant) -> None:
    made = await create_patient(gateway, org_a.org.headers["lab"])
    again = await gateway.post("/api/patients", json={"external_id": made["external_id"], "name": "Other"},
                               headers=org_a.org.headers["lab"])
    assert again.status_code == 409


@pytest.mark.parametrize("role", ("doctor", "auditor"))
async def test_doctors_and_auditors_may_not_record_or_revoke_consents(
    gateway: httpx.AsyncClient, org_a: Tenant, role: str,
) -> None:
    headers = org_a.org.headers[role]
    recorded = await gateway.post("/api/consents", headers=headers,
                                  json={"patient_id": org_a.patient["id"], "method": "verbal", "text": "yes"})
    revoked = await gateway.post(f"/api/consents/{org_a.consent['id']}/revoke", headers=headers)
    assert recorded.status_code == revoked.status_code == 403


async def test_a_consent_records_its_type_method_text_and_who_recorded_it(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    patient = await create_patient(gateway, org_a.org.headers["lab"])
    made = await record_consent(gateway, org_a.org.headers["lab"], patient["id"], method="verbal",
                                consent_type="research", text="Agreed on the phone.")
    fetched = ok(await gateway.get(f"/api/consents/{made['id']}", headers=org_a.org.headers["admin"]))
    me = ok(await gateway.get("/api/auth/me", headers=org_a.org.headers["lab"]))
    assert (fetched["consent_type"], fetched["method"], fetched["text"], fetched["status"]) == \
        ("research", "verbal", "Agreed on the phone.", "active")
    assert fetched["recorded_by"] == me["id"]


async def test_a_revoked_consent_cannot_be_revoked_again(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    patient = await create_patient(gateway, org_a.org.headers["lab"])
    made = await record_consent(gateway, org_a.org.headers["lab"], patient["id"])
    revoked = ok(await gateway.post(f"/api/consents/{made['id']}/revoke", headers=org_a.org.headers["lab"]))
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    again = await gateway.post(f"/api/consents/{made['id']}/revoke", headers=org_a.org.headers["admin"])
    assert again.status_code == 409


@pytest.mark.parametrize("role", NOT_ADMINS)
async def test_only_an_org_admin_changes_the_consent_policy(gateway: httpx.AsyncClient, org_a: Tenant,
                                                            role: str) -> None:
    headers = org_a.org.headers[role]
    assert ok(await gateway.get("/api/screening/policy", headers=headers))["consent_required"] is True
    response = await gateway.put("/api/screening/policy", json={"consent_required": False}, headers=headers)
    assert response.status_code == 403


@pytest.mark.parametrize("role", ("lab", "auditor"))
async def test_only_org_admins_and_doctors_export(gateway: httpx.AsyncClient, org_a: Tenant, role: str) -> None:
    assert (await gateway.get("/api/screening/export", headers=org_a.org.headers[role])).status_code == 403
