"""The export's pure mapping, without the platform: a screening's FHIR resources, CSV cells and file framing."""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.patient import Patient
from hypothesis import given
from hypothesis import strategies as st

from screening import export as ex
from screening.domain import PatientRecord, ScreeningRecord
from tests.export.conftest import references

ORG = uuid.uuid4()
CBC = {"hb": 9.1, "rbc": 2.6, "hct": 28.9, "mcv": 111.0, "mch": 35.0, "mchc": 31.5, "rdw": 18.2, "wbc": 3.4,
       "platelets": 120.0, "neutrophils_pct": 55.0, "lymphocytes_pct": 35.0, "age": 67.0, "sex": "female"}
ASSESSED = ScreeningRecord(
    id=uuid.uuid4(), patient_id=uuid.uuid4(), patient_external_id="P-1", patient_name_ciphertext="sealed",
    status="classified", cbc=CBC, label="deficient", risk_class=3, p_normal=0.1, p_borderline=0.2,
    p_deficient=0.7, model_version="2.1.0", model_artifacts_sha256="ab" * 32, rejection_reason=None, lab_id=None,
    doctor_id=None, consent_id=None, requested_at=datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
    recorded_at=datetime(2025, 3, 1, 9, 31, tzinfo=UTC),
)
REJECTED = replace(ASSESSED, id=uuid.uuid4(), status="rejected", label=None, risk_class=None, p_normal=None,
                   p_borderline=None, p_deficient=None, model_version=None, model_artifacts_sha256=None,
                   rejection_reason="model unavailable")


def _opened(ciphertext: str | None) -> str | None:
    return {"sealed": "Jane Example"}.get(ciphertext or "")


def _patient(record: PatientRecord, name_of: ex.NameOf = _opened) -> Patient:
    """The patient as an NDJSON export writes it, read back with the library."""
    return Patient.model_validate_json(ex.NdjsonWriter(ORG, name_of, ex.ResourceType.PATIENT).patients([record]))


def test_a_patient_has_a_name_only_when_the_caller_may_see_it() -> None:
    patient = PatientRecord(uuid.uuid4(), "P-1", "sealed", "female")
    assert _patient(patient).name[0].text == "Jane Example"
    assert _patient(patient, lambda _: None).name is None
    assert _patient(replace(patient, name_ciphertext=None)).name is None


def test_a_patient_is_identified_by_the_labs_id_in_the_tenants_system_and_has_no_invented_birth_date() -> None:
    resource = _patient(PatientRecord(uuid.uuid4(), "P-7", None, "male"))
    assert [(i.system, i.value) for i in resource.identifier] == [(f"urn:clinomic:tenant:{ORG}:patient", "P-7")]
    assert resource.gender == "male" and resource.birthDate is None


def test_a_rejected_screening_has_observations_and_a_report_saying_it_was_not_assessed_but_no_risk() -> None:
    resources = ex.screening_json(REJECTED, ORG, ex.relative_reference)
    assert [r["resourceType"] for r in resources] == ["Observation"] * 11 + ["DiagnosticReport"]
    report = DiagnosticReport.model_validate(resources[-1])
    assert report.conclusion.startswith("Not assessed") and "model unavailable" in report.conclusion


def test_resource_ids_are_stable_across_exports() -> None:
    first = [r["id"] for r in ex.screening_json(ASSESSED, ORG, ex.relative_reference)]
    assert first == [r["id"] for r in ex.screening_json(ASSESSED, ORG, ex.bundle_reference)]
    assert len(set(first)) == len(first) and str(ASSESSED.id) in first


def test_a_bundle_without_screenings_is_a_valid_empty_collection() -> None:
    writer = ex.BundleWriter(ORG, _opened, uuid.uuid4(), datetime.now(UTC))
    bundle = Bundle.model_validate_json(writer.head() + writer.patients([]) + writer.screenings([]) + writer.tail())
    assert bundle.type == "collection" and not bundle.entry


def test_a_bundle_written_in_pages_is_one_valid_bundle_whose_references_resolve() -> None:
    writer = ex.BundleWriter(ORG, _opened, uuid.uuid4(), datetime.now(UTC))
    patient = PatientRecord(ASSESSED.patient_id, "P-1", "sealed", "female")
    text = writer.head() + writer.patients([patient]) + writer.screenings([ASSESSED]) \
        + writer.screenings([replace(REJECTED, patient_id=patient.id)]) + writer.tail()
    bundle = Bundle.model_validate_json(text)
    assert len(bundle.entry) == writer.rows == 1 + 13 + 12
    found = references(json.loads(text))
    assert found and set(found) <= {e.fullUrl for e in bundle.entry}


def test_ndjson_writes_one_resource_of_the_asked_type_per_line() -> None:
    writer = ex.NdjsonWriter(ORG, _opened, ex.ResourceType.RISK_ASSESSMENT)
    lines = writer.screenings([ASSESSED, REJECTED]).splitlines()
    assert len(lines) == writer.rows == 1
    assert json.loads(lines[0])["resourceType"] == "RiskAssessment"


@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r", "\n"])
def test_a_cell_that_a_spreadsheet_would_evaluate_is_shown_as_text(lead: str) -> None:
    assert ex.csv_cell(f"{lead}HYPERLINK(\"http://x\")") == f"'{lead}HYPERLINK(\"http://x\")"


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_any_text_survives_csv_quoting_unchanged_or_with_its_formula_neutralised(values: list[str]) -> None:
    cells = [ex.csv_cell(v) for v in values]
    (read,) = list(csv.reader(io.StringIO(ex.csv_lines([cells]), newline="")))
    assert read == [v if not v.startswith(ex.FORMULA_LEADS) else "'" + v for v in values]


def test_a_csv_row_has_a_cell_per_column_with_names_only_where_visible() -> None:
    named = ex.csv_cells(ASSESSED, _opened)
    hidden = ex.csv_cells(ASSESSED, lambda _: None)
    column = ex.EXPORT_COLUMNS.index("patient_name")
    assert len(named) == len(ex.EXPORT_COLUMNS) and named[column] == "Jane Example" and hidden[column] == ""

