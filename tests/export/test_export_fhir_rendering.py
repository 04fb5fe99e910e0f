"""FHIR is rendered from templates, with the library as the reference: for any record, what an export emits
is byte for byte the JSON of the resources the library builds, and what the library refuses ends the export.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.bundle import BundleEntry
from fhir.resources.R4B.quantity import Quantity
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import to_json

from screening import export as ex
from screening.domain import PatientRecord, ScreeningRecord
from tests.export.test_export_mapping import ASSESSED, ORG, REJECTED

REFERRERS = [ex.relative_reference, ex.bundle_reference]
ANALYTES = [a.key for a in ex.ANALYTES]
SECRET = "Secret Patientname"
SCREENING_TYPES = [t for t in ex.ResourceType if t is not ex.ResourceType.PATIENT]


def _library(resources: list[Any]) -> list[bytes]:
    return [r.model_dump_json().encode() for r in resources]


def _emitted(resources: list[ex.JsonObject]) -> list[bytes]:
    return [to_json(r) for r in resources]


def _same_as_the_library(s: ScreeningRecord) -> None:
    for ref in REFERRERS:
        assert _emitted(ex.screening_json(s, ORG, ref)) == _library(ex.fhir_screening(s, ORG, ref))
        assert _emitted(ex.observations_json(s, ref)) == _library(ex.fhir_observations(s, ref))
        assert _emitted(ex.risk_assessment_json(s, ref)) == _library(ex.fhir_risk_assessment(s, ref))
        assert _emitted([ex.report_json(s, ORG, ref)]) == _library(ex.fhir_report(s, ORG, ref))


def _written(s: ScreeningRecord) -> None:
    """The record written to every file it can be in, second in its page (so unchecked unless its values
    call for the library)."""
    for kind in SCREENING_TYPES:
        ex.NdjsonWriter(ORG, _no_name, kind).screenings([ASSESSED, s])
    ex.BundleWriter(ORG, _no_name, uuid.uuid4(), datetime.now(UTC)).screenings([ASSESSED, s])


def _no_name(_: str | None) -> None:
    return None


EXAMPLES = {
    "assessed": ASSESSED,
    "rejected without assessment or reason": replace(REJECTED, rejection_reason=None),
    "rejected": REJECTED,
    "no risk class": replace(ASSESSED, risk_class=None),
    "unknown risk class": replace(ASSESSED, risk_class=7),
    "no model version": replace(ASSESSED, model_version=None, model_artifacts_sha256=None),
    "label not an outcome": replace(ASSESSED, label="indeterminate"),
    "only P(deficient)": replace(ASSESSED, p_normal=None, p_borderline=None),
    "some analytes": replace(ASSESSED, cbc={"hb": 12, "mcv": None, "wbc": 6.25}),
    "no analytes": replace(REJECTED, cbc={}),
    "extreme values": replace(ASSESSED, cbc=dict(zip(ANALYTES, [
        0, -0.0, 5e-324, 1e-7, 1.5e-5, 1e16, 1.2345678901234568e17, 1.7976931348623157e308, 10**30, -3,
        0.1 + 0.2,
    ], strict=True)), p_normal=0.0, p_borderline=1e-12, p_deficient=1.0),
    "microseconds and offsets": replace(
        ASSESSED, requested_at=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        recorded_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-14)))),
    "unicode text": replace(ASSESSED, model_version="2.1.0-β\n\"rc\"", model_artifacts_sha256="\\u0000 ☃"),
    "collection time given": replace(ASSESSED, collected_at=datetime(2025, 2, 27, 7, 45, tzinfo=UTC)),
    "migrated from v1": replace(ASSESSED, status="migrated", cbc={"hb": 13.1, "mcv": 101.0, "rdw": 15.2},
                                model_version="clinomic-v1/1.0"),
}


@pytest.mark.parametrize("record", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_each_resource_of_a_screening_is_the_librarys_json_byte_for_byte(record: ScreeningRecord) -> None:
    _same_as_the_library(record)
    _written(record)


PATIENTS = {
    "named": (PatientRecord(uuid.uuid4(), "P-1", "sealed", "female"), SECRET),
    "unnamed": (PatientRecord(uuid.uuid4(), "P-2", None, "male"), None),
    "empty name": (PatientRecord(uuid.uuid4(), "P-3", "sealed", "female"), ""),
    "no sex": (PatientRecord(uuid.uuid4(), "P-4", None, None), None),
    "awkward text": (PatientRecord(uuid.uuid4(), '=1+1, "x"\n', "sealed", "other"), 'Doe, "Jo"\nAnn\t☃'),
}


@pytest.mark.parametrize("record,name", PATIENTS.values(), ids=PATIENTS.keys())
def test_a_patient_is_the_librarys_json_byte_for_byte(record: PatientRecord, name: str | None) -> None:
    assert to_json(ex.patient_json(record, ORG, name)) == \
        ex.fhir_patient(record, ORG, lambda _: name).model_dump_json().encode()


def test_a_bundle_entry_is_the_librarys_json_byte_for_byte() -> None:
    for resource, built in zip(ex.screening_json(ASSESSED, ORG, ex.bundle_reference),
                               ex.fhir_screening(ASSESSED, ORG, ex.bundle_reference), strict=True):
        assert ex.bundle_entry(resource, check=True) == \
            BundleEntry(fullUrl=f"urn:uuid:{built.id}", resource=built).model_dump_json().encode()


# -- any record --------------------------------------------------------------------------------------------

NUMBERS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**40, 10**40))
#: Time zones FHIR allows (-14:00 to +14:00), whole minutes.
ZONES = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60))
INSTANTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES)
#: FHIR's genders, a code that is no gender, and text that is no code.
SEXES = [None, "female", "male", "other", "unknown", "x y", " x"]
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "\x0b", "\u2003", "a\nb", "\x00"]))


@st.composite
def screenings(draw: st.DrawFn) -> ScreeningRecord:
    assessed = draw(st.booleans())
    probability = st.floats(0, 1)
    return ScreeningRecord(
        id=draw(st.uuids()), patient_id=draw(st.uuids()), patient_external_id="P",
        patient_name_ciphertext=None,
        status="classified" if assessed else draw(st.sampled_from(["rejected", "failed"])),
        cbc=draw(st.dictionaries(st.sampled_from(ANALYTES), st.none() | NUMBERS)),
        label=draw(st.sampled_from([*ex.OUTCOMES, "other"])) if assessed else None,
        risk_class=draw(st.sampled_from([None, 0, 1, 2, 3, 4])) if assessed else None,
        p_normal=draw(st.none() | probability) if assessed else None,
        p_borderline=draw(st.none() | probability) if assessed else None,
        p_deficient=draw(probability) if assessed else None,
        model_version=draw(st.none() | TEXT) if assessed else None,
        model_artifacts_sha256=draw(st.none() | TEXT) if assessed else None,
        rejection_reason=None if assessed else draw(st.none() | TEXT), lab_id=None, doctor_id=None,
        consent_id=None, requested_at=draw(INSTANTS), recorded_at=draw(INSTANTS),
        collected_at=draw(st.none() | INSTANTS),
    )


@given(screenings())
@settings(max_examples=300, deadline=None)
def test_any_screening_is_emitted_as_the_library_builds_it_or_refused_as_the_library_refuses_it(
    s: ScreeningRecord,
) -> None:
    try:
        ex.fhir_screening(s, ORG, ex.relative_reference)
    except ValidationError:
        with pytest.raises(ex.InvalidResource):
            _written(s)
    else:
        _same_as_the_library(s)
        _written(s)


@given(st.uuids(), TEXT, st.none() | TEXT, st.sampled_from(SEXES))
@settings(deadline=None)
def test_any_patient_is_emitted_as_the_library_builds_it_or_refused_as_the_library_refuses_it(
    ident: uuid.UUID, external_id: str, name: str | None, sex: str | None,
) -> None:
    record = PatientRecord(ident, external_id, "sealed", sex)
    writer = ex.NdjsonWriter(ORG, lambda _: name, ex.ResourceType.PATIENT)
    page = [PatientRecord(uuid.uuid4(), "P", None, None), record]  # the record is not the page's first
    try:
        built = ex.fhir_patient(record, ORG, lambda _: name)
    except ValidationError:
        with pytest.raises(ex.InvalidResource):
            writer.patients(page)
    else:
        assert to_json(ex.patient_json(record, ORG, name)) == built.model_dump_json().encode()
        assert writer.patients(page).endswith(built.model_dump_json().encode() + b"\n")


@given(st.one_of(NUMBERS, st.sampled_from([math.nan, math.inf, -math.inf, True])))
def test_a_number_is_a_fhir_decimal_exactly_as_the_library_makes_it(value: Any) -> None:
    try:
        made = Quantity(value=value).model_dump()["value"]
    except ValidationError:
        with pytest.raises(ex.InvalidResource):
            ex.fhir_decimal(value)
    else:
        assert to_json(ex.fhir_decimal(value)) == to_json(made)


@given(st.uuids(), st.sampled_from(ANALYTES))
def test_observation_ids_are_the_uuid5_of_the_screening_and_analyte(screening_id: uuid.UUID,
                                                                     analyte: str) -> None:
    assert ex.uuid5_text(screening_id.bytes, f"Observation/{analyte}".encode()) == \
        str(ex.observation_id(screening_id, analyte))


# -- the library checks what is emitted ----------------------------------------------------------------------


def test_a_patient_the_library_refuses_ends_the_export_without_naming_its_values() -> None:
    writer = ex.NdjsonWriter(ORG, lambda _: SECRET, ex.ResourceType.PATIENT)
    fine = PatientRecord(uuid.uuid4(), "P-1", "sealed", "female")
    with pytest.raises(ex.InvalidResource) as refused:
        writer.patients([fine, replace(fine, id=uuid.uuid4(), external_id="\x0b")])
    assert "identifier" in str(refused.value) and SECRET not in str(refused.value) and writer.rows == 0


def test_a_screening_without_a_time_zone_ends_the_export() -> None:
    naive = replace(ASSESSED, id=uuid.uuid4(), recorded_at=datetime(2025, 3, 1, 9, 31))
    with pytest.raises(ex.InvalidResource):
        ex.NdjsonWriter(ORG, _no_name, ex.ResourceType.DIAGNOSTIC_REPORT).screenings([ASSESSED, naive])


@pytest.mark.parametrize("kind", list(ex.ResourceType))
def test_a_template_drifting_from_the_library_ends_the_export_in_the_first_page(
    monkeypatch: pytest.MonkeyPatch, kind: ex.ResourceType,
) -> None:
    template = {ex.ResourceType.PATIENT: ex._PATIENT, ex.ResourceType.OBSERVATION: ex._OBSERVATION["hb"],
                ex.ResourceType.RISK_ASSESSMENT: ex._RISK,
                ex.ResourceType.DIAGNOSTIC_REPORT: ex._REPORT}[kind]
    monkeypatch.setitem(template, "drifted", True)  # an element R4 does not have
    ndjson = ex.NdjsonWriter(ORG, _no_name, kind)
    bundle = ex.BundleWriter(ORG, _no_name, uuid.uuid4(), datetime.now(UTC))
    for writer in (ndjson, bundle):
        with pytest.raises(ex.InvalidResource, match=kind.value if writer is ndjson else "BundleEntry"):
            if kind is ex.ResourceType.PATIENT:
                writer.patients([PatientRecord(uuid.uuid4(), "P-1", None, "female")])
            else:  # a page whose first screening has no RiskAssessment still has its first one checked
                writer.screenings([REJECTED, ASSESSED])


def test_a_screening_migrated_from_v1_is_not_reported_as_a_cbc_panel() -> None:
    (report,) = ex.fhir_report(EXAMPLES["migrated from v1"], ORG, ex.relative_reference)
    assert report.code.coding is None and "v1" in report.code.text
    (full,) = ex.fhir_report(ASSESSED, ORG, ex.relative_reference)
    assert full.code.coding[0].code == ex.CBC_PANEL[0]


def test_the_values_of_a_screening_are_effective_when_the_blood_was_drawn() -> None:
    record = EXAMPLES["collection time given"]
    resources = ex.fhir_screening(record, ORG, ex.relative_reference)
    dated = [r for r in resources if getattr(r, "effectiveDateTime", None) is not None]
    assert dated and all(r.effectiveDateTime == record.collected_at for r in dated)
    assert all(r.effectiveDateTime == ASSESSED.requested_at
               for r in ex.fhir_screening(ASSESSED, ORG, ex.relative_reference) if hasattr(r, "effectiveDateTime"))
