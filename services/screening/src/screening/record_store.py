"""SQL of a tenant's clinical records: labs, doctors, the staff directory, patients, consents, policy.

Every function runs on a connection from ``Tenant.tx()`` / ``in_schema``: table names are unqualified and
resolve in the tenant's schema only. Column names in dynamic updates come from the whitelists here, never
from the client.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from screening.store import DOCTOR_SCOPE
from shared.db import quote_schema

Row = Mapping[str, Any]

LAB_COLUMNS = ("name", "code", "address", "active")
DOCTOR_COLUMNS = ("name", "specialty", "registration_number", "user_id", "active")
PATIENT_COLUMNS = ("external_id", "name_ciphertext", "name_key_id", "name_index", "age", "sex", "lab_id",
                   "referring_doctor_id")


def _one(result: Any) -> Row | None:
    row = result.mappings().first()
    return dict(row) if row else None


async def _update(conn: AsyncConnection, table: str, allowed: tuple[str, ...], ident: uuid.UUID,
                  changes: Mapping[str, Any]) -> Row | None:
    columns = [c for c in changes if c in allowed]
    assignments = ", ".join([f"{c} = :{c}" for c in columns] + ["updated_at = now()"])
    return _one(await conn.execute(
        text(f"UPDATE {table} SET {assignments} WHERE id = :id RETURNING *"),
        {"id": ident} | {c: changes[c] for c in columns},
    ))


# -- labs ----------------------------------------------------------------------------------------------


async def insert_lab(conn: AsyncConnection, values: Mapping[str, Any], created_by: uuid.UUID) -> Row:
    row = _one(await conn.execute(
        text("INSERT INTO labs (id, name, code, address, created_by) VALUES (:id, :name, :code, :address, :by) "
             "RETURNING *"),
        {"id": uuid.uuid4(), "name": values["name"], "code": values.get("code"), "address": values.get("address"),
         "by": created_by},
    ))
    assert row is not None
    return row


async def lab(conn: AsyncConnection, lab_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return _one(await conn.execute(text(f"SELECT * FROM labs WHERE id = :id{lock}"), {"id": lab_id}))


async def labs(conn: AsyncConnection, *, active: bool | None, limit: int) -> list[Row]:
    where = "WHERE active = :active" if active is not None else ""
    rows = await conn.execute(text(f"SELECT * FROM labs {where} ORDER BY name, id LIMIT :limit"),
                              {"limit": limit} | ({"active": active} if active is not None else {}))
    return [dict(r) for r in rows.mappings()]


async def update_lab(conn: AsyncConnection, lab_id: uuid.UUID, changes: Mapping[str, Any]) -> Row | None:
    return await _update(conn, "labs", LAB_COLUMNS, lab_id, changes)


# -- staff directory and doctors -----------------------------------------------------------------------


async def upsert_staff(conn: AsyncConnection, user_id: uuid.UUID, role: str) -> None:
    await conn.execute(
        text("INSERT INTO staff (user_id, role) VALUES (:u, :r) "
             "ON CONFLICT (user_id) DO UPDATE SET role = excluded.role, seen_at = now()"),
        {"u": user_id, "r": role},
    )


async def remove_staff(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    await conn.execute(text("DELETE FROM staff WHERE user_id = :u"), {"u": user_id})


async def staff_role(conn: AsyncConnection, user_id: uuid.UUID) -> str | None:
    return await conn.scalar(text("SELECT role FROM staff WHERE user_id = :u"), {"u": user_id})


async def insert_doctor(conn: AsyncConnection, values: Mapping[str, Any], created_by: uuid.UUID) -> Row:
    row = _one(await conn.execute(
        text("INSERT INTO doctors (id, name, specialty, registration_number, user_id, created_by) "
             "VALUES (:id, :name, :specialty, :reg, :user_id, :by) RETURNING *"),
        {"id": uuid.uuid4(), "name": values["name"], "specialty": values.get("specialty"),
         "reg": values.get("registration_number"), "user_id": values.get("user_id"), "by": created_by},
    ))
    assert row is not None
    return row


async def doctor(conn: AsyncConnection, doctor_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return _one(await conn.execute(text(f"SELECT * FROM doctors WHERE id = :id{lock}"), {"id": doctor_id}))


async def doctors(conn: AsyncConnection, *, active: bool | None, limit: int) -> list[Row]:
    where = "WHERE active = :active" if active is not None else ""
    rows = await conn.execute(text(f"SELECT * FROM doctors {where} ORDER BY name, id LIMIT :limit"),
                              {"limit": limit} | ({"active": active} if active is not None else {}))
    return [dict(r) for r in rows.mappings()]


async def update_doctor(conn: AsyncConnection, doctor_id: uuid.UUID, changes: Mapping[str, Any]) -> Row | None:
    return await _update(conn, "doctors", DOCTOR_COLUMNS, doctor_id, changes)


# -- patients ------------------------------------------------------------------------------------------

_PATIENT_SELECT = "SELECT p.* FROM patients p"


async def insert_patient(conn: AsyncConnection, values: Mapping[str, Any], created_by: uuid.UUID | None,
                         *, if_absent: bool = False) -> Row | None:
    """Insert a patient; with ``if_absent`` an existing external id makes it return ``None`` instead."""
    conflict = " ON CONFLICT (external_id) DO NOTHING" if if_absent else ""
    return _one(await conn.execute(
        text("INSERT INTO patients (id, external_id, name_ciphertext, name_key_id, name_index, age, sex, lab_id, "
             "referring_doctor_id, created_by) VALUES (:id, :external_id, :name_ciphertext, :name_key_id, "
             f":name_index, :age, :sex, :lab_id, :referring_doctor_id, :by){conflict} RETURNING *"),
        {"id": uuid.uuid4(), "by": created_by} | {c: values.get(c) for c in PATIENT_COLUMNS},
    ))


async def patient(conn: AsyncConnection, patient_id: uuid.UUID, *, doctor_user: uuid.UUID | None = None,
                  for_update: bool = False) -> Row | None:
    scope = f" AND {DOCTOR_SCOPE}" if doctor_user else ""
    lock = " FOR UPDATE OF p" if for_update else ""
    params: dict[str, Any] = {"id": patient_id} | ({"doctor_user": doctor_user} if doctor_user else {})
    return _one(await conn.execute(text(f"{_PATIENT_SELECT} WHERE p.id = :id{scope}{lock}"), params))


async def patient_by_external_id(conn: AsyncConnection, external_id: str) -> Row | None:
    return _one(await conn.execute(text(f"{_PATIENT_SELECT} WHERE p.external_id = :e"), {"e": external_id}))


async def patients(conn: AsyncConnection, *, limit: int, before: tuple[datetime, uuid.UUID] | None,
                   doctor_user: uuid.UUID | None, external_id: str | None = None, name_index: str | None = None,
                   lab_id: uuid.UUID | None = None, doctor_id: uuid.UUID | None = None) -> list[Row]:
    """Newest first, keyset-paginated on (created_at, id)."""
    clauses, params = [], {"limit": limit}
    if before is not None:
        clauses.append("(p.created_at, p.id) < (:before_at, :before_id)")
        params |= {"before_at": before[0], "before_id": before[1]}
    for value, clause, name in (
        (external_id, "p.external_id = :external_id", "external_id"),
        (name_index, "p.name_index = :name_index", "name_index"),
        (lab_id, "p.lab_id = :lab_id", "lab_id"),
        (doctor_id, "p.referring_doctor_id = :doctor_id", "doctor_id"),
        (doctor_user, DOCTOR_SCOPE, "doctor_user"),
    ):
        if value is not None:
            clauses.append(clause)
            params[name] = value
    condition = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await conn.execute(
        text(f"{_PATIENT_SELECT} {condition} ORDER BY p.created_at DESC, p.id DESC LIMIT :limit"), params)
    return [dict(r) for r in rows.mappings()]


async def update_patient(conn: AsyncConnection, patient_id: uuid.UUID, changes: Mapping[str, Any]) -> Row | None:
    return await _update(conn, "patients", PATIENT_COLUMNS, patient_id, changes)


# -- consents ------------------------------------------------------------------------------------------

_CONSENT_SELECT = "SELECT c.* FROM consents c JOIN patients p ON p.id = c.patient_id"


async def insert_consent(conn: AsyncConnection, *, patient_id: uuid.UUID, consent_type: str, method: str,
                         text_ciphertext: str, text_key_id: str, recorded_by: uuid.UUID) -> Row:
    row = _one(await conn.execute(
        text("INSERT INTO consents (id, patient_id, consent_type, method, text_ciphertext, text_key_id, "
             "recorded_by) VALUES (:id, :p, :t, :m, :c, :k, :by) RETURNING *"),
        {"id": uuid.uuid4(), "p": patient_id, "t": consent_type, "m": method, "c": text_ciphertext,
         "k": text_key_id, "by": recorded_by},
    ))
    assert row is not None
    return row


async def consent(conn: AsyncConnection, consent_id: uuid.UUID, *, doctor_user: uuid.UUID | None = None,
                  for_update: bool = False) -> Row | None:
    scope = f" AND {DOCTOR_SCOPE}" if doctor_user else ""
    lock = " FOR UPDATE OF c" if for_update else ""
    params: dict[str, Any] = {"id": consent_id} | ({"doctor_user": doctor_user} if doctor_user else {})
    return _one(await conn.execute(text(f"{_CONSENT_SELECT} WHERE c.id = :id{scope}{lock}"), params))


async def consents(conn: AsyncConnection, *, limit: int, before: tuple[datetime, uuid.UUID] | None,
                   doctor_user: uuid.UUID | None, patient_id: uuid.UUID | None = None,
                   status: str | None = None, consent_type: str | None = None) -> list[Row]:
    clauses, params = [], {"limit": limit}
    if before is not None:
        clauses.append("(c.recorded_at, c.id) < (:before_at, :before_id)")
        params |= {"before_at": before[0], "before_id": before[1]}
    for value, clause, name in (
        (patient_id, "c.patient_id = :patient_id", "patient_id"),
        (status, "c.status = :status", "status"),
        (consent_type, "c.consent_type = :consent_type", "consent_type"),
        (doctor_user, DOCTOR_SCOPE, "doctor_user"),
    ):
        if value is not None:
            clauses.append(clause)
            params[name] = value
    condition = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await conn.execute(
        text(f"{_CONSENT_SELECT} {condition} ORDER BY c.recorded_at DESC, c.id DESC LIMIT :limit"), params)
    return [dict(r) for r in rows.mappings()]


async def revoke_consent(conn: AsyncConnection, consent_id: uuid.UUID, revoked_by: uuid.UUID) -> Row | None:
    return _one(await conn.execute(
        text("UPDATE consents SET status = 'revoked', revoked_by = :by, revoked_at = now() "
             "WHERE id = :id AND status = 'active' RETURNING *"),
        {"id": consent_id, "by": revoked_by},
    ))


async def active_consent(conn: AsyncConnection, patient_id: uuid.UUID, consent_type: str) -> uuid.UUID | None:
    return await conn.scalar(
        text("SELECT id FROM consents WHERE patient_id = :p AND consent_type = :t AND status = 'active' "
             "ORDER BY recorded_at DESC LIMIT 1"),
        {"p": patient_id, "t": consent_type},
    )


# -- policy --------------------------------------------------------------------------------------------


async def policy(conn: AsyncConnection) -> Row:
    row = _one(await conn.execute(
        text("SELECT consent_required, consent_type, expected_prevalence, updated_by, updated_at FROM policy")))
    assert row is not None, "every tenant schema has its policy row (migration t0002)"
    return row


async def set_policy(conn: AsyncConnection, *, consent_required: bool, consent_type: str,
                     expected_prevalence: float | None, updated_by: uuid.UUID) -> Row:
    row = _one(await conn.execute(
        text("UPDATE policy SET consent_required = :r, consent_type = :t, expected_prevalence = :p, "
             "updated_by = :by, updated_at = now() "
             "RETURNING consent_required, consent_type, expected_prevalence, updated_by, updated_at"),
        {"r": consent_required, "t": consent_type, "p": expected_prevalence, "by": updated_by},
    ))
    assert row is not None
    return row


# -- admission -----------------------------------------------------------------------------------------


def _admission_query(schema: str | None) -> str:
    q = f"{quote_schema(schema)}." if schema else ""
    return (
        "SELECT pol.consent_required, pol.consent_type, pol.expected_prevalence, p.id AS patient_id, p.name_index, "
        "p.name_ciphertext IS NOT NULL AS has_name, p.sex, "
        f"(SELECT c.id FROM {q}consents c WHERE c.patient_id = p.id AND c.consent_type = pol.consent_type "
        " AND c.status = 'active' ORDER BY c.recorded_at DESC LIMIT 1) AS consent_id "
        f"FROM {q}policy pol LEFT JOIN {q}patients p ON p.external_id = :e"
    )


async def admission_facts(conn: AsyncConnection, external_id: str, *, schema: str | None = None) -> Row:
    """Everything the admission check needs, in one round trip: policy, patient, active consent.

    With ``schema`` the names are qualified with it, so the query needs no transaction to set the search
    path (the admission's fast path runs it alone, in autocommit: one round trip, classify stays fast).
    """
    row = _one(await conn.execute(text(_admission_query(schema)), {"e": external_id}))
    assert row is not None
    return row
