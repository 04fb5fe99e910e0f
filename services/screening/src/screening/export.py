"""Exports of a tenant's screenings, without I/O: what a row becomes in CSV or in FHIR R4, and how a file of
many pages is framed (a header row, a Bundle written head, entries, tail, or NDJSON lines).

FHIR: the models of ``fhir.resources.R4B`` (FHIR 4.3, which keeps R4's Patient, Observation, RiskAssessment,
DiagnosticReport and Bundle) are the reference. Building and serialising a model per resource costs ~1.7 ms
of CPU per screening, so the library builds each resource once per process with placeholder values; its JSON
is the template into which each screening's values are filled, and pydantic-core (the library's own
serialiser) writes the result: the same bytes the library would write, an order of magnitude faster. The
library validates what is emitted for a sample of every page and for every record holding a value only it
can judge; a resource it refuses ends the export (``InvalidResource``). See ``docs/export.md``.
"""

from __future__ import annotations

import csv
import decimal
import hashlib
import io
import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.riskassessment import RiskAssessment, RiskAssessmentPrediction
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from screening.domain import PatientRecord, ScreeningRecord


class ExportFormat(StrEnum):
    CSV = "csv"
    FHIR = "fhir"  # one Bundle of type collection (JSON)
    NDJSON = "ndjson"  # one resource type, one resource per line (FHIR Bulk Data)


class ResourceType(StrEnum):
    PATIENT = "Patient"
    OBSERVATION = "Observation"
    RISK_ASSESSMENT = "RiskAssessment"
    DIAGNOSTIC_REPORT = "DiagnosticReport"


MEDIA_TYPES = {ExportFormat.CSV: "text/csv; charset=utf-8; header=present",
               ExportFormat.FHIR: "application/fhir+json", ExportFormat.NDJSON: "application/fhir+ndjson"}


# -- names -----------------------------------------------------------------------------------------------

#: Decrypts a stored name ciphertext, or returns None where the caller may not see names.
NameOf = Callable[[str | None], str | None]


# -- CSV -------------------------------------------------------------------------------------------------

#: The CBC as measured (canonical units, see ``shared.events.screening.UNITS``), with the age and sex given.
CBC_COLUMNS = ("hb", "rbc", "hct", "mcv", "mch", "mchc", "rdw", "wbc", "platelets", "neutrophils_pct",
               "lymphocytes_pct", "age", "sex")
EXPORT_COLUMNS = (
    "screening_id", "recorded_at", "requested_at", "status", "patient_id", "patient_external_id", "patient_name",
    "lab_id", "doctor_id", "label", "risk_class", "p_normal", "p_borderline", "p_deficient", "model_version",
    "model_artifacts_sha256", "rejection_reason", "consent_id", *CBC_COLUMNS, "collected_at",
)
#: A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_cell(value: Any) -> Any:
    """A value as a spreadsheet should show it: text that would start a formula is prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def csv_cells(s: ScreeningRecord, name_of: NameOf) -> list[Any]:
    values = {
        "screening_id": s.id, "recorded_at": s.recorded_at, "requested_at": s.requested_at, "status": s.status,
        "patient_id": s.patient_id, "patient_external_id": s.patient_external_id,
        "patient_name": name_of(s.patient_name_ciphertext), "lab_id": s.lab_id, "doctor_id": s.doctor_id,
        "label": s.label, "risk_class": s.risk_class, "p_normal": s.p_normal, "p_borderline": s.p_borderline,
        "p_deficient": s.p_deficient, "model_version": s.model_version,
        "model_artifacts_sha256": s.model_artifacts_sha256, "rejection_reason": s.rejection_reason,
        "consent_id": s.consent_id, "collected_at": s.collected_at,
    } | {k: s.cbc.get(k) for k in CBC_COLUMNS}
    return [csv_cell(values[c]) for c in EXPORT_COLUMNS]


def csv_lines(rows: Iterable[Iterable[Any]]) -> str:
    """RFC 4180: CRLF line ends; a cell with a comma, quote or line break is quoted, quotes doubled."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


# -- FHIR: codes and units -------------------------------------------------------------------------------

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
#: Clinomic's own code systems (no standard code exists for these model outputs).
MODEL_SYSTEM = "urn:clinomic:model"
B12_STATUS_SYSTEM = "urn:clinomic:b12-status"
RISK_CLASS_SYSTEM = "urn:clinomic:b12-risk-class"


@dataclass(frozen=True)
class Analyte:
    """A CBC value as a FHIR Observation: its LOINC code and its unit (display and UCUM code)."""

    key: str
    loinc: str
    display: str
    unit: str
    ucum: str


ANALYTES: tuple[Analyte, ...] = (
    Analyte("hb", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL"),
    Analyte("rbc", "789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10^6/µL", "10*6/uL"),
    Analyte("hct", "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", "%"),
    Analyte("mcv", "787-2", "MCV [Entitic volume] by Automated count", "fL", "fL"),
    Analyte("mch", "785-6", "MCH [Entitic mass] by Automated count", "pg", "pg"),
    Analyte("mchc", "786-4", "MCHC [Mass/volume] by Automated count", "g/dL", "g/dL"),
    Analyte("rdw", "788-0", "Erythrocyte distribution width [Ratio] by Automated count", "%", "%"),
    Analyte("wbc", "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10^3/µL", "10*3/uL"),
    Analyte("platelets", "777-3", "Platelets [#/volume] in Blood by Automated count", "10^3/µL", "10*3/uL"),
    Analyte("neutrophils_pct", "770-8", "Neutrophils/100 leukocytes in Blood by Automated count", "%", "%"),
    Analyte("lymphocytes_pct", "736-9", "Lymphocytes/100 leukocytes in Blood by Automated count", "%", "%"),
)
CBC_PANEL = ("58410-2", "CBC panel - Blood by Automated count")
#: Risk class (1–3, a step function of P(deficient)) as HL7's qualitative risk of the deficient outcome.
RISK_CLASSES = {1: ("low", "Low likelihood"), 2: ("moderate", "Moderate likelihood"),
                3: ("high", "High likelihood")}
OUTCOMES = ("normal", "borderline", "deficient")


def _concept(system: str, code: str, display: str, text: str | None = None) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=system, code=code, display=display)], text=text)


_LABORATORY = [_concept(OBSERVATION_CATEGORY, "laboratory", "Laboratory")]
_HEMATOLOGY = [_concept(DIAGNOSTIC_SERVICE, "HM", "Hematology")]
_ANALYTE_CODES = {a.key: _concept(LOINC, a.loinc, a.display) for a in ANALYTES}
_PANEL_CODE = _concept(LOINC, *CBC_PANEL)
#: A screening migrated from v1 holds only part of the blood count (docs/v1-migration.md): not the CBC panel.
MIGRATED_STATUS = "migrated"
_MIGRATED_CODE = CodeableConcept(text="Historical Clinomic v1 B12 screening (partial blood count; not re-scored)")
_RISK_CODE = CodeableConcept(text="Vitamin B12 deficiency risk screening")
_OUTCOME_CODES = {o: _concept(B12_STATUS_SYSTEM, o, f"B12 status {o}", o) for o in OUTCOMES}
_QUALITATIVE_RISKS = {
    rc: CodeableConcept(coding=[Coding(system=RISK_PROBABILITY, code=code, display=display),
                                Coding(system=RISK_CLASS_SYSTEM, code=str(rc), display=f"Risk class {rc}")])
    for rc, (code, display) in RISK_CLASSES.items()
}


# -- FHIR: resources built with the library (the reference) -----------------------------------------------

#: Makes the reference to a resource of a type and id: ``Patient/<id>`` in NDJSON, ``urn:uuid:<id>`` in a Bundle.
Referrer = Callable[[str, uuid.UUID | str], str]


def relative_reference(kind: str, ident: uuid.UUID | str) -> str:
    return f"{kind}/{ident}"


def bundle_reference(_: str, ident: uuid.UUID | str) -> str:
    return f"urn:uuid:{ident}"


def observation_id(screening_id: uuid.UUID, analyte: str) -> uuid.UUID:
    """Stable across exports: derived from the screening id and the analyte."""
    return uuid.uuid5(screening_id, f"Observation/{analyte}")


def risk_assessment_id(screening_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(screening_id, "RiskAssessment")


def patient_identifier_system(org: uuid.UUID) -> str:
    return f"urn:clinomic:tenant:{org}:patient"


def screening_identifier_system(org: uuid.UUID) -> str:
    return f"urn:clinomic:tenant:{org}:screening"


def fhir_patient(p: PatientRecord, org: uuid.UUID, name_of: NameOf) -> Patient:
    """Identifier (the lab's id), gender and, where the caller may see it, the name. Age is recorded per
    screening, so there is no birth date to give. Library-built: the template and the tests' reference."""
    name = name_of(p.name_ciphertext)
    return Patient(
        id=str(p.id), identifier=[Identifier(system=patient_identifier_system(org), value=p.external_id)],
        gender=p.sex, name=[HumanName(text=name)] if name else None,
    )


def _subject(s: ScreeningRecord, ref: Referrer) -> Reference:
    return Reference(reference=ref("Patient", s.patient_id))


def _results(s: ScreeningRecord, ref: Referrer) -> list[Reference]:
    return [Reference(reference=ref("Observation", observation_id(s.id, a.key))) for a in ANALYTES
            if s.cbc.get(a.key) is not None]


def fhir_observations(s: ScreeningRecord, ref: Referrer) -> list[Observation]:
    """One Observation per CBC analyte: LOINC code, value in its UCUM unit, taken when the blood was drawn (when
    the lab said; else when it asked for the screening).
    Library-built: the templates and the tests' reference."""
    subject = _subject(s, ref)
    return [
        Observation(
            id=str(observation_id(s.id, a.key)), status="final", category=_LABORATORY, code=_ANALYTE_CODES[a.key],
            subject=subject, effectiveDateTime=s.effective_at, issued=s.recorded_at,
            valueQuantity=Quantity(value=value, unit=a.unit, system=UCUM, code=a.ucum),
        )
        for a in ANALYTES if (value := s.cbc.get(a.key)) is not None
    ]


def fhir_risk_assessment(s: ScreeningRecord, ref: Referrer) -> list[RiskAssessment]:
    """The model's output: a probability per outcome, the risk class as the qualitative risk of deficiency,
    the model (version, artifacts hash) as the method, the CBC as the basis. Nothing for a rejected one.
    Library-built: the template and the tests' reference."""
    if not s.assessed:
        return []
    return [RiskAssessment(
        id=str(risk_assessment_id(s.id)), status="final", code=_RISK_CODE, subject=_subject(s, ref),
        occurrenceDateTime=s.recorded_at,
        method=CodeableConcept(
            coding=[Coding(system=MODEL_SYSTEM, code="b12-two-stage", version=s.model_version,
                           display="Clinomic two-stage B12 deficiency screening model")],
            text=method_text(s)),
        basis=[Reference(reference=ref("DiagnosticReport", s.id)), *_results(s, ref)],
        prediction=[
            RiskAssessmentPrediction(
                outcome=_OUTCOME_CODES[outcome], probabilityDecimal=p,
                qualitativeRisk=_QUALITATIVE_RISKS.get(s.risk_class or 0) if outcome == "deficient" else None)
            for outcome, p in zip(OUTCOMES, probabilities(s), strict=True) if p is not None
        ],
    )]


def fhir_report(s: ScreeningRecord, org: uuid.UUID, ref: Referrer) -> list[DiagnosticReport]:
    """The screening as a report: the CBC panel grouping its Observations, with the model's conclusion or,
    when rejected, a conclusion saying it was not assessed. Library-built: the template and the tests'
    reference."""
    return [DiagnosticReport(
        id=str(s.id), identifier=[Identifier(system=screening_identifier_system(org), value=str(s.id))],
        status="final", category=_HEMATOLOGY, code=_MIGRATED_CODE if s.status == MIGRATED_STATUS else _PANEL_CODE,
        subject=_subject(s, ref),
        effectiveDateTime=s.effective_at, issued=s.recorded_at, result=_results(s, ref) or None,
        conclusion=conclusion(s), conclusionCode=[_OUTCOME_CODES[s.label]] if s.label in _OUTCOME_CODES else None,
    )]


def fhir_screening(s: ScreeningRecord, org: uuid.UUID, ref: Referrer) -> list[Resource]:
    """Everything a screening becomes: Observations, RiskAssessment (when assessed), DiagnosticReport.
    Library-built: what the tests compare ``screening_json`` with."""
    return [*fhir_observations(s, ref), *fhir_risk_assessment(s, ref), *fhir_report(s, org, ref)]


def probabilities(s: ScreeningRecord) -> tuple[float | None, float | None, float | None]:
    """P(normal), P(borderline), P(deficient), in the order of ``OUTCOMES``."""
    return s.p_normal, s.p_borderline, s.p_deficient


def method_text(s: ScreeningRecord) -> str:
    return f"Clinomic B12 screening model {s.model_version} (artifacts sha256 {s.model_artifacts_sha256})"


def conclusion(s: ScreeningRecord) -> str:
    if not s.assessed:
        reason = f": {s.rejection_reason}" if s.rejection_reason else ""
        return f"Not assessed for vitamin B12 deficiency (screening {s.status}{reason})."
    return (f"Vitamin B12 screening: {s.label}, risk class {s.risk_class}, P(deficient) {s.p_deficient:.3f} "
            f"(model {s.model_version}).")


# -- FHIR: resources as JSON, filled into the library's templates ---------------------------------------

#: A resource as a JSON object: what the library's ``model_dump()`` gives (datetimes as datetimes, decimals as
#: ints or floats), which pydantic-core serialises to the library's JSON text.
JsonObject = dict[str, Any]


class InvalidResource(ValueError):
    """The library does not validate a resource about to be emitted: the export must end instead. The message
    names where and why, never a value (values may be PHI)."""


def _template(element: BaseModel) -> JsonObject:
    """The library's JSON of an element, parsed: every constant that the export emits comes from here."""
    result: JsonObject = json.loads(element.model_dump_json())
    return result


_NIL = uuid.UUID(int=0)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: A screening in which every optional element is present: what the templates are built from.
_FULL = ScreeningRecord(
    id=_NIL, patient_id=_NIL, patient_external_id="-", patient_name_ciphertext="-", status="classified",
    cbc={a.key: 0 for a in ANALYTES}, label=OUTCOMES[-1], risk_class=max(RISK_CLASSES), p_normal=0,
    p_borderline=0, p_deficient=0, model_version="-", model_artifacts_sha256="-", rejection_reason=None,
    lab_id=None, doctor_id=None, consent_id=None, requested_at=_EPOCH, recorded_at=_EPOCH,
)
_OBSERVATION = {a.key: _template(o)
                for a, o in zip(ANALYTES, fhir_observations(_FULL, relative_reference), strict=True)}
_QUANTITY = {key: template["valueQuantity"] for key, template in _OBSERVATION.items()}
(_RISK,) = [_template(r) for r in fhir_risk_assessment(_FULL, relative_reference)]
_METHOD_CODING = _RISK["method"]["coding"][0]
_METHOD_CODING_UNVERSIONED = {k: v for k, v in _METHOD_CODING.items() if k != "version"}
_PREDICTION = dict(zip(OUTCOMES, _RISK["prediction"], strict=True))
_QUALITATIVE_RISK = {rc: _template(concept) for rc, concept in _QUALITATIVE_RISKS.items()}
(_REPORT,) = [_template(r) for r in fhir_report(_FULL, _NIL, relative_reference)]
_REPORT_IDENTIFIER = _REPORT["identifier"][0]
_MIGRATED_REPORT_CODE = _template(_MIGRATED_CODE)
_CONCLUSION_CODE = {outcome: _template(concept) for outcome, concept in _OUTCOME_CODES.items()}
_PATIENT = _template(fhir_patient(PatientRecord(_NIL, "-", "-", "female"), _NIL, lambda _: "-"))
_PATIENT_IDENTIFIER = _PATIENT["identifier"][0]
#: FHIR's administrative genders: any other ``sex`` is left to the library to judge.
_GENDERS = frozenset({"male", "female", "other", "unknown"})


def fhir_decimal(value: Any) -> int | float:
    """A number as the library emits a FHIR decimal: an int as it is, a float as it is unless the library
    reads it as an integer (``1e+16``, which it writes in full). A non-number, NaN or an infinity is refused,
    as the library refuses it."""
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        text = repr(value)
        return int(decimal.Decimal(text)) if "e+" in text else value
    raise InvalidResource(f"a FHIR decimal is a finite int or float, not this {type(value).__name__}")


def _plain(text: str) -> bool:
    """Text that no FHIR string rule refuses (the library refuses empty and some whitespace-only strings);
    any other text is left to the library to judge."""
    return text != "" and text.isprintable()


def _ordinary(s: ScreeningRecord) -> bool:
    """Whether the templates alone make the screening's resources valid: datetimes with a time zone and a
    plain model version (its other text is embedded in text that is always valid)."""
    return (s.effective_at.utcoffset() is not None and s.recorded_at.utcoffset() is not None
            and (s.model_version is None or _plain(s.model_version)))


def _ordinary_patient(p: PatientRecord, name: str | None) -> bool:
    """Whether the template alone makes the patient valid: plain text and a FHIR gender."""
    return _plain(p.external_id) and (not name or _plain(name)) and (p.sex is None or p.sex in _GENDERS)


def patient_json(p: PatientRecord, org: uuid.UUID, name: str | None) -> JsonObject:
    """``fhir_patient``'s JSON, given the name the caller may see (None: no name element)."""
    identifier = {**_PATIENT_IDENTIFIER, "system": patient_identifier_system(org), "value": p.external_id}
    patient = {**_PATIENT, "id": str(p.id), "identifier": [identifier], "name": [{"text": name}],
               "gender": p.sex}
    if not name:
        del patient["name"]
    if p.sex is None:
        del patient["gender"]
    return patient


def uuid5_text(namespace: bytes, name: bytes) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without making UUID objects, which took half the
    time of rendering Observations."""
    digest = bytearray(hashlib.sha1(namespace + name).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: What ``observation_id`` hashes with the screening id, per analyte.
_OBSERVATION_NAMES = {a.key: f"Observation/{a.key}".encode() for a in ANALYTES}


def _observed(s: ScreeningRecord) -> list[tuple[str, str, Any]]:
    """The analytes measured: key, Observation id (``observation_id``), value."""
    namespace = s.id.bytes
    return [(a.key, uuid5_text(namespace, _OBSERVATION_NAMES[a.key]), value) for a in ANALYTES
            if (value := s.cbc.get(a.key)) is not None]


def _observations(s: ScreeningRecord, subject: JsonObject, observed: list[tuple[str, str, Any]],
                  ) -> list[JsonObject]:
    effective, recorded = s.effective_at, s.recorded_at
    return [{**_OBSERVATION[key], "id": ident, "subject": subject, "effectiveDateTime": effective,
             "issued": recorded, "valueQuantity": {**_QUANTITY[key], "value": fhir_decimal(value)}}
            for key, ident, value in observed]


def _prediction(outcome: str, p: float, risk_class: int | None) -> JsonObject:
    prediction = {**_PREDICTION[outcome], "probabilityDecimal": fhir_decimal(p)}
    if "qualitativeRisk" in prediction:
        if (qualitative := _QUALITATIVE_RISK.get(risk_class or 0)) is None:
            del prediction["qualitativeRisk"]
        else:
            prediction["qualitativeRisk"] = qualitative
    return prediction


def _risk_assessment(s: ScreeningRecord, subject: JsonObject, basis: list[JsonObject]) -> list[JsonObject]:
    if not s.assessed:
        return []
    version = s.model_version
    coding = _METHOD_CODING_UNVERSIONED if version is None else {**_METHOD_CODING, "version": version}
    risk = {**_RISK, "id": str(risk_assessment_id(s.id)), "subject": subject,
            "occurrenceDateTime": s.recorded_at, "basis": basis,
            "method": {**_RISK["method"], "coding": [coding], "text": method_text(s)},
            "prediction": [_prediction(outcome, p, s.risk_class)
                           for outcome, p in zip(OUTCOMES, probabilities(s), strict=True) if p is not None]}
    if not risk["prediction"]:
        del risk["prediction"]
    return [risk]


def _report(s: ScreeningRecord, org: uuid.UUID, subject: JsonObject, results: list[JsonObject]) -> JsonObject:
    ident = str(s.id)
    identifier = {**_REPORT_IDENTIFIER, "system": screening_identifier_system(org), "value": ident}
    report = {**_REPORT, "id": ident, "identifier": [identifier],
              "subject": subject, "effectiveDateTime": s.effective_at, "issued": s.recorded_at,
              "result": results, "conclusion": conclusion(s),
              "conclusionCode": [_CONCLUSION_CODE.get(s.label or "")]}
    if s.status == MIGRATED_STATUS:
        report["code"] = _MIGRATED_REPORT_CODE
    if not results:
        del report["result"]
    if s.label not in _CONCLUSION_CODE:
        del report["conclusionCode"]
    return report


def observations_json(s: ScreeningRecord, ref: Referrer) -> list[JsonObject]:
    """``fhir_observations``' JSON."""
    return _observations(s, {"reference": ref("Patient", s.patient_id)}, _observed(s))


def risk_assessment_json(s: ScreeningRecord, ref: Referrer) -> list[JsonObject]:
    """``fhir_risk_assessment``'s JSON."""
    if not s.assessed:
        return []
    results = [{"reference": ref("Observation", ident)} for _, ident, _ in _observed(s)]
    basis = [{"reference": ref("DiagnosticReport", s.id)}, *results]
    return _risk_assessment(s, {"reference": ref("Patient", s.patient_id)}, basis)


def report_json(s: ScreeningRecord, org: uuid.UUID, ref: Referrer) -> JsonObject:
    """``fhir_report``'s JSON."""
    results = [{"reference": ref("Observation", ident)} for _, ident, _ in _observed(s)]
    return _report(s, org, {"reference": ref("Patient", s.patient_id)}, results)


def screening_json(s: ScreeningRecord, org: uuid.UUID, ref: Referrer) -> list[JsonObject]:
    """``fhir_screening``'s JSON, deriving the ids and references its resources share once."""
    subject = {"reference": ref("Patient", s.patient_id)}
    observed = _observed(s)
    results = [{"reference": ref("Observation", ident)} for _, ident, _ in observed]
    basis = [{"reference": ref("DiagnosticReport", s.id)}, *results]
    return [*_observations(s, subject, observed), *_risk_assessment(s, subject, basis),
            _report(s, org, subject, results)]


_MODELS: dict[str, type[BaseModel]] = {
    "Patient": Patient, "Observation": Observation, "RiskAssessment": RiskAssessment,
    "DiagnosticReport": DiagnosticReport,
}


def checked(model: type[BaseModel], text: bytes) -> bytes:
    """``text``, once the library has validated it as a ``model``."""
    try:
        model.model_validate_json(text)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in error.errors())
        raise InvalidResource(f"{model.__name__} does not validate: {problems}") from None
    return text


def resource_text(resource: JsonObject, check: bool) -> bytes:
    """The resource's JSON text, validated by the library first when ``check``."""
    text = to_json(resource)
    return checked(_MODELS[resource["resourceType"]], text) if check else text


def bundle_entry(resource: JsonObject, check: bool) -> bytes:
    """The resource as an entry of a Bundle of UUID-identified resources (``fullUrl`` ``urn:uuid:<id>``)."""
    text = to_json({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
    return checked(BundleEntry, text) if check else text


#: What a screening becomes in the file being written.
Render = Callable[[ScreeningRecord], list[JsonObject]]


def _screening_resources(page: Iterable[ScreeningRecord], render: Render) -> Iterator[tuple[JsonObject, bool]]:
    """Each resource of a page with whether the library checks it: all of the page's first screening's, the
    first of each type (a RiskAssessment page may start with a rejected screening), and all of a screening
    holding a value that the templates cannot vouch for."""
    seen: set[str] = set()
    for i, s in enumerate(page):
        everything = i == 0 or not _ordinary(s)
        for resource in render(s):
            kind = resource["resourceType"]
            yield resource, everything or kind not in seen
            seen.add(kind)


def _patient_resources(page: Iterable[PatientRecord], org: uuid.UUID, name_of: NameOf,
                       ) -> Iterator[tuple[JsonObject, bool]]:
    """Each patient of a page with whether the library checks it: the first, and any whose text only it can
    judge."""
    for i, p in enumerate(page):
        name = name_of(p.name_ciphertext)
        yield patient_json(p, org, name), i == 0 or not _ordinary_patient(p, name)


# -- framing ---------------------------------------------------------------------------------------------


class ExportWriter:
    """Turns pages of patients and screenings into the bytes (UTF-8) of one export file, in order.

    ``with_patients``/``with_screenings`` say which pages the file needs; ``rows`` counts the records
    written (CSV data rows, NDJSON lines, Bundle entries).
    """

    with_patients = False
    with_screenings = True

    def __init__(self, org: uuid.UUID, name_of: NameOf) -> None:
        self.org = org
        self.name_of = name_of
        self.rows = 0

    def head(self) -> bytes:
        return b""

    def patients(self, page: Iterable[PatientRecord]) -> bytes:
        raise NotImplementedError

    def screenings(self, page: Iterable[ScreeningRecord]) -> bytes:
        raise NotImplementedError

    def tail(self) -> bytes:
        return b""


class CsvWriter(ExportWriter):
    def head(self) -> bytes:
        return csv_lines([EXPORT_COLUMNS]).encode()

    def screenings(self, page: Iterable[ScreeningRecord]) -> bytes:
        rows = [csv_cells(s, self.name_of) for s in page]
        self.rows += len(rows)
        return csv_lines(rows).encode()


class BundleWriter(ExportWriter):
    """A Bundle of type collection, written piece by piece: the head (the library's serialisation of the
    Bundle without entries, left open), each entry, the tail. Patients come first, each once."""

    with_patients = True

    def __init__(self, org: uuid.UUID, name_of: NameOf, export_id: uuid.UUID, at: datetime) -> None:
        super().__init__(org, name_of)
        self.bundle = Bundle(id=str(export_id), type="collection", timestamp=at)

    def head(self) -> bytes:
        return self.bundle.model_dump_json()[:-1].encode()  # the library's JSON object, left open for entries

    def _entries(self, resources: Iterable[tuple[JsonObject, bool]]) -> bytes:
        entries = [bundle_entry(resource, check) for resource, check in resources]
        if not entries:
            return b""
        lead = b',"entry":[' if self.rows == 0 else b","
        self.rows += len(entries)
        return lead + b",".join(entries)

    def patients(self, page: Iterable[PatientRecord]) -> bytes:
        return self._entries(_patient_resources(page, self.org, self.name_of))

    def screenings(self, page: Iterable[ScreeningRecord]) -> bytes:
        org = self.org
        return self._entries(_screening_resources(page, lambda s: screening_json(s, org, bundle_reference)))

    def tail(self) -> bytes:
        return b"]}" if self.rows else b"}"


class NdjsonWriter(ExportWriter):
    """One resource type, one resource per line, references relative (``Patient/<id>``), as FHIR Bulk Data."""

    def __init__(self, org: uuid.UUID, name_of: NameOf, resource_type: ResourceType) -> None:
        super().__init__(org, name_of)
        self.resource_type = resource_type
        self.with_patients = resource_type is ResourceType.PATIENT
        self.with_screenings = not self.with_patients

    def _lines(self, resources: Iterable[tuple[JsonObject, bool]]) -> bytes:
        lines = [resource_text(resource, check) for resource, check in resources]
        self.rows += len(lines)
        return b"\n".join([*lines, b""]) if lines else b""

    def patients(self, page: Iterable[PatientRecord]) -> bytes:
        return self._lines(_patient_resources(page, self.org, self.name_of))

    def screenings(self, page: Iterable[ScreeningRecord]) -> bytes:
        render = _NDJSON_RESOURCES[self.resource_type]
        return self._lines(_screening_resources(page, lambda s: render(s, self.org)))


#: What each NDJSON type makes of a screening (Patients come from their own pages).
_NDJSON_RESOURCES: dict[ResourceType, Callable[[ScreeningRecord, uuid.UUID], list[JsonObject]]] = {
    ResourceType.OBSERVATION: lambda s, _: observations_json(s, relative_reference),
    ResourceType.RISK_ASSESSMENT: lambda s, _: risk_assessment_json(s, relative_reference),
    ResourceType.DIAGNOSTIC_REPORT: lambda s, org: [report_json(s, org, relative_reference)],
}
