"""A screening's proof through the real platform: a bulk row is proved from its chunk entry and a single
screening from its own entry, both checked by the offline verifier's code with nothing but the public key,
against the screening as published and as the screening service answers it from its record
(``GET /api/screenings/{id}/recorded``); only the organisation's own compliance staff get a proof, and
another organisation's screening is unknown."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from audit.merkle import load_public_key
from audit.verifier import verify_screening_proof
from devstack.stack import Platform
from shared.events import Topic
from tests.audit.conftest import Org, wait_until
from tests.batch.conftest import completed, consented, csv_batch, csv_row, raw_messages, upload
from tests.conftest import bearer, login
from tests.records.helpers import classified, consented_patient, ok


async def public_key(gateway: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    response = await gateway.get("/api/audit/public-key.pem", headers=headers)
    assert response.status_code == 200, response.text
    return load_public_key(response.content)


async def signed_proof(gateway: httpx.AsyncClient, headers: dict[str, str], screening_id: str) -> dict[str, Any]:
    """The screening's proof once its entry is in the ledger and covered by a signed tree head."""
    answer: dict[str, Any] = {}

    async def covered() -> bool:
        response = await gateway.get(f"/api/audit/screenings/{screening_id}/proof", headers=headers)
        assert response.status_code in (200, 404), response.text
        answer.update(response.json() if response.status_code == 200 else {})
        return answer.get("tree_head") is not None

    await wait_until(covered, f"a signed proof of screening {screening_id}", timeout=90)
    return answer


async def auditor(gateway: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await login(gateway, "auditor_demo"))


async def test_a_bulk_row_is_proved_from_its_chunk_entry_up_to_a_signed_tree_head(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    ids = await consented(gateway, lab, 3)
    job_id = ok(await upload(gateway, lab, csv_batch(*(csv_row(i) for i in ids))), 202)["job_id"]
    await completed(gateway, lab, job_id)
    [chunk] = [json.loads(m) for m in await raw_messages(
        platform.env["KAFKA_BOOTSTRAP_SERVERS"], Topic.SCREENING_BATCH_RECORDED, job_id, at_least=1)]
    assert (chunk["event_type"], chunk["event_version"]) == ("ScreeningBatchRecorded", 2)
    row = chunk["payload"]["rows"][1]
    screening = row["screening"]

    reader = await auditor(gateway)
    proof = await signed_proof(gateway, reader, screening["screening_id"])
    assert (proof["kind"], proof["row"]["row"], proof["row"]["rows"]) == ("chunk_row", row["row"], 3)
    check = verify_screening_proof(proof, public_keys=[await public_key(gateway, reader)], screening=screening)
    assert check.ok, check.summary()


async def recorded_screening(gateway: httpx.AsyncClient, headers: dict[str, str], screening_id: str) -> Any:
    """The screening as recorded, from the screening service's record (not from the event)."""
    return ok(await gateway.get(f"/api/screenings/{screening_id}/recorded", headers=headers))


async def test_a_bulk_row_as_recorded_by_the_screening_service_is_the_one_its_chunk_entry_commits_to(
    gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    ids = await consented(gateway, lab, 3)
    job_id = ok(await upload(gateway, lab, csv_batch(*(csv_row(i) for i in ids))), 202)["job_id"]
    outcome = (await completed(gateway, lab, job_id))["outcomes"][1]
    screening = await recorded_screening(gateway, lab, outcome["screening_id"])

    reader = await auditor(gateway)
    proof = await signed_proof(gateway, reader, outcome["screening_id"])
    assert (proof["kind"], proof["row"]["row"]) == ("chunk_row", outcome["row"])
    check = verify_screening_proof(proof, public_keys=[await public_key(gateway, reader)], screening=screening)
    assert check.ok, check.summary()


async def test_a_bulk_row_still_proves_after_its_patients_external_id_is_corrected(
    gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    """The screening keeps the external id it was recorded with; the patient's record shows the correction."""
    patient = await consented_patient(gateway, lab)
    job_id = ok(await upload(gateway, lab, csv_batch(csv_row(patient["external_id"]))), 202)["job_id"]
    [outcome] = (await completed(gateway, lab, job_id))["outcomes"]
    corrected = f"fixed-{uuid.uuid4().hex[:12]}"
    ok(await gateway.patch(f"/api/patients/{patient['id']}", json={"external_id": corrected}, headers=lab))
    screening = await recorded_screening(gateway, lab, outcome["screening_id"])
    assert screening["patient_external_id"] == patient["external_id"]
    assert ok(await gateway.get(f"/api/screenings/{outcome['screening_id']}", headers=lab))[
        "patient_external_id"] == corrected

    reader = await auditor(gateway)
    proof = await signed_proof(gateway, reader, outcome["screening_id"])
    check = verify_screening_proof(proof, public_keys=[await public_key(gateway, reader)], screening=screening)
    assert check.ok, check.summary()


async def test_a_single_screening_as_recorded_by_the_screening_service_is_its_entrys_payload(
    gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    patient = await consented_patient(gateway, lab)
    recorded = await classified(gateway, lab, patient["external_id"])
    screening = await recorded_screening(gateway, lab, recorded["id"])

    reader = await auditor(gateway)
    proof = await signed_proof(gateway, reader, recorded["id"])
    check = verify_screening_proof(proof, public_keys=[await public_key(gateway, reader)], screening=screening)
    assert check.ok, check.summary()


async def test_another_organisations_screening_as_recorded_is_not_found_like_an_unknown_one(
    gateway: httpx.AsyncClient, lab: dict[str, str], org: Org
) -> None:
    patient = await consented_patient(gateway, lab)
    recorded = await classified(gateway, lab, patient["external_id"])
    await recorded_screening(gateway, lab, recorded["id"])

    theirs = await gateway.get(f"/api/screenings/{recorded['id']}/recorded", headers=org.admin)
    unknown = await gateway.get(f"/api/screenings/{uuid.uuid4()}/recorded", headers=org.admin)
    assert (theirs.status_code, unknown.status_code) == (404, 404)
    assert theirs.json() == unknown.json()


async def test_a_single_screening_is_proved_from_its_own_entry(
    gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    patient = await consented_patient(gateway, lab)
    recorded = await classified(gateway, lab, patient["external_id"])

    reader = await auditor(gateway)
    proof = await signed_proof(gateway, reader, recorded["id"])
    assert (proof["kind"], proof["row"]) == ("entry", None)
    check = verify_screening_proof(proof, public_keys=[await public_key(gateway, reader)])
    assert check.ok, check.summary()


async def test_another_organisations_screening_is_not_found_like_an_unknown_one(
    gateway: httpx.AsyncClient, lab: dict[str, str], org: Org
) -> None:
    patient = await consented_patient(gateway, lab)
    recorded = await classified(gateway, lab, patient["external_id"])
    await signed_proof(gateway, await auditor(gateway), recorded["id"])

    theirs = await gateway.get(f"/api/audit/screenings/{recorded['id']}/proof", headers=org.admin)
    unknown = await gateway.get(f"/api/audit/screenings/{uuid.uuid4()}/proof", headers=org.admin)
    assert (theirs.status_code, unknown.status_code) == (404, 404)
    assert theirs.json()["detail"] == f"no recorded screening {recorded['id']}"


async def test_only_an_organisations_admins_and_auditors_get_a_screening_proof(
    gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    platform_admin = bearer(await login(gateway, "platform_demo"))
    screening_id = uuid.uuid4()
    for headers in (lab, platform_admin):
        response = await gateway.get(f"/api/audit/screenings/{screening_id}/proof", headers=headers)
        assert response.status_code == 403, response.text
