"""PHI key rotation: re-encrypt every stored name and consent text under the newest key, while the platform
runs, in small committed batches (so it is resumable: a re-run picks up what is left), and fill in the key
id and blind index of values stored before they were kept.

Order of operations (``docs/tenancy.md``): configure ``MASTER_ENCRYPTION_KEY=new,old`` on every service and
restart them; run ``clinomic-screening rotate-keys``; when it reports nothing left, drop the old key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from screening.store import ENCRYPTED_COLUMNS
from shared.crypto import BlindIndex, PhiCipher
from shared.db import in_schema, tenant_schema


@dataclass
class RotationReport:
    rotated: int = 0
    unreadable: dict[str, list[uuid.UUID]] = field(default_factory=dict)  # "schema.table" -> row ids
    remaining: int = 0


def _stale(ciphertext: str, key_id: str, index: str | None) -> str:
    """Rows not yet under the newest key (or missing their key id or blind index)."""
    condition = f"{ciphertext} IS NOT NULL AND ({key_id} IS DISTINCT FROM :current"
    return condition + (f" OR {index} IS NULL)" if index else ")")


async def count_stale(conn: AsyncConnection, current_key_id: str) -> int:
    total = 0
    for table, ciphertext, key_id, index in ENCRYPTED_COLUMNS:
        total += await conn.scalar(
            text(f"SELECT count(*) FROM {table} WHERE {_stale(ciphertext, key_id, index)}"),
            {"current": current_key_id}) or 0
    return total


async def stale_by_tenant(engine: AsyncEngine, tenants: list[uuid.UUID], cipher: PhiCipher) -> dict[uuid.UUID, int]:
    counts = {}
    for org in tenants:
        async with in_schema(engine, tenant_schema(org)) as conn:
            counts[org] = await count_stale(conn, cipher.current_key_id)
    return counts


async def _rotate_batch(conn: AsyncConnection, org: uuid.UUID, spec: tuple[str, str, str, str | None],
                        cipher: PhiCipher, index: BlindIndex, batch_size: int,
                        skip: list[uuid.UUID]) -> tuple[int, list[uuid.UUID]]:
    table, ciphertext, key_id, index_column = spec
    rows = (await conn.execute(
        text(f"SELECT id, {ciphertext} FROM {table} WHERE {_stale(ciphertext, key_id, index_column)} "
             "AND NOT (id = ANY(:skip)) ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"),
        {"current": cipher.current_key_id, "skip": skip, "n": batch_size},
    )).all()
    updates, unreadable = [], []
    for ident, token in rows:
        try:
            plaintext = cipher.decrypt(token)
        except ValueError:
            unreadable.append(ident)
            continue
        update = {"id": ident, "c": cipher.rotate(token), "k": cipher.current_key_id}
        if index_column:
            update["i"] = index.digest(org, plaintext)
        updates.append(update)
    if updates:
        assignments = f"{ciphertext} = :c, {key_id} = :k" + (f", {index_column} = :i" if index_column else "")
        await conn.execute(text(f"UPDATE {table} SET {assignments} WHERE id = :id"), updates)
    return len(updates), unreadable


async def rotate(engine: AsyncEngine, tenants: list[uuid.UUID], cipher: PhiCipher, index: BlindIndex, *,
                 batch_size: int = 200, max_rows: int | None = None,
                 progress: Callable[[int], None] = lambda n: None) -> RotationReport:
    """Re-encrypt stale values tenant by tenant, one committed batch at a time (``max_rows`` stops early)."""
    report = RotationReport()
    for org in sorted(tenants):
        schema = tenant_schema(org)
        for spec in ENCRYPTED_COLUMNS:
            skip: list[uuid.UUID] = []
            while max_rows is None or report.rotated < max_rows:
                size = batch_size if max_rows is None else min(batch_size, max_rows - report.rotated)
                async with in_schema(engine, schema) as conn:
                    done, unreadable = await _rotate_batch(conn, org, spec, cipher, index, size, skip)
                if unreadable:
                    skip += unreadable
                    report.unreadable.setdefault(f"{schema}.{spec[0]}", []).extend(unreadable)
                report.rotated += done
                progress(done)
                if done == 0 and not unreadable:
                    break
    report.remaining = sum((await stale_by_tenant(engine, sorted(tenants), cipher)).values()) \
        - sum(len(v) for v in report.unreadable.values())
    return report
