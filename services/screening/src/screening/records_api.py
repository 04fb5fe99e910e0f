"""HTTP routes of a tenant's records: labs, doctors, patients and consents (reached through the gateway).

Who may do what (the tenant is always the token's organisation):

| records  | create, edit                | read                                               |
| -------- | --------------------------- | -------------------------------------------------- |
| labs     | org admin                   | every role of the organisation                     |
| doctors  | org admin                   | every role of the organisation                     |
| patients | org admin, lab technician   | org admin, lab technician; a doctor: referred only |
| consents | org admin, lab technician   | org admin, lab technician; a doctor: referred only |

A record of another organisation, or one a doctor may not see, is answered exactly like a missing one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from screening import domain
from screening import record_store as rs
from screening.access import ADMIN, CLINICIANS, ORG_ROLES, RECORD_KEEPERS, Tenant, tenant, unprocessable
from shared.events import records as ev
from shared.events.screening import Sex
from shared.text import MultilineText, Text
from shared.tokens import Role

router = APIRouter()
Manager = Annotated[Tenant, Depends(tenant(*ADMIN))]
Member = Annotated[Tenant, Depends(tenant(*ORG_ROLES))]
Keeper = Annotated[Tenant, Depends(tenant(*RECORD_KEEPERS))]
Clinician = Annotated[Tenant, Depends(tenant(*CLINICIANS))]

EXTERNAL_ID = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$",
                    description="The lab's patient identifier, unique in the organisation")
Limit = Annotated[int, Query(ge=1, le=200)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")


def _not_null(changes: dict[str, Any], *fields: str) -> None:
    for field in fields:
        if field in changes and changes[field] is None:
            raise unprocessable(field, "may not be null")


def _cursor(items: list[dict[str, Any]], at: str, limit: int) -> str | None:
    return domain.encode_cursor(items[-1][at], items[-1]["id"]) if len(items) == limit else None


def _before(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    try:
        return domain.decode_cursor(cursor) if cursor else None
    except domain.BadCursor as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None


# -- labs ------------------------------------------------------------------------------------------------


class LabIn(_In):
    name: Text = Field(min_length=1, max_length=200)
    code: Text | None = Field(None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")
    address: MultilineText | None = Field(None, max_length=500)


class LabPatch(_In):
    name: Text | None = Field(None, min_length=1, max_length=200)
    code: Text | None = Field(None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")
    address: MultilineText | None = Field(None, max_length=500)
    active: bool | None = Field(None, description="false deactivates the lab (it stays on its records)")


class Lab(BaseModel):
    id: uuid.UUID
    name: str
    code: str | None
    address: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


class LabList(BaseModel):
    items: list[Lab]


@router.post("/api/labs", response_model=Lab, status_code=201, tags=["labs"])
async def create_lab(body: LabIn, t: Manager) -> Lab:
    try:
        async with t.tx() as conn:
            row = await rs.insert_lab(conn, body.model_dump(), t.principal.user_id)
            await t.emit(conn, ev.LabCreatedV1(lab_id=row["id"]))
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "a lab with this code exists") from None
    return Lab.model_validate(row)


@router.get("/api/labs", response_model=LabList, tags=["labs"])
async def list_labs(t: Member, active: bool | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 1000
                    ) -> LabList:
    async with t.tx() as conn:
        rows = await rs.labs(conn, active=active, limit=limit)
    return LabList(items=[Lab.model_validate(r) for r in rows])


@router.get("/api/labs/{lab_id}", response_model=Lab, tags=["labs"])
async def get_lab(lab_id: uuid.UUID, t: Member) -> Lab:
    async with t.tx() as conn:
        row = await rs.lab(conn, lab_id)
    if row is None:
        raise _not_found("lab")
    return Lab.model_validate(row)


@router.patch("/api/labs/{lab_id}", response_model=Lab, tags=["labs"])
async def update_lab(lab_id: uuid.UUID, body: LabPatch, t: Manager) -> Lab:
    changes = body.model_dump(exclude_unset=True)
    _not_null(changes, "name", "active")
    try:
        async with t.tx() as conn:
            before = await rs.lab(conn, lab_id, for_update=True)
            if before is None:
                raise _not_found("lab")
            changed = domain.changed_fields(before, changes)
            row = await rs.update_lab(conn, lab_id, {k: changes[k] for k in changed}) if changed else before
            assert row is not None
            if changed:
                await t.emit(conn, ev.LabUpdatedV1(lab_id=lab_id, changed_fields=changed))
            if "active" in changed and not row["active"]:
                await t.emit(conn, ev.LabDeactivatedV1(lab_id=lab_id))
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "a lab with this code exists") from None
    return Lab.model_validate(row)


# -- doctors ---------------------------------------------------------------------------------------------


class DoctorIn(_In):
    name: Text = Field(min_length=1, max_length=200)
    specialty: Text | None = Field(None, max_length=200)
    registration_number: Text | None = Field(None, min_length=1, max_length=64)
    user_id: uuid.UUID | None = Field(None, description="The user (role doctor) this record belongs to")


class DoctorPatch(_In):
    name: Text | None = Field(None, min_length=1, max_length=200)
    specialty: Text | None = Field(None, max_length=200)
    registration_number: Text | None = Field(None, min_length=1, max_length=64)
    user_id: uuid.UUID | None = None
    active: bool | None = None


class Doctor(BaseModel):
    id: uuid.UUID
    name: str
    specialty: str | None
    registration_number: str | None
    user_id: uuid.UUID | None
    active: bool
    created_at: datetime
    updated_at: datetime


class DoctorList(BaseModel):
    items: list[Doctor]


async def _check_doctor_user(conn: AsyncConnection, user_id: uuid.UUID | None) -> None:
    if user_id is not None and await rs.staff_role(conn, user_id) != Role.DOCTOR.value:
        raise unprocessable("user_id", "no user with the doctor role is known in your organisation "
                                       "(a user created moments ago may take a second to appear)", "not_found")


@router.post("/api/doctors", response_model=Doctor, status_code=201, tags=["doctors"])
async def create_doctor(body: DoctorIn, t: Manager) -> Doctor:
    try:
        async with t.tx() as conn:
            await _check_doctor_user(conn, body.user_id)
            row = await rs.insert_doctor(conn, body.model_dump(), t.principal.user_id)
            await t.emit(conn, ev.DoctorCreatedV1(doctor_id=row["id"], user_id=row["user_id"]))
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "a doctor with this registration number or user exists") from None
    return Doctor.model_validate(row)


@router.get("/api/doctors", response_model=DoctorList, tags=["doctors"])
async def list_doctors(t: Member, active: bool | None = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> DoctorList:
    async with t.tx() as conn:
        rows = await rs.doctors(conn, active=active, limit=limit)
    return DoctorList(items=[Doctor.model_validate(r) for r in rows])


@router.get("/api/doctors/{doctor_id}", response_model=Doctor, tags=["doctors"])
async def get_doctor(doctor_id: uuid.UUID, t: Member) -> Doctor:
    async with t.tx() as conn:
        row = await rs.doctor(conn, doctor_id)
    if row is None:
        raise _not_found("doctor")
    return Doctor.model_validate(row)


@router.patch("/api/doctors/{doctor_id}", response_model=Doctor, tags=["doctors"])
async def update_doctor(doctor_id: uuid.UUID, body: DoctorPatch, t: Manager) -> Doctor:
    changes = body.model_dump(exclude_unset=True)
    _not_null(changes, "name", "active")
    try:
        async with t.tx() as conn:
            before = await rs.doctor(conn, doctor_id, for_update=True)
            if before is None:
                raise _not_found("doctor")
            changed = domain.changed_fields(before, changes)
            if "user_id" in changed:
                await _check_doctor_user(conn, changes["user_id"])
            row = await rs.update_doctor(conn, doctor_id, {k: changes[k] for k in changed}) if changed else before
            assert row is not None
            if changed:
                await t.emit(conn, ev.DoctorUpdatedV1(doctor_id=doctor_id, changed_fields=changed))
            if "active" in changed and not row["active"]:
                await t.emit(conn, ev.DoctorDeactivatedV1(doctor_id=doctor_id))
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "a doctor with this registration number or user exists") from None
    return Doctor.model_validate(row)


# -- patients --------------------------------------------------------------------------------------------


class PatientIn(_In):
    external_id: Text = EXTERNAL_ID
    name: Text | None = Field(None, min_length=1, max_length=200, description="PHI: stored encrypted")
    age: int | None = Field(None, ge=0, le=130)
    sex: Sex | None = None
    lab_id: uuid.UUID | None = None
    referring_doctor_id: uuid.UUID | None = None


class PatientPatch(_In):
    external_id: Text | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")
    name: Text | None = Field(None, min_length=1, max_length=200,
                             description="PHI; an explicit null removes the name (recorded as a change)")
    age: int | None = Field(None, ge=0, le=130)
    sex: Sex | None = None
    lab_id: uuid.UUID | None = None
    referring_doctor_id: uuid.UUID | None = None


class PatientSearch(_In):
    name: Text = Field(min_length=1, max_length=200, description="Exact match after normalising case and spaces")
    limit: int = Field(50, ge=1, le=200)


class Patient(BaseModel):
    id: uuid.UUID
    external_id: str
    name: str | None
    age: int | None
    sex: Sex | None
    lab_id: uuid.UUID | None
    referring_doctor_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class PatientPage(BaseModel):
    items: list[Patient]
    next_cursor: str | None


def _patient(row: dict[str, Any], t: Tenant) -> Patient:
    return Patient.model_validate(row | {"name": t.vault.open(row["name_ciphertext"])})


async def _check_references(conn: AsyncConnection, values: dict[str, Any]) -> None:
    """Labs and doctors a patient refers to must exist in this tenant and be active (else 422)."""
    if values.get("lab_id") is not None:
        found = await rs.lab(conn, values["lab_id"])
        if found is None or not found["active"]:
            raise unprocessable("lab_id", "no such active lab", "not_found")
    if values.get("referring_doctor_id") is not None:
        found = await rs.doctor(conn, values["referring_doctor_id"])
        if found is None or not found["active"]:
            raise unprocessable("referring_doctor_id", "no such active doctor", "not_found")


async def _viewed(t: Tenant, conn: AsyncConnection, resource: Literal["patient", "consent", "screening"],
                  endpoint: str, patient_ids: list[uuid.UUID], shown: int) -> None:
    """Every response that shows PHI is an event (ids and counts only)."""
    if shown:
        await t.emit(conn, ev.PhiViewedV1(resource=resource, endpoint=endpoint,
                                          patient_ids=sorted(set(patient_ids)), record_count=shown))


@router.post("/api/patients", response_model=Patient, status_code=201, tags=["patients"])
async def create_patient(body: PatientIn, t: Keeper) -> Patient:
    values = body.model_dump(exclude={"name"}) | {"sex": body.sex.value if body.sex else None}
    if body.name is not None:
        sealed = t.vault.seal_name(t.org, body.name)
        values |= {"name_ciphertext": sealed.ciphertext, "name_key_id": sealed.key_id, "name_index": sealed.index}
    async with t.tx() as conn:
        await _check_references(conn, values)
        row = await rs.insert_patient(conn, values, t.principal.user_id, if_absent=True)
        if row is None:
            raise HTTPException(status.HTTP_409_CONFLICT, "a patient with this external id exists")
        await t.emit(conn, ev.PatientCreatedV1(patient_id=row["id"], lab_id=row["lab_id"],
                                               referring_doctor_id=row["referring_doctor_id"], via="api"))
    return Patient.model_validate(row | {"name": body.name})


@router.get("/api/patients", response_model=PatientPage, tags=["patients"])
async def list_patients(
    t: Clinician, limit: Limit = 50, cursor: Text | None = None, external_id: Text | None = None,
    lab_id: uuid.UUID | None = None, doctor_id: uuid.UUID | None = None,
) -> PatientPage:
    async with t.tx() as conn:
        rows = await rs.patients(conn, limit=limit, before=_before(cursor), doctor_user=t.doctor_user,
                                 external_id=external_id, lab_id=lab_id, doctor_id=doctor_id)
        items = [_patient(r, t) for r in rows]
        await _viewed(t, conn, "patient", "list_patients", [p.id for p in items if p.name],
                      sum(1 for p in items if p.name))
    return PatientPage(items=items, next_cursor=_cursor(rows, "created_at", limit))


@router.post("/api/patients/search", response_model=PatientPage, tags=["patients"])
async def search_patients(body: PatientSearch, t: Clinician) -> PatientPage:
    """Exact-match search by name through the keyed blind index: nothing is decrypted to search."""
    async with t.tx() as conn:
        rows = await rs.patients(conn, limit=body.limit, before=None, doctor_user=t.doctor_user,
                                 name_index=t.vault.name_index(t.org, body.name))
        items = [_patient(r, t) for r in rows]
        await _viewed(t, conn, "patient", "search_patients", [p.id for p in items], len(items))
    return PatientPage(items=items, next_cursor=None)


@router.get("/api/patients/{patient_id}", response_model=Patient, tags=["patients"])
async def get_patient(patient_id: uuid.UUID, t: Clinician) -> Patient:
    async with t.tx() as conn:
        row = await rs.patient(conn, patient_id, doctor_user=t.doctor_user)
        if row is None:
            raise _not_found("patient")
        item = _patient(row, t)
        await _viewed(t, conn, "patient", "get_patient", [item.id], 1 if item.name else 0)
    return item


@router.patch("/api/patients/{patient_id}", response_model=Patient, tags=["patients"])
async def update_patient(patient_id: uuid.UUID, body: PatientPatch, t: Keeper) -> Patient:
    """An explicit change of a patient's details, published as ``PatientUpdated`` naming the fields."""
    given = body.model_dump(exclude_unset=True)
    _not_null(given, "external_id")
    if given.get("sex") is not None:
        given["sex"] = Sex(given["sex"]).value
    try:
        async with t.tx() as conn:
            before = await rs.patient(conn, patient_id, for_update=True)
            if before is None:
                raise _not_found("patient")
            compared = {k: v for k, v in given.items() if k != "name"}
            changed = domain.changed_fields(before, compared)
            changes = {k: given[k] for k in changed}
            if "name" in given:
                name = given["name"]
                new_index = t.vault.name_index(t.org, name) if name is not None else None
                if new_index != before["name_index"] or (name is None) != (before["name_ciphertext"] is None):
                    changed = sorted([*changed, "name"])
                    sealed = t.vault.seal_name(t.org, name) if name is not None else None
                    changes |= {"name_ciphertext": sealed.ciphertext if sealed else None,
                                "name_key_id": sealed.key_id if sealed else None,
                                "name_index": sealed.index if sealed else None}
            await _check_references(conn, {k: v for k, v in changes.items()
                                           if k in ("lab_id", "referring_doctor_id")})
            row = await rs.update_patient(conn, patient_id, changes) if changed else before
            assert row is not None
            if changed:
                await t.emit(conn, ev.PatientUpdatedV1(patient_id=patient_id, changed_fields=changed))
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "a patient with this external id exists") from None
    return _patient(row, t)


# -- consents --------------------------------------------------------------------------------------------


class ConsentIn(_In):
    patient_id: uuid.UUID
    consent_type: Text = Field("screening", pattern=r"^[a-z][a-z0-9_]{0,39}$",
                              description="What is consented to; the organisation's policy names the type "
                                          "a screening needs (default: screening)")
    method: Literal["verbal", "written", "electronic"]
    text: MultilineText = Field(min_length=1, max_length=10_000,
                                description="The wording consented to; stored encrypted")


class Consent(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    consent_type: str
    method: Literal["verbal", "written", "electronic"]
    text: str
    status: Literal["active", "revoked"]
    recorded_by: uuid.UUID
    recorded_at: datetime
    revoked_by: uuid.UUID | None
    revoked_at: datetime | None


class ConsentPage(BaseModel):
    items: list[Consent]
    next_cursor: str | None


def _consent(row: dict[str, Any], t: Tenant) -> Consent:
    return Consent.model_validate(row | {"text": t.vault.open(row["text_ciphertext"])})


@router.post("/api/consents", response_model=Consent, status_code=201, tags=["consents"])
async def record_consent(body: ConsentIn, t: Keeper) -> Consent:
    ciphertext, key_id = t.vault.seal_text(body.text)
    async with t.tx() as conn:
        if await rs.patient(conn, body.patient_id) is None:
            raise unprocessable("patient_id", "no such patient", "not_found")
        row = await rs.insert_consent(conn, patient_id=body.patient_id, consent_type=body.consent_type,
                                      method=body.method, text_ciphertext=ciphertext, text_key_id=key_id,
                                      recorded_by=t.principal.user_id)
        await t.emit(conn, ev.ConsentRecordedV1(consent_id=row["id"], patient_id=body.patient_id,
                                                consent_type=body.consent_type, method=body.method))
    return Consent.model_validate(row | {"text": body.text})


@router.get("/api/consents", response_model=ConsentPage, tags=["consents"])
async def list_consents(
    t: Clinician, limit: Limit = 50, cursor: Text | None = None, patient_id: uuid.UUID | None = None,
    status_: Annotated[Literal["active", "revoked"] | None, Query(alias="status")] = None,
    consent_type: Text | None = None,
) -> ConsentPage:
    async with t.tx() as conn:
        rows = await rs.consents(conn, limit=limit, before=_before(cursor), doctor_user=t.doctor_user,
                                 patient_id=patient_id, status=status_, consent_type=consent_type)
        items = [_consent(r, t) for r in rows]
        await _viewed(t, conn, "consent", "list_consents", [c.patient_id for c in items], len(items))
    return ConsentPage(items=items, next_cursor=_cursor(rows, "recorded_at", limit))


@router.get("/api/consents/{consent_id}", response_model=Consent, tags=["consents"])
async def get_consent(consent_id: uuid.UUID, t: Clinician) -> Consent:
    async with t.tx() as conn:
        row = await rs.consent(conn, consent_id, doctor_user=t.doctor_user)
        if row is None:
            raise _not_found("consent")
        item = _consent(row, t)
        await _viewed(t, conn, "consent", "get_consent", [item.patient_id], 1)
    return item


@router.post("/api/consents/{consent_id}/revoke", response_model=Consent, tags=["consents"])
async def revoke_consent(consent_id: uuid.UUID, t: Keeper) -> Consent:
    """Revoking is final (record a new consent to consent again); a screening needs an active one."""
    async with t.tx() as conn:
        before = await rs.consent(conn, consent_id, for_update=True)
        if before is None:
            raise _not_found("consent")
        row = await rs.revoke_consent(conn, consent_id, t.principal.user_id)
        if row is None:
            raise HTTPException(status.HTTP_409_CONFLICT, "this consent is already revoked")
        await t.emit(conn, ev.ConsentRevokedV1(consent_id=consent_id, patient_id=row["patient_id"],
                                               consent_type=row["consent_type"]))
    return _consent(row, t)
