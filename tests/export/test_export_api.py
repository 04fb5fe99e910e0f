"""``GET /api/screening/export`` through the gateway: FHIR R4 (Bundle and NDJSON) validated with the FHIR model
library, CSV quoting and formula neutralisation, the history's filters and scopes, validation and auditing."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from tests.export.conftest import (
    AWKWARD_NAME, DEFICIENT_CBC, FORMULA_NAME, REJECTION, Clinic, export, fresh_admin, in_ledger, insert_rejected,
    references,
)
from tests.records.helpers import classified, consented_patient, new_org, ok, record_event

#: The analytes' LOINC codes and UCUM units, as the issue specifies them.
LOINC_UCUM = {
    "hb": ("718-7", "g/dL"), "rbc": ("789-8", "10*6/uL"), "hct": ("4544-3", "%"), "mcv": ("787-2", "fL"),
    "mch": ("785-6", "pg"), "mchc": ("786-4", "g/dL"), "rdw": ("788-0", "%"), "wbc": ("6690-2", "10*3/uL"),
    "platelets": ("777-3", "10*3/uL"), "neutrophils_pct": ("770-8", "%"), "lymphocytes_pct": ("736-9", "%"),
}
CSV_HEADER = [
    "screening_id", "recorded_at", "requested_at", "status", "patient_id", "patient_external_id", "patient_name",
    "lab_id", "doctor_id", "label", "risk_class", "p_normal", "p_borderline", "p_deficient", "model_version",
    "model_artifacts_sha256", "rejection_reason", "consent_id", "hb", "rbc", "hct", "mcv", "mch", "mchc", "rdw",
    "wbc", "platelets", "neutrophils_pct", "lymphocytes_pct", "age", "sex", "collected_at",
]
MODELS = {"Patient": Patient, "Observation": Observation, "RiskAssessment": RiskAssessment,
          "DiagnosticReport": DiagnosticReport}


@pytest.fixture(scope="module")
async def bundle_text(gateway: httpx.AsyncClient, clinic: Clinic) -> str:
    response = await export(gateway, await fresh_admin(gateway, clinic.org), format="fhir")
    assert response.status_code == 200 and response.headers["content-type"] == "application/fhir+json"
    return response.text


@pytest.fixture(scope="module")
def bundle(bundle_text: str) -> Bundle:
    return Bundle.model_validate_json(bundle_text)


@pytest.fixture(scope="module")
async def csv_text(gateway: httpx.AsyncClient, clinic: Clinic) -> str:
    response = await export(gateway, await fresh_admin(gateway, clinic.org))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    return response.text


def _resources(bundle: Bundle, kind: str) -> list[Any]:
    return [e.resource for e in bundle.entry if e.resource.get_resource_type() == kind]


def _of_screening(bundle: Bundle, screening_id: str) -> tuple[Any, list[Any], list[Any]]:
    """The screening's DiagnosticReport, its Observations and its RiskAssessments."""
    (report,) = [r for r in _resources(bundle, "DiagnosticReport") if r.id == screening_id]
    results = {ref.reference for ref in report.result}
    observations = [o for o in _resources(bundle, "Observation") if f"urn:uuid:{o.id}" in results]
    risks = [r for r in _resources(bundle, "RiskAssessment")
             if f"urn:uuid:{report.id}" in {b.reference for b in r.basis}]
    return report, observations, risks


def ok_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.text


def _ids(text: str) -> list[str]:
    return [row["screening_id"] for row in csv.DictReader(io.StringIO(text, newline=""))]


# -- FHIR --------------------------------------------------------------------------------------------------


def test_a_fhir_bundle_validates_and_every_resource_round_trips_through_the_library(
    bundle_text: str, bundle: Bundle,
) -> None:
    assert bundle.type == "collection" and len(bundle.entry) == 3 + 4 * 13 + 12
    emitted = json.loads(bundle_text)["entry"]
    for entry, raw in zip(bundle.entry, emitted, strict=True):
        resource = entry.resource
        again = type(resource).model_validate_json(resource.model_dump_json())
        assert again == resource and json.loads(again.model_dump_json()) == raw["resource"]
        assert entry.fullUrl == f"urn:uuid:{resource.id}"
    assert set(references(json.loads(bundle_text))) <= {e.fullUrl for e in bundle.entry}


def test_observations_carry_the_loinc_code_and_ucum_unit_of_their_analyte(bundle: Bundle, clinic: Clinic) -> None:
    _, observations, _ = _of_screening(bundle, clinic.screenings[0]["id"])
    found = {(o.code.coding[0].system, o.code.coding[0].code): o.valueQuantity for o in observations}
    assert set(found) == {("http://loinc.org", code) for code, _ in LOINC_UCUM.values()}
    for analyte, (code, unit) in LOINC_UCUM.items():
        quantity = found["http://loinc.org", code]
        assert (quantity.system, quantity.code, float(quantity.value)) == \
            ("http://unitsofmeasure.org", unit, DEFICIENT_CBC[analyte])
    assert {(o.status, o.category[0].coding[0].code) for o in observations} == {("final", "laboratory")}


def test_the_risk_assessment_carries_the_models_output_and_version(bundle: Bundle, clinic: Clinic) -> None:
    screening = clinic.screenings[0]
    assessment = screening["assessment"]
    _, observations, (risk,) = _of_screening(bundle, screening["id"])
    assert risk.method.coding[0].version == assessment["model"]["version"]
    assert assessment["model"]["artifacts_sha256"] in risk.method.text
    predicted = {p.outcome.coding[0].code: float(p.probabilityDecimal) for p in risk.prediction}
    assert predicted == pytest.approx(assessment["probabilities"])
    (deficient,) = [p for p in risk.prediction if p.outcome.coding[0].code == "deficient"]
    assert str(assessment["risk_class"]) in {c.code for c in deficient.qualitativeRisk.coding}
    assert {f"urn:uuid:{o.id}" for o in observations} <= {b.reference for b in risk.basis}


def test_a_patients_name_is_exported_where_recorded_and_absent_otherwise(bundle: Bundle, clinic: Clinic) -> None:
    patients = {p.id: p for p in _resources(bundle, "Patient")}
    assert [n.text for n in patients[clinic.referred["id"]].name] == [AWKWARD_NAME]
    assert patients[clinic.unnamed["id"]].name is None
    assert all(p.birthDate is None for p in patients.values())


def test_each_patient_appears_once_in_a_bundle(bundle: Bundle, clinic: Clinic) -> None:
    ids = [p.id for p in _resources(bundle, "Patient")]
    assert sorted(ids) == sorted(p["id"] for p in clinic.patients)


def test_a_rejected_screening_exports_its_observations_and_a_report_but_no_risk_assessment(
    bundle: Bundle, clinic: Clinic,
) -> None:
    report, observations, risks = _of_screening(bundle, clinic.rejected[0])
    assert len(observations) == 11 and risks == []
    assert report.conclusion.startswith("Not assessed") and REJECTION in report.conclusion


@pytest.mark.parametrize("kind,count", [("Patient", 3), ("Observation", 5 * 11), ("RiskAssessment", 4),
                                        ("DiagnosticReport", 5)])
async def test_ndjson_lines_validate_as_their_resource_type_and_count_what_was_screened(
    gateway: httpx.AsyncClient, clinic: Clinic, kind: str, count: int,
) -> None:
    response = await export(gateway, await fresh_admin(gateway, clinic.org), format="ndjson", type=kind)
    assert response.status_code == 200 and response.headers["content-type"] == "application/fhir+ndjson"
    lines = response.text.splitlines()
    assert len(lines) == count
    resources = [MODELS[kind].model_validate_json(line) for line in lines]
    assert all(json.loads(r.model_dump_json()) == json.loads(line) for r, line in zip(resources, lines, strict=True))
    if kind != "Patient":
        assert {r.subject.reference for r in resources} <= {f"Patient/{p['id']}" for p in clinic.patients}


async def test_an_export_holding_a_resource_the_fhir_library_refuses_is_cut_off_and_audited_as_incomplete(
    gateway: httpx.AsyncClient, engine: AsyncEngine, platform: Platform,
) -> None:
    org = await new_org(gateway, "refused", roles=())
    admin = org.headers["admin"]
    ok(await gateway.get("/api/screening/history", headers=admin))  # the tenant's schema exists from here on
    schema, patient = f"tenant_{uuid.UUID(org.id).hex}", uuid.uuid4()
    async with engine.begin() as conn:  # an empty identifier value: FHIR strings are never empty
        await conn.execute(text(f'INSERT INTO "{schema}".patients (id, external_id, sex) VALUES (:id, :e, :sex)'),
                           {"id": patient, "e": "", "sex": "male"})
    await insert_rejected(engine, schema, str(patient))
    async with gateway.stream("GET", "/api/screening/export", params={"format": "fhir"},
                              headers=admin) as response:
        assert response.status_code == 200
        export_id = re.search(r"screenings-([0-9a-f-]{36})\.json",
                              response.headers["content-disposition"]).group(1)  # type: ignore[union-attr]
        with pytest.raises(httpx.RemoteProtocolError):  # no final chunk: never taken for a complete file
            await response.aread()
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    ended = await record_event(bootstrap, "RecordsExported", export_id=export_id)
    assert (ended["payload"]["completed"], ended["payload"]["row_count"]) == (False, 0)


# -- CSV ---------------------------------------------------------------------------------------------------


def test_the_csv_starts_with_a_header_naming_its_columns(csv_text: str, clinic: Clinic) -> None:
    rows = list(csv.reader(io.StringIO(csv_text, newline="")))
    assert rows[0] == CSV_HEADER and len(rows) == 1 + len(clinic.screening_ids)
    assert all(len(row) == len(CSV_HEADER) for row in rows)


def test_a_value_with_comma_and_quote_round_trips_through_a_csv_reader(
    csv_text: str, clinic: Clinic,
) -> None:
    assert '"Doe, ""Jo"" Ann Exportova"' in csv_text and csv_text.endswith("\r\n")
    rows = [r for r in csv.DictReader(io.StringIO(csv_text, newline="")) if r["patient_id"] == clinic.referred["id"]]
    assert [r["patient_name"] for r in rows] == [AWKWARD_NAME, AWKWARD_NAME]


def test_a_value_a_spreadsheet_would_evaluate_is_neutralised(csv_text: str, clinic: Clinic) -> None:
    rows = [r for r in csv.DictReader(io.StringIO(csv_text, newline="")) if r["patient_id"] == clinic.formula["id"]]
    assert [r["patient_name"] for r in rows] == ["'" + FORMULA_NAME]


async def test_the_gateway_streams_the_export_as_a_named_download(gateway: httpx.AsyncClient,
                                                                  clinic: Clinic) -> None:
    response = await export(gateway, await fresh_admin(gateway, clinic.org), format="ndjson", type="Patient")
    assert response.headers["transfer-encoding"] == "chunked" and "content-length" not in response.headers
    assert response.headers["content-disposition"].startswith('attachment; filename="Patient-')


# -- who sees what -----------------------------------------------------------------------------------------


async def test_the_history_filters_apply_to_an_export(gateway: httpx.AsyncClient, clinic: Clinic) -> None:
    headers = await fresh_admin(gateway, clinic.org)
    high = clinic.screenings[0]["assessment"]["risk_class"]
    expected = {s["id"] for s in clinic.screenings if s["assessment"]["risk_class"] == high}
    assert set(_ids(ok_text(await export(gateway, headers, risk_class=high)))) == expected
    by_patient = await export(gateway, headers, format="ndjson", type="DiagnosticReport",
                              patient_id=clinic.unnamed["id"])
    assert {json.loads(line)["id"] for line in ok_text(by_patient).splitlines()} == \
        {clinic.screenings[3]["id"], clinic.rejected[0]}


async def test_a_doctor_exports_only_the_patients_referred_to_them(gateway: httpx.AsyncClient,
                                                                  clinic: Clinic) -> None:
    doctor = clinic.org.headers["doctor"]
    assert set(_ids(ok_text(await export(gateway, doctor)))) == {s["id"] for s in clinic.screenings[:2]}
    patients = ok_text(await export(gateway, doctor, format="ndjson", type="Patient")).splitlines()
    assert [(p["id"], p["name"][0]["text"]) for p in map(json.loads, patients)] == \
        [(clinic.referred["id"], AWKWARD_NAME)]


@pytest.mark.parametrize("role", ["lab", "auditor"])
async def test_a_lab_technician_or_an_auditor_may_not_export(gateway: httpx.AsyncClient, clinic: Clinic,
                                                             role: str) -> None:
    assert (await export(gateway, clinic.org.headers[role], format="fhir")).status_code == 403


async def test_another_organisations_screenings_never_appear(gateway: httpx.AsyncClient, clinic: Clinic,
                                                             lab: dict[str, str]) -> None:
    elsewhere = await consented_patient(gateway, lab, name="Elsewhere Otherorg")
    screening = await classified(gateway, lab, elsewhere["external_id"])
    headers = await fresh_admin(gateway, clinic.org)
    everything = ok_text(await export(gateway, headers))
    assert not any(secret in everything for secret in
                   (elsewhere["id"], elsewhere["external_id"], "Elsewhere Otherorg", screening["id"]))
    assert _ids(ok_text(await export(gateway, headers, patient_id=elsewhere["id"]))) == []


@pytest.fixture(scope="module")
async def validated_admin(gateway: httpx.AsyncClient, clinic: Clinic) -> dict[str, str]:
    return await fresh_admin(gateway, clinic.org)


@pytest.mark.parametrize("params,field", [
    ({"format": "xml"}, "query.format"), ({"format": "ndjson"}, "query.type"),
    ({"format": "ndjson", "type": "Condition"}, "query.type"), ({"type": "Patient"}, "query.type"),
    ({"risk_class": "7"}, "query.risk_class"), ({"since": "yesterday"}, "query.since"),
])
async def test_an_invalid_export_parameter_is_a_422_naming_the_field(
    gateway: httpx.AsyncClient, validated_admin: dict[str, str], params: dict[str, str], field: str,
) -> None:
    response = await export(gateway, validated_admin, **params)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


# -- audit -------------------------------------------------------------------------------------------------


async def test_each_export_is_audited_in_the_ledger_when_it_starts_and_ends_without_phi(
    gateway: httpx.AsyncClient, platform: Platform, engine: AsyncEngine, clinic: Clinic,
) -> None:
    response = await export(gateway, await fresh_admin(gateway, clinic.org), format="fhir",
                            patient_id=clinic.referred["id"])
    export_id = Bundle.model_validate_json(ok_text(response)).id
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    started = await record_event(bootstrap, "RecordsExportStarted", export_id=export_id)
    ended = await record_event(bootstrap, "RecordsExported", export_id=export_id)
    assert started["tenant_id"] == ended["tenant_id"] == clinic.org.id
    assert {k: started["payload"][k] for k in ("format", "filters", "screening_count", "patient_count",
                                               "names_included")} == \
        {"format": "fhir", "filters": ["patient_id"], "screening_count": 2, "patient_count": 1,
         "names_included": True}
    assert (ended["payload"]["row_count"], ended["payload"]["completed"]) == (1 + 2 * 13, True)
    assert await in_ledger(engine, started["event_id"]) and await in_ledger(engine, ended["event_id"])
    recorded = json.dumps([started, ended])
    assert not any(secret in recorded for secret in ("Exportova", clinic.referred["external_id"], "gAAAA"))
