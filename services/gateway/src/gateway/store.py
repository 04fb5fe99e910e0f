"""SQL of the gateway's intake: the durable record that a screening was accepted (a transactional outbox)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

SCHEMA = "gateway"


async def accept(conn: AsyncConnection, screening_id: uuid.UUID, tenant_id: uuid.UUID, command: bytes) -> None:
    await conn.execute(
        text("INSERT INTO screening_intake (screening_id, tenant_id, command) VALUES (:s, :t, :c)"),
        {"s": screening_id, "t": tenant_id, "c": command},
    )


async def mark_recorded(conn: AsyncConnection, screening_ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(
        text("UPDATE screening_intake SET recorded_at = now() WHERE screening_id = ANY(:ids) AND recorded_at IS NULL"),
        {"ids": list(screening_ids)},
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
