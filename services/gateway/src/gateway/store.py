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
                        outcomes: Sequence[str] | None = None) -> None:
    """Close intake entries; keyed ones keep their outcome (JSON, no PHI) to answer retries."""
    if outcomes is None:
        await conn.execute(
            text("UPDATE screening_intake SET recorded_at = now() "
                 "WHERE screening_id = ANY(:ids) AND recorded_at IS NULL"),
            {"ids": list(screening_ids)},
        )
        return
    await conn.execute(
        text("UPDATE screening_intake i SET recorded_at = now(), "
             "outcome = CASE WHEN i.idempotency_key IS NOT NULL THEN CAST(v.outcome AS jsonb) END "
             "FROM unnest(CAST(:ids AS uuid[]), CAST(:outcomes AS text[])) AS v(screening_id, outcome) "
             "WHERE i.screening_id = v.screening_id AND i.recorded_at IS NULL"),
        {"ids": list(screening_ids), "outcomes": list(outcomes)},
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


async def is_pending(conn: AsyncConnection, screening_id: uuid.UUID, tenant_id: uuid.UUID) -> bool:
    found = await conn.scalar(
        text("SELECT 1 FROM screening_intake WHERE screening_id = :s AND tenant_id = :t AND recorded_at IS NULL"),
        {"s": screening_id, "t": tenant_id},
    )
    return bool(found)
