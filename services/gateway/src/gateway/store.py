"""SQL of the gateway's intake: the durable record that a screening was accepted (a transactional outbox).

A command accepted with an ``Idempotency-Key`` keeps the key (unique per tenant), a fingerprint of the
request (no PHI: patient external id and CBC) and, once recorded, the outcome, so a retry is answered with
the first screening instead of creating a second one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.events.batch import MAX_CHUNK_ROWS

SCHEMA = "gateway"


async def accept(conn: AsyncConnection, screening_id: uuid.UUID, tenant_id: uuid.UUID, command: bytes, *,
                 idempotency_key: str | None = None, fingerprint: str | None = None) -> bool:
    """Insert the command; False when the tenant already used ``idempotency_key`` (nothing inserted)."""
    if idempotency_key is None:
        await conn.execute(
            text("INSERT INTO screening_intake (screening_id, tenant_id, command) VALUES (:s, :t, :c)"),
            {"s": screening_id, "t": tenant_id, "c": command},
        )
        return True
    inserted = await conn.scalar(
        text("INSERT INTO screening_intake "
             "(screening_id, tenant_id, command, idempotency_key, request_fingerprint) VALUES (:s, :t, :c, :k, :f) "
             "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
             "RETURNING screening_id"),
        {"s": screening_id, "t": tenant_id, "c": command, "k": idempotency_key, "f": fingerprint},
    )
    return inserted is not None


@dataclass(frozen=True)
class Keyed:
    screening_id: uuid.UUID
    fingerprint: str | None
    recorded_at: datetime | None
    outcome: dict[str, Any] | None


async def by_idempotency_key(conn: AsyncConnection, tenant_id: uuid.UUID, key: str) -> Keyed | None:
    row = (await conn.execute(
        text("SELECT screening_id, request_fingerprint, recorded_at, outcome FROM screening_intake "
             "WHERE tenant_id = :t AND idempotency_key = :k"),
        {"t": tenant_id, "k": key},
    )).first()
    if row is None:
        return None
    outcome = json.loads(row[3]) if isinstance(row[3], str) else row[3]
    return Keyed(row[0], row[1], row[2], outcome)


async def mark_recorded(conn: AsyncConnection, screening_ids: Sequence[uuid.UUID],
                        events: Sequence[str]) -> None:
    """Close intake entries; keyed ones keep their outcome (the ``ScreeningRecorded`` payload: JSON, no PHI) to
    answer retries. ``events`` are the recorded events as published: PostgreSQL reads the payload out of the
    few a retry may ask for, so the gateway parses no event nobody waits for."""
    await conn.execute(
        text("UPDATE screening_intake i SET recorded_at = now(), "
             "outcome = CASE WHEN i.idempotency_key IS NOT NULL THEN CAST(v.event AS jsonb) -> 'payload' END "
             "FROM unnest(CAST(:ids AS uuid[]), CAST(:events AS text[])) AS v(screening_id, event) "
             "WHERE i.screening_id = v.screening_id AND i.recorded_at IS NULL"),
        {"ids": list(screening_ids), "events": list(events)},
    )


async def claim_unrecorded(conn: AsyncConnection, older_than_seconds: float, limit: int = 500) -> list[bytes]:
    """Commands accepted but not recorded in time; claimed so that concurrent gateways do not both resend."""
    rows = await conn.scalars(
        text(
            "UPDATE screening_intake SET published_at = now() WHERE screening_id IN ("
            "  SELECT screening_id FROM screening_intake WHERE recorded_at IS NULL"
            "  AND published_at < now() - make_interval(secs => :age)"
            "  ORDER BY published_at LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING command"
        ),
        {"age": older_than_seconds, "limit": limit},
    )
    return list(rows.all())


@dataclass(frozen=True)
class Pending:
    """A screening accepted but not yet recorded; ``batch_id`` names its job when it is a batch row."""

    batch_id: uuid.UUID | None


async def pending(conn: AsyncConnection, screening_id: uuid.UUID, tenant_id: uuid.UUID) -> Pending | None:
    """The screening if the intake or an unrecorded batch chunk of this tenant holds it; None otherwise, so
    another tenant's screening looks unknown. One statement on two indexes: the intake's primary key, and the
    GIN index of unrecorded chunks' screening ids (it serves ``@>``; ``= ANY`` would read every chunk), joined
    to the job's primary key for the tenant."""
    row = (await conn.execute(
        text("SELECT NULL::uuid FROM screening_intake "
             "  WHERE screening_id = :s AND tenant_id = :t AND recorded_at IS NULL "
             "UNION ALL "
             "SELECT c.job_id FROM batch_chunks c JOIN batch_jobs j ON j.id = c.job_id "
             "  WHERE c.screening_ids @> ARRAY[CAST(:s AS uuid)] AND c.recorded_at IS NULL "
             "  AND j.tenant_id = :t "
             "LIMIT 1"),
        {"s": screening_id, "t": tenant_id},
    )).first()
    return Pending(row[0]) if row else None


# -- bulk screening ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchChunk:
    chunk: int
    first_row: int
    last_row: int
    rows: int
    command: bytes
    screening_ids: list[uuid.UUID]


async def accept_batch(conn: AsyncConnection, job: dict[str, Any], chunks: Sequence[BatchChunk], *,
                       idempotency_key: str | None = None, fingerprint: str | None = None) -> bool:
    """The job and every chunk command in one transaction: committed, the accepted rows are accepted. False
    (nothing inserted) when the tenant already used ``idempotency_key`` for a job."""
    inserted = await conn.scalar(
        text("INSERT INTO batch_jobs (id, tenant_id, submitted_by, source, total, accepted, rejected, rejected_rows, "
             "chunks, idempotency_key, request_fingerprint) VALUES (:id, :tenant, :by, :source, :total, :accepted, "
             ":rejected, CAST(:rejected_rows AS jsonb), :chunks, :key, :fingerprint) "
             "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id"),
        job | {"rejected_rows": json.dumps(job["rejected_rows"]), "key": idempotency_key,
               "fingerprint": fingerprint},
    )
    if inserted is None:
        return False
    await conn.execute(
        text("INSERT INTO batch_chunks (job_id, chunk, first_row, last_row, rows, command, screening_ids) "
             "VALUES (:job, :chunk, :first, :last, :rows, :command, :screening_ids)"),
        [{"job": job["id"], "chunk": c.chunk, "first": c.first_row, "last": c.last_row, "rows": c.rows,
          "command": c.command, "screening_ids": c.screening_ids} for c in chunks],
    )
    return True


async def batch_by_idempotency_key(conn: AsyncConnection, tenant_id: uuid.UUID,
                                   key: str) -> tuple[uuid.UUID, str | None] | None:
    """The job this tenant accepted under ``key`` and the fingerprint of its upload, or None."""
    row = (await conn.execute(
        text("SELECT id, request_fingerprint FROM batch_jobs WHERE tenant_id = :t AND idempotency_key = :k"),
        {"t": tenant_id, "k": key})).first()
    return (row[0], row[1]) if row else None


async def record_batch_chunk(conn: AsyncConnection, job_id: uuid.UUID, chunk: int, outcomes: str, *,
                             recorded: int, classified: int, risk_low: int, risk_intermediate: int,
                             risk_high: int) -> bool:
    """Close a chunk and add its counts to the job, once: False when the chunk was already recorded. Its
    screening ids go: they serve to find pending rows only, and the outcomes hold them from now on."""
    closed = await conn.scalar(
        text("WITH closed AS (UPDATE batch_chunks SET recorded_at = now(), "
             "  outcomes = CAST(:outcomes AS jsonb), screening_ids = NULL "
             "  WHERE job_id = :job AND chunk = :chunk AND recorded_at IS NULL RETURNING job_id) "
             "UPDATE batch_jobs j SET recorded = j.recorded + :recorded, classified = j.classified + :classified, "
             "risk_low = j.risk_low + :low, risk_intermediate = j.risk_intermediate + :intermediate, "
             "risk_high = j.risk_high + :high, progressed_at = now(), "
             "completed_at = CASE WHEN j.recorded + :recorded >= j.accepted THEN now() END "
             "FROM closed WHERE j.id = closed.job_id RETURNING j.id"),
        {"job": job_id, "chunk": chunk, "outcomes": outcomes, "recorded": recorded, "classified": classified,
         "low": risk_low, "intermediate": risk_intermediate, "high": risk_high},
    )
    return closed is not None


_JOB_COLUMNS = (
    "id, tenant_id, source, created_at, completed_at, total, accepted, rejected, recorded, classified, risk_low, "
    "risk_intermediate, risk_high"
)


async def batch_job(conn: AsyncConnection, job_id: uuid.UUID, tenant_id: uuid.UUID, *,
                    rejected_rows: int) -> dict[str, Any] | None:
    """A job of this tenant (None for another tenant's: they cannot tell it exists), with its first
    ``rejected_rows`` rejected rows."""
    row = (await conn.execute(
        text(f"SELECT {_JOB_COLUMNS}, (SELECT coalesce(jsonb_agg(r.e ORDER BY r.i), '[]'::jsonb) FROM "
             "jsonb_array_elements(rejected_rows) WITH ORDINALITY AS r(e, i) WHERE r.i <= :n) AS rejected_rows "
             "FROM batch_jobs WHERE id = :id AND tenant_id = :tenant"),
        {"id": job_id, "tenant": tenant_id, "n": rejected_rows},
    )).mappings().first()
    return {k: (json.loads(v) if isinstance(v, str) and k == "rejected_rows" else v)
            for k, v in row.items()} if row else None


async def batch_outcomes(conn: AsyncConnection, job_id: uuid.UUID, *, after: int, limit: int) -> list[dict[str, Any]]:
    """Accepted rows numbered above ``after``, in row order, at most ``limit``: a recorded chunk's outcomes,
    an unrecorded chunk's rows as pending with the screening ids fixed at acceptance, so a client can follow
    a row by id from the start. Chunks are consecutive runs of accepted rows, so only the first chunks past
    ``after`` that can hold ``limit`` rows are opened (the first may hold up to a chunk's worth of rows at or
    before ``after``). An unrecorded chunk's row numbers are ``first_row`` onwards when no rejected row falls
    inside it; otherwise (rejected rows leave gaps) they are read from its command, one chunk's worth."""
    rows = await conn.execute(
        text("SELECT o.outcome FROM (SELECT first_row, last_row, rows, recorded_at, outcomes, screening_ids, "
             "  command, sum(rows) OVER (ORDER BY first_row) - rows AS before "
             "  FROM batch_chunks WHERE job_id = :job AND last_row > :after) c "
             "CROSS JOIN LATERAL ("
             "  SELECT (e->>'row')::int AS row, e AS outcome FROM jsonb_array_elements(c.outcomes) e "
             "  WHERE c.recorded_at IS NOT NULL "
             "  UNION ALL "
             "  SELECT p.row, jsonb_build_object('row', p.row, 'screening_id', p.id, 'status', 'pending', "
             "    'label', NULL, 'risk_class', NULL, 'rejection_reason', NULL) FROM ("
             "    SELECT c.first_row + CAST(s.i AS int) - 1 AS row, s.id "
             "    FROM unnest(c.screening_ids) WITH ORDINALITY AS s(id, i) "
             "    WHERE c.recorded_at IS NULL AND c.last_row - c.first_row + 1 = c.rows "
             "    UNION ALL "
             "    SELECT (r->>'row')::int, CAST(r->>'screening_id' AS uuid) FROM jsonb_array_elements("
             "      CAST(convert_from(c.command, 'UTF8') AS jsonb) #> '{payload,rows}') r "
             "    WHERE c.recorded_at IS NULL AND c.last_row - c.first_row + 1 <> c.rows) p"
             ") o "
             "WHERE c.before < :window AND o.row > :after ORDER BY o.row LIMIT :limit"),
        {"job": job_id, "after": after, "limit": limit, "window": limit + MAX_CHUNK_ROWS},
    )
    return [json.loads(v) if isinstance(v, str) else v for (v,) in rows]


async def batch_rejected(conn: AsyncConnection, job_id: uuid.UUID, tenant_id: uuid.UUID, *, after: int,
                         limit: int) -> list[dict[str, Any]] | None:
    """Rejected rows of a job of this tenant with a row number above ``after`` (None: no such job)."""
    found = await conn.scalar(text("SELECT 1 FROM batch_jobs WHERE id = :id AND tenant_id = :tenant"),
                              {"id": job_id, "tenant": tenant_id})
    if not found:
        return None
    rows = await conn.execute(
        text("SELECT r.e FROM batch_jobs j CROSS JOIN LATERAL jsonb_array_elements(j.rejected_rows) AS r(e) "
             "WHERE j.id = :id AND (r.e->>'row')::int > :after ORDER BY (r.e->>'row')::int LIMIT :limit"),
        {"id": job_id, "after": after, "limit": limit},
    )
    return [json.loads(v) if isinstance(v, str) else v for (v,) in rows]


async def claim_stalled_chunks(conn: AsyncConnection, idle_seconds: float, limit: int = 100) -> list[bytes]:
    """Unrecorded chunk commands, claimed for re-publishing, but only while no chunk at all has been recorded
    for ``idle_seconds``: a busy pipeline is working through a backlog, and re-publishing it would double it.
    Claimed with ``SKIP LOCKED`` so that concurrent gateways do not both resend."""
    rows = await conn.scalars(
        text("UPDATE batch_chunks SET published_at = now() WHERE (job_id, chunk) IN ("
             "  SELECT job_id, chunk FROM batch_chunks WHERE recorded_at IS NULL "
             "  AND published_at < now() - make_interval(secs => :idle) "
             "  AND NOT EXISTS (SELECT 1 FROM batch_chunks r "
             "                  WHERE r.recorded_at > now() - make_interval(secs => :idle)) "
             "  ORDER BY published_at, job_id, chunk LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING command"),
        {"idle": idle_seconds, "limit": limit},
    )
    return list(rows.all())
