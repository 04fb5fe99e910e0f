"""SQL of the screening service: the tenant registry and each tenant's screenings.

Every clinical query runs inside ``shared.db.in_schema(engine, tenant_schema(org))``; the connection's
default search path names no schema, so a forgotten tenant fails instead of leaking. Records other than
screenings (labs, doctors, patients, consents, policy) are in ``record_store``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.db import in_schema, migrate, tenant_schema

CONTROL_SCHEMA = "screening"
CONTROL_MIGRATIONS = Path(__file__).parent / "migrations" / "control"
TENANT_MIGRATIONS = Path(__file__).parent / "migrations" / "tenant"


class TenantRegistry:
    """Knows which tenant schemas exist and provisions missing ones (idempotent, concurrency-safe)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._known: set[uuid.UUID] = set()

    async def load(self) -> None:
        async with in_schema(self.engine, CONTROL_SCHEMA) as conn:
            self._known = set((await conn.scalars(text("SELECT org_id FROM tenants"))).all())

    async def provision(self, org_id: uuid.UUID) -> str:
        schema = tenant_schema(org_id)
        if org_id in self._known:
            return schema
        await migrate(self.engine, TENANT_MIGRATIONS, schema)
        async with in_schema(self.engine, CONTROL_SCHEMA) as conn:
            await conn.execute(
                text("INSERT INTO tenants (org_id, schema_name) VALUES (:o, :s) ON CONFLICT DO NOTHING"),
                {"o": org_id, "s": schema},
            )
        self._known.add(org_id)
        return schema

    async def ensure(self, org_id: uuid.UUID) -> str:
        """The schema of a verified organisation, provisioned now if its ``OrganizationCreated`` is still
        on its way (the token proves the organisation exists)."""
        if org_id in self._known:
            return tenant_schema(org_id)
        return await self.provision(org_id)

    def exists(self, org_id: uuid.UUID) -> bool:
        return org_id in self._known

    @property
    def tenants(self) -> set[uuid.UUID]:
        return set(self._known)


@dataclass(frozen=True)
class NewScreening:
    id: uuid.UUID
    patient_external_id: str
    patient_name_ciphertext: str | None
    status: str
    cbc: dict[str, Any]
    assessment: dict[str, Any] | None
    rejection_reason: str | None
    label: str | None
    risk_class: int | None
    model_version: str | None
    requested_by: uuid.UUID | None
    correlation_id: uuid.UUID
    requested_at: datetime
    recorded_at: datetime
    patient_id: uuid.UUID | None = None
    consent_id: uuid.UUID | None = None
    lab_id: uuid.UUID | None = None
    doctor_id: uuid.UUID | None = None


_SCREENING_COLUMNS = (
    "s.id, p.external_id, p.name_ciphertext, s.status, s.cbc, s.assessment, s.rejection_reason, s.label, "
    "s.risk_class, s.model_version, s.requested_by, s.correlation_id, s.requested_at, s.recorded_at, "
    "s.patient_id, s.consent_id, s.lab_id, s.doctor_id"
)
_FROM = "FROM screenings s JOIN patients p ON p.id = s.patient_id"
#: Narrows patient-bound rows to the patients referred to the doctor whose user id is ``:doctor_user``.
DOCTOR_SCOPE = "p.referring_doctor_id IN (SELECT d.id FROM doctors d WHERE d.user_id = :doctor_user)"


def _row(row: Any) -> NewScreening:
    return NewScreening(*row)


async def record(conn: AsyncConnection, screenings: list[NewScreening]) -> list[NewScreening]:
    """Insert screenings; returns each as stored, first write wins.

    The patient was resolved (and, if new, created) by the admission check; a command accepted before that
    check existed names only the external id, and its patient is created here when missing, never updated.
    The screening keeps the lab and the referring doctor the patient had when it was recorded.
    """
    legacy = [s for s in screenings if s.patient_id is None]
    if legacy:
        await conn.execute(
            text("INSERT INTO patients (id, external_id, name_ciphertext) VALUES (:id, :ext, :name) "
                 "ON CONFLICT (external_id) DO NOTHING"),
            [{"id": uuid.uuid4(), "ext": s.patient_external_id, "name": s.patient_name_ciphertext} for s in legacy],
        )
    insert = text(
        "INSERT INTO screenings (id, patient_id, status, cbc, assessment, rejection_reason, label, risk_class, "
        "model_version, requested_by, correlation_id, requested_at, recorded_at, consent_id, lab_id, doctor_id) "
        "SELECT :id, p.id, :status, :cbc, :assessment, :reason, :label, :risk, :model, :by, :corr, :req, :rec, "
        ":consent, p.lab_id, p.referring_doctor_id FROM patients p "
        "WHERE p.id = COALESCE(CAST(:pid AS uuid), (SELECT x.id FROM patients x WHERE x.external_id = :ext)) "
        "ON CONFLICT (id) DO NOTHING"
    ).bindparams(bindparam("cbc", type_=JSONB), bindparam("assessment", type_=JSONB))
    await conn.execute(
        insert,
        [
            {"id": s.id, "status": s.status, "cbc": s.cbc, "assessment": s.assessment, "reason": s.rejection_reason,
             "label": s.label, "risk": s.risk_class, "model": s.model_version, "by": s.requested_by,
             "corr": s.correlation_id, "req": s.requested_at, "rec": s.recorded_at, "ext": s.patient_external_id,
             "pid": s.patient_id, "consent": s.consent_id}
            for s in screenings
        ],
    )
    stored = await conn.execute(
        text(f"SELECT {_SCREENING_COLUMNS} {_FROM} WHERE s.id = ANY(:ids)"),
        {"ids": [s.id for s in screenings]},
    )
    return [_row(r) for r in stored]


async def screening(conn: AsyncConnection, screening_id: uuid.UUID, *,
                    doctor_user: uuid.UUID | None = None) -> NewScreening | None:
    scope = f" AND {DOCTOR_SCOPE}" if doctor_user else ""
    params: dict[str, Any] = {"id": screening_id} | ({"doctor_user": doctor_user} if doctor_user else {})
    row = (await conn.execute(text(f"SELECT {_SCREENING_COLUMNS} {_FROM} WHERE s.id = :id{scope}"), params)).first()
    return _row(row) if row else None


@dataclass(frozen=True)
class HistoryFilter:
    patient_id: uuid.UUID | None = None
    patient_external_id: str | None = None
    lab_id: uuid.UUID | None = None
    doctor_id: uuid.UUID | None = None
    risk_class: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def used(self) -> list[str]:
        return [k for k, v in self.__dict__.items() if v is not None]


async def history(conn: AsyncConnection, *, limit: int, before: tuple[datetime, uuid.UUID] | None,
                  where: HistoryFilter | None = None, doctor_user: uuid.UUID | None = None,
                  patient_external_id: str | None = None) -> list[NewScreening]:
    """Newest first, keyset-paginated on (recorded_at, id) so pages stay stable while screenings arrive."""
    where = where or HistoryFilter(patient_external_id=patient_external_id)
    clauses, params = [], {"limit": limit}
    if before is not None:
        clauses.append("(s.recorded_at, s.id) < (:before_at, :before_id)")
        params |= {"before_at": before[0], "before_id": before[1]}
    for value, clause, name in (
        (where.patient_id, "s.patient_id = :patient_id", "patient_id"),
        (where.patient_external_id, "p.external_id = :ext", "ext"),
        (where.lab_id, "s.lab_id = :lab_id", "lab_id"),
        (where.doctor_id, "s.doctor_id = :doctor_id", "doctor_id"),
        (where.risk_class, "s.risk_class = :risk_class", "risk_class"),
        (where.since, "s.recorded_at >= :since", "since"),
        (where.until, "s.recorded_at < :until", "until"),
        (doctor_user, DOCTOR_SCOPE, "doctor_user"),
    ):
        if value is not None:
            clauses.append(clause)
            params[name] = value
    condition = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await conn.execute(
        text(f"SELECT {_SCREENING_COLUMNS} {_FROM} {condition} "
             "ORDER BY s.recorded_at DESC, s.id DESC LIMIT :limit"),
        params,
    )
    return [_row(r) for r in rows]


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# -- PHI keys ----------------------------------------------------------------------------------------------

#: Every encrypted column of a tenant: (table, ciphertext column, key id column, blind index column).
ENCRYPTED_COLUMNS = (
    ("patients", "name_ciphertext", "name_key_id", "name_index"),
    ("consents", "text_ciphertext", "text_key_id", None),
)


async def key_usage(conn: AsyncConnection) -> dict[str | None, int]:
    """How many ciphertexts of this tenant each key id made (``None``: made before key ids were kept)."""
    usage: dict[str | None, int] = {}
    for table, ciphertext, key_id, _ in ENCRYPTED_COLUMNS:
        rows = await conn.execute(text(
            f"SELECT {key_id}, count(*) FROM {table} WHERE {ciphertext} IS NOT NULL GROUP BY {key_id}"))
        for kid, count in rows:
            usage[kid] = usage.get(kid, 0) + count
    return usage
