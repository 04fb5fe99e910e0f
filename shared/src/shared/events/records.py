"""Clinical-record events: what was created, changed, viewed or exported in a tenant, by whom. No PHI.

Payloads carry record ids (random UUIDs), the *names* of changed fields and counts; never a patient name, a
consent text, a ciphertext or an external patient id. The envelope's ``tenant_id`` is the organisation whose
records they are and its ``actor`` the user (id and role) who acted; the audit ledger records every one.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict

#: The topic of every record event (``clinomic.``-prefixed, so the audit ledger subscribes by pattern).
RECORDS_TOPIC = "clinomic.records"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class LabCreatedV1(_Event):
    lab_id: uuid.UUID


class LabUpdatedV1(_Event):
    lab_id: uuid.UUID
    changed_fields: list[str]


class LabDeactivatedV1(_Event):
    lab_id: uuid.UUID


class DoctorCreatedV1(_Event):
    doctor_id: uuid.UUID
    user_id: uuid.UUID | None


class DoctorUpdatedV1(_Event):
    doctor_id: uuid.UUID
    changed_fields: list[str]


class DoctorDeactivatedV1(_Event):
    doctor_id: uuid.UUID


class PatientCreatedV1(_Event):
    patient_id: uuid.UUID
    lab_id: uuid.UUID | None
    referring_doctor_id: uuid.UUID | None
    via: Literal["api", "classify"]


class PatientUpdatedV1(_Event):
    """An explicit change of a patient's details; ``changed_fields`` names them (``name`` included)."""

    patient_id: uuid.UUID
    changed_fields: list[str]


class ConsentRecordedV1(_Event):
    consent_id: uuid.UUID
    patient_id: uuid.UUID
    consent_type: str
    method: Literal["verbal", "written", "electronic"]


class ConsentRevokedV1(_Event):
    consent_id: uuid.UUID
    patient_id: uuid.UUID
    consent_type: str


class ConsentPolicyChangedV1(_Event):
    consent_required: bool
    consent_type: str


class ExpectedPrevalenceDeclaredV1(_Event):
    """The organisation declared (or withdrew, None) the expected fraction of its screened adults with serum
    B12 < 200 pg/mL; the model corrects its probabilities to it from then on."""

    expected_prevalence: float | None
    previous: float | None


class PhiViewedV1(_Event):
    """A response that showed PHI (decrypted names or consent texts) of these patients to the actor."""

    resource: Literal["patient", "consent", "screening"]
    endpoint: str
    patient_ids: list[uuid.UUID]
    record_count: int


ExportFormat = Literal["csv", "fhir", "ndjson"]
ExportResourceType = Literal["Patient", "Observation", "RiskAssessment", "DiagnosticReport"]


class RecordsExportStartedV1(_Event):
    """An export is about to stream (committed before its first byte, so even an export the client abandons
    is on record): what it holds, in which form, and whether names are in it. ``export_id`` links it to its
    ``RecordsExported`` and is the id of an exported FHIR Bundle."""

    export_id: uuid.UUID
    resource: Literal["screenings"]
    format: ExportFormat
    resource_type: ExportResourceType | None
    filters: list[str]
    screening_count: int
    patient_count: int
    names_included: bool


class RecordsExportedV1(_Event):
    """An export ended. ``row_count``: records written (CSV data rows, NDJSON lines, Bundle entries);
    ``completed`` is false when the stream stopped early (the client left, or an error)."""

    resource: Literal["screenings"]
    format: ExportFormat
    row_count: int
    patient_count: int
    filters: list[str]
    export_id: uuid.UUID | None = None
    resource_type: ExportResourceType | None = None
    completed: bool = True


class ScreeningAdmissionRefusedV1(_Event):
    """A classify request refused before anything was accepted or published."""

    reason: Literal["consent_required", "patient_details_mismatch"]
    patient_id: uuid.UUID | None
    fields: list[str]


LAB_CREATED = ("LabCreated", 1)
LAB_UPDATED = ("LabUpdated", 1)
LAB_DEACTIVATED = ("LabDeactivated", 1)
DOCTOR_CREATED = ("DoctorCreated", 1)
DOCTOR_UPDATED = ("DoctorUpdated", 1)
DOCTOR_DEACTIVATED = ("DoctorDeactivated", 1)
PATIENT_CREATED = ("PatientCreated", 1)
PATIENT_UPDATED = ("PatientUpdated", 1)
CONSENT_RECORDED = ("ConsentRecorded", 1)
CONSENT_REVOKED = ("ConsentRevoked", 1)
CONSENT_POLICY_CHANGED = ("ConsentPolicyChanged", 1)
EXPECTED_PREVALENCE_DECLARED = ("ExpectedPrevalenceDeclared", 1)
PHI_VIEWED = ("PhiViewed", 1)
RECORDS_EXPORT_STARTED = ("RecordsExportStarted", 1)
RECORDS_EXPORTED = ("RecordsExported", 1)
SCREENING_ADMISSION_REFUSED = ("ScreeningAdmissionRefused", 1)

#: Event type of each payload class, so emitters pass the payload only.
KINDS: dict[type[BaseModel], tuple[str, int]] = {
    LabCreatedV1: LAB_CREATED, LabUpdatedV1: LAB_UPDATED, LabDeactivatedV1: LAB_DEACTIVATED,
    DoctorCreatedV1: DOCTOR_CREATED, DoctorUpdatedV1: DOCTOR_UPDATED, DoctorDeactivatedV1: DOCTOR_DEACTIVATED,
    PatientCreatedV1: PATIENT_CREATED, PatientUpdatedV1: PATIENT_UPDATED,
    ConsentRecordedV1: CONSENT_RECORDED, ConsentRevokedV1: CONSENT_REVOKED,
    ConsentPolicyChangedV1: CONSENT_POLICY_CHANGED, ExpectedPrevalenceDeclaredV1: EXPECTED_PREVALENCE_DECLARED,
    PhiViewedV1: PHI_VIEWED, RecordsExportedV1: RECORDS_EXPORTED,
    RecordsExportStartedV1: RECORDS_EXPORT_STARTED,
    ScreeningAdmissionRefusedV1: SCREENING_ADMISSION_REFUSED,
}
