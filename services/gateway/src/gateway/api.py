"""Public HTTP API: classify through Kafka, everything else routed to the owning service."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway import admission, store
from gateway.intake import Answer, Intake, KeyReused, fingerprint
from gateway.proxy import forward
from shared.events.catalog import asyncapi_json
from shared.events.screening import CompleteBloodCount, check_collection_time
from shared.text import Text, username_key
from shared.tokens import Principal, Role
from shared.web import current_principal, require_roles, tenant_of

router = APIRouter()
Screener = Annotated[Principal, Depends(require_roles(Role.LAB_TECHNICIAN, Role.ORG_ADMIN))]
Authenticated = Annotated[Principal, Depends(current_principal)]


class PatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$",
                             description="The lab's patient identifier")
    name: Text | None = Field(None, min_length=1, max_length=200, description="PHI: encrypted before it leaves")


class ClassifyRequest(BaseModel):
    """Unknown fields are refused (422), so a body naming ``organization_id`` or ``tenant_id`` cannot look as if
    it chose a tenant: the tenant is always the token's."""

    model_config = ConfigDict(extra="forbid")

    patient: PatientIn
    cbc: CompleteBloodCount
    collected_at: datetime | None = Field(
        None, description="When the blood was drawn: ISO 8601 with a time zone, at most 365 days ago, not in the "
                          "future (5 minutes of clock skew are allowed)")

    @field_validator("collected_at", mode="before")
    @classmethod
    def _iso_text(cls, raw: Any) -> Any:
        """Only ISO 8601 text: a bare number would be read as Unix seconds, which no lab means."""
        if raw is not None and not isinstance(raw, str | datetime):
            raise ValueError("collected_at must be an ISO 8601 date-time with a time zone")
        return raw

    @field_validator("collected_at")
    @classmethod
    def _plausible_collection_time(cls, value: datetime | None) -> datetime | None:
        return None if value is None else check_collection_time(value, datetime.now(UTC))


async def limited(request: Request, rule: str, who: str) -> None:
    """Count a request of ``who`` against ``rule`` (see gateway.ratelimit); over it: 429 with Retry-After.

    A download whose path ends in ``/export`` counts against the ``export`` rule whatever route serves it.
    """
    limits = request.app.state.rate_limits
    limits.configure(request.app.state.settings)
    if rule == "default" and request.url.path.rstrip("/").rsplit("/", 1)[-1] == "export":
        rule = "export"
    verdict = await limits.hit(rule, who)
    if not verdict.allowed:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many requests",
                            headers={"Retry-After": str(verdict.retry_after_seconds)})


def client_ip(request: Request) -> str:
    """The peer, or the client our trusted proxies name (resolved by gateway.middleware, never the header)."""
    return request.client.host if request.client else "unknown"


async def account_of_login(request: Request) -> str | None:
    """The account a login names, in the one normal form the auth service locks (``shared.text``), digested so
    that no typed username is kept in the limiter's keys; None when the body names none (auth answers 422)."""
    try:
        username = json.loads(await request.body()).get("username")
    except (ValueError, AttributeError):
        return None
    if not isinstance(username, str):
        return None
    return hashlib.sha256(username_key(username).encode("utf-8", "surrogatepass")).hexdigest()[:32]


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
           description="Retrying with the same key (per organisation) returns the first screening"),
]


def _answer(answer: Answer) -> JSONResponse:
    url = f"/api/screenings/{answer.screening_id}"
    headers = {"Location": url} | ({"Idempotent-Replayed": "true"} if answer.replayed else {})
    if not answer.recorded:
        return JSONResponse({"id": str(answer.screening_id), "status": "pending", "url": url}, status_code=202,
                            headers=headers)
    outcome: dict[str, Any] = answer.outcome or {"status": "recorded"}
    return JSONResponse({"id": str(answer.screening_id), "url": url, **outcome}, headers=headers)


def _key_reused() -> JSONResponse:
    return JSONResponse(
        {"detail": "invalid request", "errors": [{
            "field": "header.Idempotency-Key", "type": "idempotency_key_reused",
            "message": "this Idempotency-Key was used for a different request (patient or CBC)"}]},
        status_code=422)


@router.post("/api/screening/classify", tags=["screening"],
             responses={202: {"description": "Accepted; not yet recorded. Poll the URL given."},
                        403: {"description": "Refused: the organisation requires an active consent"},
                        409: {"description": "Refused: patient details differ from the patient's record"}})
async def classify(body: ClassifyRequest, request: Request, principal: Screener,
                   idempotency_key: IdempotencyKey = None) -> Response:
    """Screen a CBC. Checked first (consent, patient details) by the screening service; nothing is accepted
    or published when refused."""
    await limited(request, "classify", str(principal.user_id))
    tenant = tenant_of(principal)
    intake: Intake = request.app.state.intake
    wait = request.app.state.settings.classify_wait_seconds
    request_fingerprint = fingerprint(body.patient.external_id, body.cbc, body.collected_at) \
        if idempotency_key else None
    try:
        if idempotency_key:
            replay = await intake.replay(tenant, idempotency_key, request_fingerprint, wait)
            if replay is not None:
                return _answer(replay)
        admitted = await admission.admit(
            request, external_id=body.patient.external_id,
            name_ciphertext=intake.cipher.encrypt(body.patient.name) if body.patient.name else None, cbc=body.cbc)
        if not isinstance(admitted, admission.Admitted):
            return admitted
        command = intake.command(principal, tenant, body.patient.external_id, body.cbc,
                                 patient_id=admitted.patient_id, consent_id=admitted.consent_id,
                                 expected_prevalence=admitted.expected_prevalence,
                                 collected_at=body.collected_at)
        return _answer(await intake.submit(command, wait, idempotency_key=idempotency_key,
                                           request_fingerprint=request_fingerprint))
    except KeyReused:
        return _key_reused()


@router.get("/api/screenings/{screening_id}", tags=["screening"], responses={
    202: {"description": "Accepted, not yet recorded; a batch row names its job (batch_id)"}})
async def screening(screening_id: uuid.UUID, request: Request, principal: Authenticated) -> Response:
    """A screening; one the gateway accepted (classify or a batch row) but the screening service has not
    recorded yet is 202 pending for the organisation's screeners, not 404."""
    await limited(request, "default", str(principal.user_id))
    return await _or_pending(screening_id, request, principal)


async def _or_pending(screening_id: uuid.UUID, request: Request, principal: Principal) -> Response:
    """The screening service's answer, except that its 404 for a screening the gateway accepted but the service
    has not recorded yet is 202 pending for the organisation's screeners."""
    response = await forward(request.app.state.http, request.app.state.settings.screening_url, request)
    if (response.status_code == status.HTTP_404_NOT_FOUND and principal.org_id is not None
            and principal.role in (Role.LAB_TECHNICIAN, Role.ORG_ADMIN)):
        async with request.app.state.engine.begin() as conn:
            accepted = await store.pending(conn, screening_id, principal.org_id)
        if accepted is not None:
            batch = {"batch_id": str(accepted.batch_id)} if accepted.batch_id else {}
            return JSONResponse({"id": str(screening_id), "status": "pending", **batch}, status_code=202)
    return response


@router.get("/api/screenings/{screening_id}/recorded", tags=["screening"], responses={
    202: {"description": "Accepted, not yet recorded; a batch row names its job (batch_id)"}})
async def recorded_screening(screening_id: uuid.UUID, request: Request, principal: Authenticated) -> Response:
    """A screening as recorded (the object its event carried), answered by the screening service: what the
    audit ledger's proof of that screening is checked against. Not yet recorded: 202 pending, as above."""
    await limited(request, "default", str(principal.user_id))
    return await _or_pending(screening_id, request, principal)


@router.api_route("/api/screening/{rest:path}", methods=["GET", "PUT"], tags=["screening"])
async def screening_routes(rest: str, request: Request, principal: Authenticated) -> Response:
    """History, export and the organisation's screening policy, answered by the screening service."""
    await limited(request, "default", str(principal.user_id))
    return await forward(request.app.state.http, request.app.state.settings.screening_url, request)


@router.get("/api/analytics/{rest:path}", tags=["analytics"])
async def analytics_routes(rest: str, request: Request, principal: Authenticated) -> Response:
    """The organisation's screening counts and the model's card, answered by the screening service."""
    await limited(request, "default", str(principal.user_id))
    return await forward(request.app.state.http, request.app.state.settings.screening_url, request)


@router.get("/api/events/asyncapi.json", tags=["events"])
async def asyncapi(request: Request, principal: Authenticated) -> Response:
    """The AsyncAPI document of every topic and event, generated from the contracts (docs/event-stream.md)."""
    await limited(request, "default", str(principal.user_id))
    return Response(asyncapi_json(), media_type="application/json")


RECORD_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]


@router.api_route("/api/labs", methods=RECORD_METHODS, tags=["records"])
@router.api_route("/api/labs/{rest:path}", methods=RECORD_METHODS, tags=["records"])
@router.api_route("/api/doctors", methods=RECORD_METHODS, tags=["records"])
@router.api_route("/api/doctors/{rest:path}", methods=RECORD_METHODS, tags=["records"])
@router.api_route("/api/patients", methods=RECORD_METHODS, tags=["records"])
@router.api_route("/api/patients/{rest:path}", methods=RECORD_METHODS, tags=["records"])
@router.api_route("/api/consents", methods=RECORD_METHODS, tags=["records"])
@router.api_route("/api/consents/{rest:path}", methods=RECORD_METHODS, tags=["records"])
async def record_routes(request: Request, principal: Authenticated, rest: str = "") -> Response:
    """Labs, doctors, patients and consents of the caller's organisation, answered by the screening service."""
    await limited(request, "default", str(principal.user_id))
    return await forward(request.app.state.http, request.app.state.settings.screening_url, request)


@router.api_route("/api/audit", methods=["GET"], tags=["audit"])
@router.api_route("/api/audit/{rest:path}", methods=["GET"], tags=["audit"])
async def audit_routes(request: Request, principal: Authenticated, rest: str = "") -> Response:
    await limited(request, "default", str(principal.user_id))
    return await forward(request.app.state.http, request.app.state.settings.audit_url, request)


@router.api_route("/api/auth/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], tags=["auth"])
async def auth_routes(rest: str, request: Request) -> Response:
    """Rate-limited per client address (login, refresh and MFA codes each by their own rule; logins also per
    account); the auth service verifies everything else. Only ``/api/auth/...`` is reachable: dot segments are
    refused, so no path can be made to reach the auth service's internal routes."""
    if any(segment in (".", "..") for segment in rest.split("/")):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    rule = {"login": "login", "refresh": "refresh", "logout": "refresh", "mfa/verify": "mfa",
            "mfa/verify-setup": "mfa", "mfa/disable": "mfa", "mfa/backup-codes": "mfa"}.get(rest.strip("/"), "default")
    await limited(request, rule, client_ip(request))
    if rule == "login" and (account := await account_of_login(request)) is not None:
        await limited(request, "login_account", account)  # spreading guesses over addresses does not help
    return await forward(request.app.state.http, request.app.state.settings.auth_url, request)
