"""Consent: under the default policy a screening needs an active consent of the patient; without one the
request is refused with a clear error before anything is accepted or published."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from shared.events import Topic
from tests.conftest import new_patient_id
from tests.records.conftest import Tenant
from tests.records.helpers import (
    classified,
    Org, classify, consented_patient, create_patient, new_org, ok, record_consent, record_event, topic_messages,
)


async def _accepted_or_published(platform: Platform, engine: AsyncEngine, external_id: str) -> list[str]:
    found = []
    async with engine.connect() as conn:
        if await conn.scalar(text("SELECT count(*) FROM gateway.screening_intake "
                                  "WHERE position(CAST(:e AS bytea) IN command) > 0"), {"e": external_id.encode()}):
            found.append("intake")
    requested = await topic_messages(platform.env["KAFKA_BOOTSTRAP_SERVERS"], Topic.SCREENING_REQUESTED)
    if any(m["payload"]["patient"]["external_id"] == external_id for m in requested):
        found.append("topic")
    return found


async def test_classify_without_consent_is_refused_and_nothing_is_accepted_or_published(
    gateway: httpx.AsyncClient, platform: Platform, engine: AsyncEngine, org_a: Tenant,
) -> None:
    patient = await create_patient(gateway, org_a.org.headers["lab"], name="Nora Noconsent")
    response = await classify(gateway, org_a.org.headers["lab"], patient["external_id"])
    assert response.status_code == 403
    assert response.json()["code"] == "consent_required" and "consent" in response.json()["detail"]
    assert await _accepted_or_published(platform, engine, patient["external_id"]) == []


async def test_classify_of_an_unknown_patient_is_refused_for_want_of_consent(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    response = await classify(gateway, org_a.org.headers["lab"], new_patient_id(), name="Una Unknown")
    assert response.status_code == 403 and response.json()["code"] == "consent_required"


async def test_the_refusal_is_an_event_naming_the_reason(gateway: httpx.AsyncClient, platform: Platform,
                                                         org_a: Tenant) -> None:
    patient = await create_patient(gateway, org_a.org.headers["lab"])
    assert (await classify(gateway, org_a.org.headers["lab"], patient["external_id"])).status_code == 403
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "ScreeningAdmissionRefused",
                               patient_id=patient["id"])
    assert event["payload"]["reason"] == "consent_required"


async def test_with_an_active_consent_classify_records_the_screening_under_it(
    gateway: httpx.AsyncClient, org_a: Tenant,
) -> None:
    patient = await consented_patient(gateway, org_a.org.headers["lab"])
    created = await classified(gateway, org_a.org.headers["lab"], patient["external_id"])
    consent = ok(await gateway.get("/api/consents", params={"patient_id": patient["id"]},
                                   headers=org_a.org.headers["lab"]))["items"][0]
    fetched = ok(await gateway.get(created["url"], headers=org_a.org.headers["lab"]))
    assert created["status"] == "classified" and fetched["consent_id"] == consent["id"]
    assert fetched["patient_id"] == patient["id"]


async def test_after_the_consent_is_revoked_classify_is_refused_again(gateway: httpx.AsyncClient,
                                                                      org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await create_patient(gateway, lab)
    consent = await record_consent(gateway, lab, patient["id"])
    assert (await classify(gateway, lab, patient["external_id"])).status_code in (200, 202)
    ok(await gateway.post(f"/api/consents/{consent['id']}/revoke", headers=lab))
    assert (await classify(gateway, lab, patient["external_id"])).status_code == 403


async def test_a_consent_of_another_type_does_not_admit_a_screening(gateway: httpx.AsyncClient,
                                                                    org_a: Tenant) -> None:
    lab = org_a.org.headers["lab"]
    patient = await create_patient(gateway, lab)
    await record_consent(gateway, lab, patient["id"], consent_type="research")
    assert (await classify(gateway, lab, patient["external_id"])).status_code == 403


@pytest.fixture(scope="module")
async def relaxed(gateway: httpx.AsyncClient) -> Org:
    """An organisation whose admin turned the consent requirement off."""
    org = await new_org(gateway, "relaxed", roles=("lab_technician",))
    policy = ok(await gateway.put("/api/screening/policy", json={"consent_required": False},
                                  headers=org.headers["admin"]))
    assert policy["consent_required"] is False
    return org


async def test_changing_the_policy_is_an_event(gateway: httpx.AsyncClient, platform: Platform,
                                               relaxed: Org) -> None:
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "ConsentPolicyChanged",
                               tenant_id=relaxed.id)
    assert event["payload"] == {"consent_required": False, "consent_type": "screening"}
    assert event["actor"]["role"] == "org_admin"


async def test_without_the_consent_requirement_classify_creates_a_new_patient_with_its_name(
    gateway: httpx.AsyncClient, platform: Platform, relaxed: Org,
) -> None:
    external = new_patient_id()
    created = await classified(gateway, relaxed.headers["lab"], external, name="Petra Policyoff")
    patients = ok(await gateway.get("/api/patients", params={"external_id": external},
                                    headers=relaxed.headers["lab"]))["items"]
    assert [(p["id"], p["name"], p["sex"]) for p in patients] == \
        [(created["patient_id"], "Petra Policyoff", "male")]
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "PatientCreated",
                               patient_id=created["patient_id"])
    assert event["payload"]["via"] == "classify"


async def test_the_policy_of_one_organisation_does_not_relax_another(gateway: httpx.AsyncClient, relaxed: Org,
                                                                     org_a: Tenant) -> None:
    assert ok(await gateway.get("/api/screening/policy", headers=org_a.org.headers["lab"]))["consent_required"]
    assert (await classify(gateway, org_a.org.headers["lab"], new_patient_id())).status_code == 403
