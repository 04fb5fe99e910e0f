"""SQL of the audit ledger in the ``audit`` schema: chain heads locked per append, entries append-only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.ledger import LedgerEntry, genesis_hash

SCHEMA = "audit"
_COLUMNS = ("chain_id, seq, event_id, event_type, actor, tenant_id, occurred_at, content, prev_hash, entry_hash, "
            "key_id, hmac")


async def known_event_ids(conn: AsyncConnection, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.scalars(text("SELECT event_id FROM entries WHERE event_id = ANY(:ids)"), {"ids": list(event_ids)})
    return set(rows.all())


async def lock_heads(conn: AsyncConnection, chain_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
    """Lock the heads of the given chains (creating missing ones) so that no other appender forks them."""
    await conn.execute(
        text("INSERT INTO chains (chain_id, last_seq, last_hash) VALUES (:c, 0, :h) ON CONFLICT DO NOTHING"),
        [{"c": c, "h": genesis_hash(c)} for c in chain_ids],
    )
    rows = await conn.execute(
        text("SELECT chain_id, last_seq, last_hash FROM chains WHERE chain_id = ANY(:c) ORDER BY chain_id FOR UPDATE"),
        {"c": list(chain_ids)},
    )
    return {r.chain_id: (r.last_seq, bytes(r.last_hash)) for r in rows}


async def append(conn: AsyncConnection, entries: Sequence[LedgerEntry]) -> None:
    await conn.execute(
        text(f"INSERT INTO entries ({_COLUMNS}) VALUES (:chain_id, :seq, :event_id, :event_type, "
             "CAST(:actor AS jsonb), :tenant_id, :occurred_at, :content, :prev_hash, :entry_hash, :key_id, :hmac)"),
        [
            {"chain_id": e.chain_id, "seq": e.seq, "event_id": uuid.UUID(e.event_id), "event_type": e.event_type,
             "actor": json.dumps(e.actor), "tenant_id": uuid.UUID(e.tenant_id) if e.tenant_id else None,
             "occurred_at": e.occurred_at, "content": e.content, "prev_hash": e.prev_hash,
             "entry_hash": e.entry_hash, "key_id": e.key_id, "hmac": e.hmac}
            for e in entries
        ],
    )
    last: dict[str, LedgerEntry] = {}
    for e in entries:
        last[e.chain_id] = e
    await conn.execute(
        text("UPDATE chains SET last_seq = :s, last_hash = :h WHERE chain_id = :c"),
        [{"s": e.seq, "h": e.entry_hash, "c": c} for c, e in last.items()],
    )


def _entry(row: Any) -> LedgerEntry:
    actor = row.actor if isinstance(row.actor, dict) else json.loads(row.actor)
    return LedgerEntry(
        chain_id=row.chain_id, seq=row.seq, event_id=str(row.event_id), event_type=row.event_type, actor=actor,
        tenant_id=str(row.tenant_id) if row.tenant_id else None, occurred_at=row.occurred_at,
        content=bytes(row.content), prev_hash=bytes(row.prev_hash), entry_hash=bytes(row.entry_hash),
        key_id=row.key_id, hmac=bytes(row.hmac),
    )


async def entries(conn: AsyncConnection, chain_id: str, *, after_seq: int = 0, limit: int | None = None,
                  event_type: str | None = None, descending: bool = False) -> list[LedgerEntry]:
    clauses = ["chain_id = :c", "seq > :after" if not descending else "seq < :after"]
    params: dict[str, Any] = {"c": chain_id, "after": after_seq}
    if event_type:
        clauses.append("event_type = :t")
        params["t"] = event_type
    order = "DESC" if descending else "ASC"
    sql = f"SELECT {_COLUMNS} FROM entries WHERE {' AND '.join(clauses)} ORDER BY seq {order}"
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    return [_entry(r) for r in await conn.execute(text(sql), params)]


async def stream_entries(conn: AsyncConnection, chain_id: str, batch: int = 20_000):  # type: ignore[no-untyped-def]
    """All entries of a chain in order, fetched in pages so memory stays bounded."""
    after = 0
    while True:
        page = await entries(conn, chain_id, after_seq=after, limit=batch)
        if not page:
            return
        for entry in page:
            yield entry
        after = page[-1].seq
