"""HTTP routes of the screening service (reached through the gateway): a tenant's screening records."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel

from screening import store
from shared.crypto import PhiCipher
from shared.db import in_schema, tenant_schema
from shared.events.screening import Assessment
from shared.tokens import Principal, Role
from shared.web import require_roles, tenant_of

router = APIRouter(tags=["screenings"])
CLINICAL_ROLES = (Role.ORG_ADMIN, Role.LAB_TECHNICIAN, Role.DOCTOR)
Clinician = Annotated[Principal, Depends(require_roles(*CLINICAL_ROLES))]


class Screening(BaseModel):
    id: uuid.UUID
    status: str
    patient_external_id: str
    patient_name: str | None
    cbc: dict[str, Any]
    assessment: Assessment | None
    rejection_reason: str | None
    requested_at: datetime
    recorded_at: datetime


class ScreeningPage(BaseModel):
    items: list[Screening]
    next_cursor: str | None


def _present(row: store.NewScreening, cipher: PhiCipher) -> Screening:
    assessment = store.as_json(row.assessment)
    return Screening(
        id=row.id, status=row.status, patient_external_id=row.patient_external_id,
        patient_name=cipher.decrypt(row.patient_name_ciphertext) if row.patient_name_ciphertext else None,
        cbc=store.as_json(row.cbc), assessment=assessment, rejection_reason=row.rejection_reason,
        requested_at=row.requested_at, recorded_at=row.recorded_at,
    )


def _cursor(row: store.NewScreening) -> str:
    return base64.urlsafe_b64encode(f"{row.recorded_at.isoformat()}|{row.id}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "cursor is not one this API issued") from None


@router.get("/api/screening/history", response_model=ScreeningPage)
async def history(
    request: Request, principal: Clinician,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    patient_external_id: str | None = None,
) -> ScreeningPage:
    org = tenant_of(principal)
    registry: store.TenantRegistry = request.app.state.registry
    if not registry.exists(org):
        return ScreeningPage(items=[], next_cursor=None)
    async with in_schema(registry.engine, tenant_schema(org)) as conn:
        rows = await store.history(conn, limit=limit, before=_parse_cursor(cursor) if cursor else None,
                                   patient_external_id=patient_external_id)
    cipher = request.app.state.cipher
    return ScreeningPage(items=[_present(r, cipher) for r in rows],
                         next_cursor=_cursor(rows[-1]) if len(rows) == limit else None)


@router.get("/api/screenings/{screening_id}", response_model=Screening)
async def get_screening(screening_id: uuid.UUID, request: Request, principal: Clinician) -> Screening:
    org = tenant_of(principal)
    registry: store.TenantRegistry = request.app.state.registry
    row = None
    if registry.exists(org):
        async with in_schema(registry.engine, tenant_schema(org)) as conn:
            row = await store.screening(conn, screening_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such screening")
    return _present(row, request.app.state.cipher)
