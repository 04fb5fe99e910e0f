"""Bulk screening in the screening service: admit a batch's rows in bulk, record its classified chunks.

``POST /internal/admissions/batch`` is the bulk form of ``/internal/admissions`` (same caller token, the
tenant from it, the same rule ``domain.admit`` for every row): the gateway asks it before accepting a batch.
It resolves every patient by external id and finds the active consents in two statements whatever the
number of rows, and creates the new patients (only where the policy requires no consent) in one insert.
Names arrive as the gateway's ciphertexts and are sealed with this service's keys, as for a single screening.

A classified chunk is stored in one transaction with one INSERT, idempotent on screening id; then the chunk
is announced with one ``ScreeningBatchRecorded`` v2 carrying every row's screening (its event id derived from
the classified chunk's), and no per-row ``ScreeningRecorded``. A redelivered chunk inserts nothing and
re-announces what is stored under the same event id, so a crash between commit and publish loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from screening import domain, store
from screening.access import RECORD_KEEPERS, Tenant, tenant
from screening.phi import PhiVault
from shared.db import in_schema
from shared.events import Actor, Envelope, new_envelope
from shared.events import batch as ev
from shared.events import records as records_ev
from shared.events import screening as screening_ev
from shared.events.envelope import derived_event_id
from shared.events.screening import Sex
from shared.memory import gc_paused
from shared.text import Text

log = logging.getLogger(__name__)
router = APIRouter(tags=["internal"])
Screener = Annotated[Tenant, Depends(tenant(*RECORD_KEEPERS))]
SERVICE_ACTOR = Actor(role="service", service="screening")
ClassifiedEnvelope = Envelope[ev.ScreeningBatchClassifiedV1]
#: The outcome of a row whose patient record vanished before its chunk was stored (it cannot be recorded).
PATIENT_MISSING = "not recorded: the patient record was not found"


# -- admission: pure -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One row to admit: the patient details the check compares (the name only as plaintext in memory)."""

    external_id: str
    name: str | None
    name_index: str | None
    sex: str | None
    age: float | None


Verdict = domain.Admitted | domain.Refused


def judge_rows(candidates: Sequence[Candidate], *, consent_required: bool,
               known: dict[str, domain.StoredPatient], consents: dict[str, uuid.UUID | None],
               create: bool = True) -> tuple[list[Verdict], dict[str, tuple[uuid.UUID, Candidate]]]:
    """``domain.admit`` for every row. With ``create``, a patient admitted while unknown (no consent required) is
    planned from its first row, with a new id, and the later rows of that patient are compared with it: a
    batch cannot give one new patient two names. Returns the verdicts and the planned patients by external id.
    """
    known = dict(known)
    planned: dict[str, tuple[uuid.UUID, Candidate]] = {}
    verdicts: list[Verdict] = []
    for c in candidates:
        verdict = domain.admit(consent_required=consent_required, patient=known.get(c.external_id),
                               consent_id=consents.get(c.external_id), name_index=c.name_index, sex=c.sex)
        if create and isinstance(verdict, domain.Admitted) and verdict.patient_id is None:
            patient_id = uuid.uuid4()
            known[c.external_id] = domain.StoredPatient(patient_id, c.name_index, c.name is not None, c.sex)
            planned[c.external_id] = (patient_id, c)
            verdict = domain.Admitted(patient_id, None)
        verdicts.append(verdict)
    return verdicts, planned


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    if isinstance(verdict, domain.Refused):
        return {"refused": verdict.reason, "patient_id": str(verdict.patient_id) if verdict.patient_id else None,
                "fields": list(verdict.fields)}
    return {"patient_id": str(verdict.patient_id), "consent_id": str(verdict.consent_id) if verdict.consent_id else None}


# -- admission: route ------------------------------------------------------------------------------------


class AdmissionRowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_id: Text = Field(min_length=1, max_length=64)
    name_ciphertext: Text | None = Field(None, description="The gateway's Fernet ciphertext of the name")
    sex: Sex | None = None
    age: float | None = None


class BatchAdmissionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[AdmissionRowIn] = Field(min_length=1, max_length=ev.MAX_BATCH_ROWS)


def _candidates(rows: list[AdmissionRowIn], vault: PhiVault, org: uuid.UUID) -> list[Candidate]:
    """Open the names (raises ValueError when one is not readable with this service's keys) and index them."""
    out = []
    for r in rows:
        name = vault.open(r.name_ciphertext)
        out.append(Candidate(r.external_id, name, vault.name_index(org, name) if name is not None else None,
                             r.sex.value if r.sex else None, r.age))
    return out


async def _facts(conn: Any, external_ids: list[str]) -> tuple[bool, dict[str, domain.StoredPatient],
                                                               dict[str, uuid.UUID | None], float | None]:
    policy, facts = await store.admission_facts_many(conn, external_ids)
    known = {e: domain.StoredPatient(f["patient_id"], f["name_index"], f["has_name"], f["sex"]) for e, f in facts.items()}
    return (policy["consent_required"], known, {e: f["consent_id"] for e, f in facts.items()},
            policy["expected_prevalence"])


@router.post("/internal/admissions/batch")
async def admit_batch(body: BatchAdmissionIn, t: Screener) -> Response:
    """May these rows of a batch be screened? One verdict per row, in order: the patient and consent, or the
    refusal (``consent_required``, ``patient_details_mismatch`` with the fields)."""
    try:
        candidates = await asyncio.to_thread(_candidates, body.rows, t.vault, t.org)
    except ValueError:
        return JSONResponse({"detail": "a patient name is not readable with this service's keys"}, 503)
    async with t.tx() as conn:
        consent_required, known, consents, prevalence = await _facts(conn, sorted({c.external_id for c in candidates}))
        verdicts, planned = judge_rows(candidates, consent_required=consent_required, known=known, consents=consents)
        created = await store.insert_patients_if_absent(conn, [
            {"id": patient_id, "external_id": external_id, "sex": c.sex, "age": int(c.age) if c.age is not None else None}
            | _sealed(t, c.name) for external_id, (patient_id, c) in planned.items()], t.principal.user_id)
        raced = sorted(set(planned) - created)
        if raced:  # created meanwhile by another request: judge those rows against the stored patient
            consent_required, known, consents, prevalence = await _facts(conn, raced)
            positions = [i for i, c in enumerate(candidates) if c.external_id in known]
            again, _ = judge_rows([candidates[i] for i in positions], consent_required=consent_required,
                                  known=known, consents=consents, create=False)
            for i, verdict in zip(positions, again, strict=True):
                verdicts[i] = verdict
        for external_id in created:
            await t.emit(conn, records_ev.PatientCreatedV1(patient_id=planned[external_id][0], lab_id=None,
                                                           referring_doctor_id=None, via="classify"))
        for verdict in verdicts:
            if isinstance(verdict, domain.Refused):
                await t.emit(conn, records_ev.ScreeningAdmissionRefusedV1(
                    reason=verdict.reason, patient_id=verdict.patient_id,  # type: ignore[arg-type]
                    fields=list(verdict.fields)))
    return Response(json.dumps({"results": [verdict_json(v) for v in verdicts], "expected_prevalence": prevalence}),
                    media_type="application/json")


def _sealed(t: Tenant, name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    sealed = t.vault.seal_name(t.org, name)
    return {"name_ciphertext": sealed.ciphertext, "name_key_id": sealed.key_id, "name_index": sealed.index}


# -- recording a chunk: pure -----------------------------------------------------------------------------


def stored_form(row: ev.ClassifiedRow, requested_at: datetime) -> store.BatchScreening:
    request, assessment = row.request, row.assessment
    assert request.patient.patient_id is not None, "a batch row names the patient its admission resolved"
    return store.BatchScreening(
        id=request.screening_id, patient_id=request.patient.patient_id,
        status="classified" if assessment else "rejected", cbc=request.cbc.model_dump_json(),
        assessment=assessment.model_dump_json() if assessment else None,
        rejection_reason=None if assessment else (row.rejection_reason or "not assessed"),
        label=assessment.label.value if assessment else None,
        risk_class=int(assessment.risk_class) if assessment else None,
        model_version=assessment.model.version if assessment else None,
        requested_at=requested_at, consent_id=request.consent_id, batch_row=request.row,
        patient_external_id=request.patient.external_id, collected_at=request.collected_at,
    )


def recorded_now(row: ev.ClassifiedRow, requested_at: datetime, now: datetime) -> screening_ev.ScreeningRecordedV1:
    """The announcement of a row stored by this delivery, made from the chunk (nothing read back)."""
    return screening_ev.ScreeningRecordedV1(
        screening_id=row.request.screening_id, status="classified" if row.assessment else "rejected",
        patient_external_id=row.request.patient.external_id, assessment=row.assessment,
        rejection_reason=None if row.assessment else (row.rejection_reason or "not assessed"),
        requested_at=requested_at, recorded_at=now, patient_id=row.request.patient.patient_id,
        collected_at=row.request.collected_at)


def recorded_before(stored: store.NewScreening) -> screening_ev.ScreeningRecordedV1:
    """The announcement of a screening as it was stored (first write wins): what a single screening's
    ``ScreeningRecorded`` carries, what a redelivered chunk re-announces, and what ``GET
    /api/screenings/{id}/recorded`` answers, so it must equal what was published, byte for byte in canonical
    JSON (the audit ledger keeps its digest). Hence the external id the screening was recorded with, not the
    patient's current one."""
    assert stored.recorded_external_id is not None, "a screening read back from the database"
    assessment = store.as_json(stored.assessment)
    return screening_ev.ScreeningRecordedV1(
        screening_id=stored.id, status=stored.status,  # type: ignore[arg-type]
        patient_external_id=stored.recorded_external_id,
        assessment=screening_ev.Assessment.model_validate(assessment) if assessment else None,
        rejection_reason=stored.rejection_reason, requested_at=stored.requested_at,
        recorded_at=stored.recorded_at, patient_id=stored.patient_id, collected_at=stored.collected_at)


def not_recorded(row: ev.ClassifiedRow, requested_at: datetime, now: datetime) -> screening_ev.ScreeningRecordedV1:
    """A row whose patient record vanished before its chunk was stored: reported, never stored."""
    return screening_ev.ScreeningRecordedV1(
        screening_id=row.request.screening_id, status="rejected", patient_external_id=row.request.patient.external_id,
        assessment=None, rejection_reason=PATIENT_MISSING, requested_at=requested_at, recorded_at=now,
        patient_id=row.request.patient.patient_id, collected_at=row.request.collected_at)


# -- recording a chunk: I/O ------------------------------------------------------------------------------


def decode_classified(raw: bytes) -> Envelope[ev.ScreeningBatchClassifiedV1] | None:
    """A classified chunk of a tenant, or None (logged by field, never by value) for what can never be stored."""
    try:
        envelope = ClassifiedEnvelope.model_validate_json(raw)
    except ValidationError as exc:
        log.error("unreadable classified chunk skipped (the audit ledger keeps it): %s",
                  sorted({".".join(map(str, e["loc"][:2])) for e in exc.errors()}))
        return None
    if envelope.tenant_id is None or any(r.request.patient.patient_id is None for r in envelope.payload.rows):
        log.error("classified chunk without tenant or patient ids skipped (the audit ledger keeps it)")
        return None
    return envelope


async def record_chunk(registry: store.TenantRegistry, envelope: Envelope[ev.ScreeningBatchClassifiedV1]
                       ) -> Envelope[ev.ScreeningBatchRecordedV2]:
    """Store a chunk (one transaction) and return its one announcement, ``ScreeningBatchRecorded`` v2: each
    row as stored now, as an earlier delivery stored it (first write wins), or as not recorded."""
    chunk, tenant_id = envelope.payload, envelope.tenant_id
    assert tenant_id is not None
    now = datetime.now(UTC)
    with gc_paused():
        stored = [stored_form(r, chunk.requested_at) for r in chunk.rows]
    schema = await registry.provision(tenant_id)
    async with in_schema(registry.engine, schema) as conn:
        inserted = await store.record_batch(
            conn, stored, job_id=chunk.job_id, requested_by=envelope.actor.user_id,
            correlation_id=envelope.correlation_id, recorded_at=now)
        earlier_ids = [r.request.screening_id for r in chunk.rows if r.request.screening_id not in inserted]
        earlier = {s.id: s for s in await store.screenings_by_id(conn, earlier_ids)} if earlier_ids else {}
    with gc_paused():
        return announcement(envelope, inserted, earlier, now)


def announcement(envelope: Envelope[ev.ScreeningBatchClassifiedV1], inserted: set[uuid.UUID],
                 earlier: dict[uuid.UUID, store.NewScreening], now: datetime
                 ) -> Envelope[ev.ScreeningBatchRecordedV2]:
    """The chunk's ``ScreeningBatchRecorded`` v2, its event id derived from the classified chunk's."""
    chunk, tenant_id = envelope.payload, envelope.tenant_id
    rows: list[ev.RecordedRow] = []
    for r in chunk.rows:
        screening_id = r.request.screening_id
        if screening_id in inserted:
            recorded = recorded_now(r, chunk.requested_at, now)
        elif screening_id in earlier:
            recorded = recorded_before(earlier[screening_id])
        else:
            log.error("a batch row's patient record was not found; the row is reported not recorded")
            recorded = not_recorded(r, chunk.requested_at, now)
        rows.append(ev.RecordedRow(row=r.request.row, screening=recorded))
    if earlier:
        log.info("classified chunk delivered again: %d stored rows re-announced", len(earlier))
    kind, version = ev.SCREENING_BATCH_RECORDED_V2
    return new_envelope(
        ev.ScreeningBatchRecordedV2(job_id=chunk.job_id, chunk=chunk.chunk, rows=rows, recorded_at=now),
        event_type=kind, event_version=version, tenant_id=tenant_id, actor=SERVICE_ACTOR, causation=envelope,
        event_id=derived_event_id(envelope.event_id, kind))
