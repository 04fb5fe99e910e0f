"""SQL of the screening service: the tenant registry and each tenant's patients and screenings.

Every clinical query runs inside ``shared.db.in_schema(engine, tenant_schema(org))``; the connection's
default search path names no schema, so a forgotten tenant fails instead of leaking.
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


_SCREENING_COLUMNS = (
    "s.id, p.external_id, p.name_ciphertext, s.status, s.cbc, s.assessment, s.rejection_reason, s.label, "
    "s.risk_class, s.model_version, s.requested_by, s.correlation_id, s.requested_at, s.recorded_at"
)


def _row(row: Any) -> NewScreening:
    return NewScreening(*row)


async def record(conn: AsyncConnection, screenings: list[NewScreening]) -> list[NewScreening]:
    """Insert screenings (and their patients when new); returns each as stored, first write wins."""
    patient_rows = [
        {"id": uuid.uuid4(), "ext": s.patient_external_id, "name": s.patient_name_ciphertext} for s in screenings
    ]
    await conn.execute(
        text("INSERT INTO patients (id, external_id, name_ciphertext) VALUES (:id, :ext, :name) "
             "ON CONFLICT (external_id) DO NOTHING"),
        patient_rows,
    )
    insert = text(
        "INSERT INTO screenings (id, patient_id, status, cbc, assessment, rejection_reason, label, risk_class, "
        "model_version, requested_by, correlation_id, requested_at, recorded_at) "
        "SELECT :id, p.id, :status, :cbc, :assessment, :reason, :label, :risk, :model, :by, :corr, :req, :rec "
        "FROM patients p WHERE p.external_id = :ext ON CONFLICT (id) DO NOTHING"
    ).bindparams(bindparam("cbc", type_=JSONB), bindparam("assessment", type_=JSONB))
    await conn.execute(
        insert,
        [
            {"id": s.id, "status": s.status, "cbc": s.cbc, "assessment": s.assessment, "reason": s.rejection_reason,
             "label": s.label, "risk": s.risk_class, "model": s.model_version, "by": s.requested_by,
             "corr": s.correlation_id, "req": s.requested_at, "rec": s.recorded_at, "ext": s.patient_external_id}
            for s in screenings
        ],
    )
    stored = await conn.execute(
        text(f"SELECT {_SCREENING_COLUMNS} FROM screenings s JOIN patients p ON p.id = s.patient_id "
             "WHERE s.id = ANY(:ids)"),
        {"ids": [s.id for s in screenings]},
    )
    return [_row(r) for r in stored]


async def screening(conn: AsyncConnection, screening_id: uuid.UUID) -> NewScreening | None:
    row = (await conn.execute(
        text(f"SELECT {_SCREENING_COLUMNS} FROM screenings s JOIN patients p ON p.id = s.patient_id "
             "WHERE s.id = :id"), {"id": screening_id},
    )).first()
    return _row(row) if row else None


async def history(conn: AsyncConnection, *, limit: int, before: tuple[datetime, uuid.UUID] | None,
                  patient_external_id: str | None) -> list[NewScreening]:
    """Newest first, keyset-paginated on (recorded_at, id) so pages stay stable while screenings arrive."""
    clauses, params = [], {"limit": limit}
    if before is not None:
        clauses.append("(s.recorded_at, s.id) < (:before_at, :before_id)")
        params |= {"before_at": before[0], "before_id": before[1]}
    if patient_external_id is not None:
        clauses.append("p.external_id = :ext")
        params["ext"] = patient_external_id
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await conn.execute(
        text(f"SELECT {_SCREENING_COLUMNS} FROM screenings s JOIN patients p ON p.id = s.patient_id {where} "
             "ORDER BY s.recorded_at DESC, s.id DESC LIMIT :limit"), params,
    )
    return [_row(r) for r in rows]


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
