"""Bulk screening over HTTP: upload a batch, follow its job. The chunks are the batch's intake.

``POST /api/screening/batch`` checks every row (``gateway.batch``), asks the screening service to admit the
good ones in bulk (patients, consents: names travel there encrypted and never to Kafka), commits the job and
its chunk commands in one transaction (from then on the rows are *accepted*), publishes one
``ScreeningBatchRequested`` per chunk and answers 202 with the job; it never waits for scoring.
An upload with an ``Idempotency-Key`` is found again by that key and its file's fingerprint: the same key
with the same file answers with the first job (``Idempotent-Replayed: true``) and accepts nothing new; the
same key with another file is a 422, as for classify.
``GET /api/screening/batch/{id}`` reports progress and pages the per-row outcomes. A redelivery loop
re-publishes the unrecorded chunks whenever the pipeline has stalled (a restarted broker, a crashed service).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import batch, store
from gateway.api import IdempotencyKey, Screener, limited
from shared.crypto import PhiCipher
from shared.events import Actor, Envelope, Topic
from shared.events import batch as ev
from shared.events.envelope import RawEnvelope
from shared.kafka import encode, publish_many
from shared.web import tenant_of

log = logging.getLogger(__name__)
UPLOAD_PATH = "/api/screening/batch"
ADMISSIONS_PATH = "/internal/admissions/batch"
router = APIRouter(tags=["screening"])


class BatchIntake:
    """Accepts chunk commands durably, publishes them, and re-publishes them while the pipeline stalls."""

    def __init__(self, engine: AsyncEngine, broker: KafkaBroker) -> None:
        self.engine = engine
        self.broker = broker

    async def accept(self, job: dict[str, Any], commands: list[Envelope[ev.ScreeningBatchRequestedV1]],
                     encoded: list[bytes], *, idempotency_key: str | None = None,
                     fingerprint: str | None = None) -> bool:
        """False (nothing accepted) when another upload took ``idempotency_key`` first."""
        chunks = [store.BatchChunk(c.payload.chunk, c.payload.rows[0].row, c.payload.rows[-1].row,
                                   len(c.payload.rows), raw, [r.screening_id for r in c.payload.rows])
                  for c, raw in zip(commands, encoded, strict=True)]
        async with self.engine.begin() as conn:
            return await store.accept_batch(conn, job, chunks, idempotency_key=idempotency_key,
                                            fingerprint=fingerprint)

    async def publish(self, commands: list[Envelope[ev.ScreeningBatchRequestedV1]], wait_seconds: float) -> bool:
        """True once the broker acknowledged every chunk; False leaves them to the redelivery loop."""
        try:
            await asyncio.wait_for(publish_many(self.broker, Topic.SCREENING_BATCH_REQUESTED, commands,
                                                key=lambda e: str(e.payload.job_id)), wait_seconds)
            return True
        except Exception:  # the broker is down: the chunks are safe in the table, the redeliverer resends them
            log.warning("broker unavailable; %d batch chunks will be redelivered", len(commands))
            return False

    async def redeliver_forever(self, idle_seconds: float, interval_seconds: float = 2.0) -> None:
        """Re-publish unrecorded chunks once no chunk has been recorded for ``idle_seconds``; consumers ignore
        the copies of chunks they already handled."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                async with self.engine.begin() as conn:
                    commands = await store.claim_stalled_chunks(conn, idle_seconds)
                if commands:
                    envelopes = [RawEnvelope.model_validate_json(raw) for raw in commands]
                    await publish_many(self.broker, Topic.SCREENING_BATCH_REQUESTED, envelopes,
                                       key=lambda e: str(e.payload["job_id"]))
                    log.info("redelivered %d unrecorded batch chunks", len(commands))
            except Exception:
                log.warning("batch redelivery pass failed; retrying", exc_info=True)


class Stopwatch:
    """Seconds spent in each step of an upload, returned with the answer (the benchmark reports them)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[f"{step}_seconds"] = round(now - self._since, 3)
        self._since = now


def _unprocessable(errors: list[dict[str, Any]], detail: str = "invalid request", **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": errors, **extra}, status_code=422)


def upload_fingerprint(source: str, data: bytes) -> str:
    """What an idempotent retry must repeat: the same file (bytes and media type)."""
    return hashlib.sha256(source.encode() + b"\n" + data).hexdigest()


async def _replayed(request: Request, tenant: uuid.UUID, key: str, fingerprint: str) -> Response | None:
    """The job first accepted under ``key`` (its current counts), a 422 when that was another file, or None."""
    async with request.app.state.engine.begin() as conn:
        keyed = await store.batch_by_idempotency_key(conn, tenant, key)
        if keyed is None:
            return None
        job_id, first_fingerprint = keyed
        if first_fingerprint != fingerprint:
            return _unprocessable([{"field": "header.Idempotency-Key", "type": "idempotency_key_reused",
                                    "message": "this Idempotency-Key was used for a different upload (another file)"}])
        job = await store.batch_job(conn, job_id, tenant, rejected_rows=batch.REPORTED_ROWS)
    assert job is not None
    url = f"{UPLOAD_PATH}/{job_id}"
    return JSONResponse(
        {"job_id": str(job_id), "url": url, "status": batch.status(job["accepted"], job["recorded"]),
         "total": job["total"], "accepted": job["accepted"], "rejected": job["rejected"],
         "rejected_rows": job["rejected_rows"]},
        status_code=status.HTTP_202_ACCEPTED, headers={"Location": url, "Idempotent-Replayed": "true"})


def _row_errors(rejected: list[batch.RejectedRow]) -> list[dict[str, Any]]:
    """Rejected rows in the platform's 422 shape, the row number in the field: ``rows.7.hb``."""
    return [{"field": f"rows.{r.row}.{p.field}", "message": p.message, "type": p.type}
            for r in rejected[:batch.REPORTED_ROWS] for p in r.errors]


def _admission_body(rows: list[batch.CheckedRow], cipher: PhiCipher) -> bytes:
    """The bulk admission request: names encrypted here, before they leave the gateway."""
    return json.dumps({"rows": [
        {"external_id": r.external_id, "name_ciphertext": cipher.encrypt(r.name) if r.name else None,
         "sex": r.cbc.sex.value, "age": r.cbc.age} for r in rows]}).encode()


async def _admit(request: Request, checked: batch.CheckedBatch) -> tuple[list[batch.AdmittedRow],
                                                                          list[batch.RejectedRow]] | Response:
    """Ask the screening service which rows may be screened (consent, patient details); refusals become
    rejected rows. When it cannot be asked, nothing is accepted (503)."""
    settings = request.app.state.settings
    body = await asyncio.to_thread(_admission_body, checked.accepted, request.app.state.intake.cipher)
    try:
        answer = await request.app.state.http.post(
            settings.screening_url + ADMISSIONS_PATH, content=body,
            headers={"authorization": request.headers["authorization"], "content-type": "application/json"},
            timeout=settings.batch_admission_timeout_seconds)
    except httpx.HTTPError:
        answer = None
    if answer is not None and answer.status_code < 500 and answer.status_code != 200:
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")
    verdicts = answer.json() if answer is not None and answer.status_code == 200 else {}
    results = verdicts.get("results")
    prevalence = verdicts.get("expected_prevalence")
    if not isinstance(results, list) or len(results) != len(checked.accepted):
        log.warning("bulk admission check unavailable; batch refused with 503")
        return Response('{"detail": "screening records are unavailable; nothing was accepted, retry later"}',
                        status_code=503, media_type="application/json", headers={"retry-after": "5"})
    admitted, refused = [], []
    for row, result in zip(checked.accepted, results, strict=True):
        if result.get("refused"):
            refused.append(batch.refused_row(checked.source, row, result["refused"], result.get("fields") or []))
        else:
            consent = result.get("consent_id")
            admitted.append(batch.AdmittedRow(row, uuid.UUID(result["patient_id"]),
                                              uuid.UUID(consent) if consent else None, prevalence))
    return admitted, refused


def _commands(job_id: uuid.UUID, tenant: uuid.UUID, actor: Actor, rows: list[batch.AdmittedRow],
              size: int) -> tuple[list[Envelope[ev.ScreeningBatchRequestedV1]], list[bytes]]:
    commands = batch.chunk_commands(job_id, tenant, actor, rows, size, datetime.now(UTC))
    return commands, [encode(c) for c in commands]


@router.post(
    UPLOAD_PATH, status_code=202,
    openapi_extra={"requestBody": {"required": True, "content": {
        "text/csv": {"schema": {"type": "string"}, "example": ",".join(batch.ACCEPTED_COLUMNS)},
        "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/ClassifyRequest"}}},
    }}},
    responses={202: {"description": "Accepted rows are queued; follow the job at its URL"},
               413: {"description": "The upload is larger than BATCH_MAX_BODY_BYTES"},
               415: {"description": "Neither text/csv nor application/json"},
               422: {"description": "Unreadable, more than BATCH_MAX_ROWS rows, no row accepted, or an "
                                    "Idempotency-Key already used for another file"}},
)
async def upload_batch(request: Request, principal: Screener, idempotency_key: IdempotencyKey = None) -> Response:
    """Screen a batch of CBCs (CSV with a header row, or a JSON array of classify bodies; at most
    ``BATCH_MAX_ROWS`` rows). Every row is checked first; rejected rows are reported with their number, field
    and reason, and the others are accepted and screened in the background. Retrying with the same
    ``Idempotency-Key`` and file answers with the first job."""
    await limited(request, "classify", str(principal.user_id))
    tenant = tenant_of(principal)
    settings = request.app.state.settings
    source = batch.MEDIA_TYPES.get(request.headers.get("content-type", "").split(";")[0].strip().lower())
    if source is None:
        return JSONResponse({"detail": "a batch is text/csv or application/json", "errors": [
            {"field": "header.content-type", "message": "use text/csv or application/json",
             "type": "unsupported_media_type"}]}, status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
    clock = Stopwatch()
    data = await request.body()
    clock.lap("receive")
    fingerprint = upload_fingerprint(source, data) if idempotency_key else None
    if idempotency_key and fingerprint:
        replayed = await _replayed(request, tenant, idempotency_key, fingerprint)
        if replayed is not None:
            return replayed
    try:
        checked = await asyncio.to_thread(batch.read_batch, data, source, settings.batch_max_rows)
    except batch.UnreadableBatch as unreadable:
        return _unprocessable([unreadable.problem.as_json()])
    clock.lap("validation")
    admitted: list[batch.AdmittedRow] = []
    refused: list[batch.RejectedRow] = []
    if checked.accepted:
        verdicts = await _admit(request, checked)
        if isinstance(verdicts, Response):
            return verdicts
        admitted, refused = verdicts
    clock.lap("admission")
    rejected = sorted(checked.rejected + refused, key=lambda r: r.row)
    if not admitted:
        return _unprocessable(_row_errors(rejected), "no row of the batch can be screened; nothing was accepted",
                              total=checked.total, rejected=len(rejected))
    job_id = uuid.uuid4()
    actor = Actor(user_id=principal.user_id, role=principal.role)
    commands, encoded = await asyncio.to_thread(_commands, job_id, tenant, actor, admitted, settings.batch_chunk_rows)
    job = {"id": job_id, "tenant": tenant, "by": principal.user_id, "source": checked.source, "total": checked.total,
           "accepted": len(admitted), "rejected": len(rejected), "rejected_rows": [r.as_json() for r in rejected],
           "chunks": len(commands)}
    intake: BatchIntake = request.app.state.batch_intake
    if not await intake.accept(job, commands, encoded, idempotency_key=idempotency_key, fingerprint=fingerprint):
        assert idempotency_key and fingerprint  # refused only when a concurrent upload took the key first
        replayed = await _replayed(request, tenant, idempotency_key, fingerprint)
        assert replayed is not None
        return replayed
    clock.lap("accept")
    published = await intake.publish(commands, settings.batch_publish_wait_seconds)
    clock.lap("publish")
    url = f"{UPLOAD_PATH}/{job_id}"
    return JSONResponse(
        {"job_id": str(job_id), "url": url, "status": "queued", "total": checked.total, "accepted": len(admitted),
         "rejected": len(rejected), "chunks": len(commands), "published": published,
         "rejected_rows": [r.as_json() for r in rejected[:batch.REPORTED_ROWS]],
         "timings": clock.laps},
        status_code=status.HTTP_202_ACCEPTED, headers={"Location": url})


Page = Annotated[int, Query(ge=1, le=1000, description="Rows per page")]
After = Annotated[int, Query(ge=0, description="Rows numbered above this one (the previous page's next_after)")]


@router.get(UPLOAD_PATH + "/{job_id}", responses={404: {"description": "No such job in your organisation"}})
async def batch_job(job_id: uuid.UUID, request: Request, principal: Screener, after: After = 0,
                    limit: Page = 100) -> Response:
    """Status (queued, running, completed), counts, rows/s so far, the first rejected rows and one page of
    per-row outcomes (row, screening id, status, label, risk class or reason) in row order: every accepted
    row, ``pending`` until it is recorded."""
    await limited(request, "default", str(principal.user_id))
    tenant = tenant_of(principal)
    async with request.app.state.engine.begin() as conn:
        job = await store.batch_job(conn, job_id, tenant, rejected_rows=batch.REPORTED_ROWS)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such batch job")
        outcomes = await store.batch_outcomes(conn, job_id, after=after, limit=limit + 1)
    return JSONResponse(batch.job_report(job, outcomes, now=datetime.now(UTC), limit=limit))


@router.get(UPLOAD_PATH + "/{job_id}/rejected", responses={404: {"description": "No such job in your organisation"}})
async def batch_rejected(job_id: uuid.UUID, request: Request, principal: Screener, after: After = 0,
                         limit: Page = 100) -> Response:
    """The job's rejected rows (row, and each field with its reason), in row order."""
    await limited(request, "default", str(principal.user_id))
    async with request.app.state.engine.begin() as conn:
        rows = await store.batch_rejected(conn, job_id, tenant_of(principal), after=after, limit=limit)
    if rows is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such batch job")
    return JSONResponse({"items": rows, "next_after": rows[-1]["row"] if len(rows) == limit else None})
