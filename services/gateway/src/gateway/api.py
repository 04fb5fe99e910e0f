"""Public HTTP API: classify through Kafka, everything else routed to the owning service."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway import store
from gateway.intake import Intake
from gateway.proxy import forward
from shared.events.screening import CompleteBloodCount
from shared.tokens import Principal, Role
from shared.web import current_principal, require_roles, tenant_of

router = APIRouter()
Screener = Annotated[Principal, Depends(require_roles(Role.LAB_TECHNICIAN, Role.ORG_ADMIN))]
Authenticated = Annotated[Principal, Depends(current_principal)]


class PatientIn(BaseModel):
    external_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$",
                             description="The lab's patient identifier")
    name: str | None = Field(None, min_length=1, max_length=200, description="PHI: encrypted before it leaves")


class ClassifyRequest(BaseModel):
    patient: PatientIn
    cbc: CompleteBloodCount


async def limited(request: Request, rule: str, who: str) -> None:
    verdict = await request.app.state.rate_limits.hit(rule, who)
    if not verdict.allowed:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many requests",
                            headers={"Retry-After": str(verdict.retry_after_seconds)})


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/api/screening/classify", tags=["screening"],
             responses={202: {"description": "Accepted; not yet recorded. Poll the URL given."}})
async def classify(body: ClassifyRequest, request: Request, principal: Screener) -> JSONResponse:
    await limited(request, "classify", str(principal.user_id))
    intake: Intake = request.app.state.intake
    command = intake.command(principal, tenant_of(principal), body.patient.external_id, body.patient.name,
                             body.cbc)
    screening_id = command.payload.screening_id
    url = f"/api/screenings/{screening_id}"
    outcome = await intake.submit(command, request.app.state.settings.classify_wait_seconds)
    if outcome is None:
        return JSONResponse({"id": str(screening_id), "status": "pending", "url": url}, status_code=202,
                            headers={"Location": url})
    return JSONResponse({"id": str(screening_id), "url": url, **outcome.model_dump(mode="json")},
                        headers={"Location": url})


@router.get("/api/screenings/{screening_id}", tags=["screening"])
async def screening(screening_id: uuid.UUID, request: Request, principal: Authenticated) -> Response:
    response = await forward(request.app.state.http, request.app.state.settings.screening_url, request)
    if response.status_code == status.HTTP_404_NOT_FOUND and principal.org_id is not None:
        async with request.app.state.engine.begin() as conn:
            if await store.is_pending(conn, screening_id, principal.org_id):
                return JSONResponse({"id": str(screening_id), "status": "pending"}, status_code=202)
    return response


@router.api_route("/api/screening/{rest:path}", methods=["GET"], tags=["screening"])
async def screening_routes(rest: str, request: Request, principal: Authenticated) -> Response:
    await limited(request, "default", str(principal.user_id))
    return await forward(request.app.state.http, request.app.state.settings.screening_url, request)


@router.api_route("/api/audit", methods=["GET"], tags=["audit"])
@router.api_route("/api/audit/{rest:path}", methods=["GET"], tags=["audit"])
async def audit_routes(request: Request, principal: Authenticated, rest: str = "") -> Response:
    await limited(request, "default", str(principal.user_id))
    return await forward(request.app.state.http, request.app.state.settings.audit_url, request)


@router.api_route("/api/auth/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], tags=["auth"])
async def auth_routes(rest: str, request: Request) -> Response:
    """Login and refresh are rate-limited per client address; the auth service verifies everything else."""
    rule = {"login": "login", "refresh": "refresh"}.get(rest, "default")
    await limited(request, rule, client_ip(request))
    return await forward(request.app.state.http, request.app.state.settings.auth_url, request)
