"""Rules of the clinical records, without I/O: admission of a screening, patient changes, cursors, and the
records an export is made of (their CSV and FHIR forms are in ``screening.export``)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


# -- admission -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPatient:
    id: uuid.UUID
    name_index: str | None
    has_name: bool
    sex: str | None


@dataclass(frozen=True)
class Admitted:
    patient_id: uuid.UUID | None  # None: the patient is new and will be created with the screening's details
    consent_id: uuid.UUID | None


@dataclass(frozen=True)
class Refused:
    reason: str  # "consent_required" | "patient_details_mismatch"
    patient_id: uuid.UUID | None
    fields: tuple[str, ...] = ()


def patient_mismatches(stored: StoredPatient, *, name_index: str | None, sex: str | None) -> list[str]:
    """Details of a screening request that disagree with the patient's record.

    The rule: a screening never changes a patient. A name given with the screening must be the recorded
    one (a record without a name is not filled in either); the CBC's sex must match a recorded sex. Details
    the request leaves out are simply not compared, so nothing is ever blanked. Changes go through
    ``PATCH /api/patients/{id}``, which publishes ``PatientUpdated``.
    """
    fields = []
    if name_index is not None and (not stored.has_name or stored.name_index != name_index):
        fields.append("name")
    if sex is not None and stored.sex is not None and stored.sex != sex:
        fields.append("sex")
    return fields


def admit(*, consent_required: bool, patient: StoredPatient | None, consent_id: uuid.UUID | None,
          name_index: str | None, sex: str | None) -> Admitted | Refused:
    """Whether a classify request may be accepted; checked by the gateway before anything is published."""
    if patient is not None:
        mismatches = patient_mismatches(patient, name_index=name_index, sex=sex)
        if mismatches:
            return Refused("patient_details_mismatch", patient.id, tuple(mismatches))
    if consent_required and consent_id is None:
        return Refused("consent_required", patient.id if patient else None)
    return Admitted(patient.id if patient else None, consent_id)


# -- changes ---------------------------------------------------------------------------------------------


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Names of the fields whose value differs (only fields present in ``after`` are compared)."""
    return sorted(k for k, v in after.items() if before.get(k) != v)


# -- cursors ---------------------------------------------------------------------------------------------


class BadCursor(ValueError):
    pass


def encode_cursor(at: datetime, ident: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{ident}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        moment = datetime.fromisoformat(at)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise BadCursor("cursor is not one this API issued") from None


def as_utc(moment: datetime | None) -> datetime | None:
    """Query bounds without a zone are UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- keys ------------------------------------------------------------------------------------------------


def missing_keys(used: Iterable[str | None], configured: Iterable[str]) -> set[str]:
    """Key ids that stored ciphertexts were made with but the configuration lacks."""
    return {k for k in used if k is not None} - set(configured)


# -- export ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientRecord:
    """A patient of the export (names are still ciphertexts: they are opened only while rendering)."""

    id: uuid.UUID
    external_id: str
    name_ciphertext: str | None
    sex: str | None


@dataclass(frozen=True)
class ScreeningRecord:
    """One screening as exported: its CBC, the model's output (None when rejected) and who it concerns."""

    id: uuid.UUID
    patient_id: uuid.UUID
    patient_external_id: str
    patient_name_ciphertext: str | None
    status: str
    cbc: Mapping[str, Any]
    label: str | None
    risk_class: int | None
    p_normal: float | None
    p_borderline: float | None
    p_deficient: float | None
    model_version: str | None
    model_artifacts_sha256: str | None
    rejection_reason: str | None
    lab_id: uuid.UUID | None
    doctor_id: uuid.UUID | None
    consent_id: uuid.UUID | None
    requested_at: datetime
    recorded_at: datetime
    collected_at: datetime | None = None  # when the blood was drawn, if the lab said

    @property
    def effective_at(self) -> datetime:
        """When the measured values held: the sample's collection time, else when the screening was asked for."""
        return self.collected_at or self.requested_at

    @property
    def assessed(self) -> bool:
        """A rejected screening has no model output."""
        return self.label is not None
