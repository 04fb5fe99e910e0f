"""An organisation declares the prevalence of B12 deficiency it expects; every assessment says which prevalence
it was computed for, and the model's description tells a lab what each risk class means."""

from __future__ import annotations

import httpx
import pytest

from devstack.stack import Platform
from tests.batch.conftest import completed, consented, csv_batch, csv_row, upload
from tests.conftest import HEALTHY_CBC
from tests.records.helpers import Org, classified, consented_patient, new_org, ok, record_event

MACROCYTIC = HEALTHY_CBC | {"hb": 11.0, "rbc": 3.2, "hct": 34.0, "mcv": 106.0, "mch": 34.4, "mchc": 32.4,
                            "rdw": 16.5, "age": 71}


@pytest.fixture(scope="module")
async def clinic(gateway: httpx.AsyncClient) -> Org:
    return await new_org(gateway, "prev", roles=("lab_technician",))


async def _screen(gateway: httpx.AsyncClient, org: Org, cbc: dict) -> dict:
    patient = await consented_patient(gateway, org.headers["lab"])
    return (await classified(gateway, org.headers["lab"], patient["external_id"], cbc=cbc))["assessment"]


async def test_the_model_description_states_data_validation_and_each_class(gateway: httpx.AsyncClient,
                                                                           lab: dict[str, str]) -> None:
    model = ok(await gateway.get("/api/screening/model", headers=lab))
    assert model["data_source"].startswith("NHANES 1999–2012")
    assert model["validation"] == "leave one survey cycle out (5 groups)"
    assert "Not clinically validated" in model["status"]
    ge2 = model["metrics"]["classes"]["deficient"]["ge2"]
    for figure in ("sensitivity", "specificity", "ppv", "npv", "flagged_fraction"):
        assert len(ge2[figure]["ci95"]) == 2
    assert set(model["thresholds"]["class_likelihood_ratios"]) == {"1", "2", "3"}


async def test_without_a_declared_prevalence_assessments_use_the_models_population(
    gateway: httpx.AsyncClient, clinic: Org
) -> None:
    assessment = await _screen(gateway, clinic, MACROCYTIC)
    assert assessment["advice"]["prevalence"]["source"] == "model"
    assert assessment["model"]["data_source"].startswith("NHANES")


async def test_a_declared_prevalence_is_kept_audited_and_applied_to_classify_and_batches(
    gateway: httpx.AsyncClient, platform: Platform, clinic: Org
) -> None:
    admin, lab = clinic.headers["admin"], clinic.headers["lab"]
    before = await _screen(gateway, clinic, MACROCYTIC)
    policy = ok(await gateway.put("/api/screening/policy", json={"consent_required": True,
                                                                 "expected_prevalence": 0.12}, headers=admin))
    assert policy["expected_prevalence"] == 0.12
    # a client that only knows the consent rules does not clear it
    ok(await gateway.put("/api/screening/policy", json={"consent_required": True}, headers=admin))
    assert ok(await gateway.get("/api/screening/policy", headers=lab))["expected_prevalence"] == 0.12
    event = await record_event(platform.env["KAFKA_BOOTSTRAP_SERVERS"], "ExpectedPrevalenceDeclared",
                               tenant_id=clinic.id, expected_prevalence=0.12)
    assert event["payload"]["previous"] is None

    after = await _screen(gateway, clinic, MACROCYTIC)
    prevalence = after["advice"]["prevalence"]
    assert (prevalence["deficient"], prevalence["source"]) == (0.12, "organisation") and prevalence["abnormal"] > 0.12
    assert after["probabilities"]["deficient"] > before["probabilities"]["deficient"]
    assert after["advice"]["post_test_probability"] > before["advice"]["post_test_probability"]

    [patient] = await consented(gateway, lab, 1)
    accepted = ok(await upload(gateway, lab, csv_batch(csv_row(patient))), 202)
    job = await completed(gateway, lab, accepted["job_id"])
    screening = ok(await gateway.get(f"/api/screenings/{job['outcomes'][0]['screening_id']}", headers=lab))
    assert screening["assessment"]["advice"]["prevalence"]["deficient"] == 0.12


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "often"])
async def test_an_impossible_prevalence_is_refused_with_the_field(gateway: httpx.AsyncClient, clinic: Org,
                                                                  value: object) -> None:
    response = await gateway.put("/api/screening/policy", json={"consent_required": True,
                                                                "expected_prevalence": value},
                                 headers=clinic.headers["admin"])
    assert response.status_code == 422
    assert "expected_prevalence" in response.text


async def test_the_usual_sex_codes_are_accepted_and_others_refused(gateway: httpx.AsyncClient, clinic: Org) -> None:
    for code in ("M", "f", "Female"):
        assert (await _screen(gateway, clinic, HEALTHY_CBC | {"sex": code}))["risk_class"] in (1, 2, 3)
    patient = await consented_patient(gateway, clinic.headers["lab"])
    response = await gateway.post("/api/screening/classify", headers=clinic.headers["lab"], json={
        "patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC | {"sex": "x"}})
    assert response.status_code == 422 and "sex" in response.text


async def test_the_inference_workers_card_answers_only_a_caller_with_the_service_credential(
    platform: Platform,
) -> None:
    url = platform.urls["inference"] + "/internal/model-card"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url)).status_code == 401
        assert (await client.get(url, headers={"x-service-token": "not-the-token" * 3})).status_code == 401
        answer = await client.get(url, headers={"x-service-token": platform.env["INTERNAL_SERVICE_TOKEN"]})
    assert answer.status_code == 200 and answer.json()["family"] in ("logistic", "catboost")
