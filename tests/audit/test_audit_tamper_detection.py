"""Tampering done directly in SQL, as a superuser would (triggers off), is found by ``GET /api/audit/verify``.

Each test breaks the chain of an organisation created for it (see ``conftest.probed``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit.ledger import compute_entry_hash, entry_hmac
from audit.merkle import MerkleTree, leaf_hash
from devstack.stack import Platform
from tests.audit.conftest import Probed, as_superuser_without_triggers, verify

Probe = Callable[..., Awaitable[Probed]]
ROW = (
    "seq, event_id::text AS event_id, event_type, actor::text AS actor, tenant_id::text AS tenant_id, "
    "occurred_at, content, prev_hash, entry_hash, key_id, hmac"
)


async def rows_from(conn: AsyncConnection, chain_id: str, seq: int) -> list[Any]:
    result = await conn.execute(
        text(f"SELECT {ROW} FROM audit.entries WHERE chain_id = :c AND seq >= :s ORDER BY seq"),
        {"c": chain_id, "s": seq},
    )
    return list(result)


def hash_of(
    chain_id: str, row: Any, seq: int, prev: bytes, content: bytes, event_id: str | None = None
) -> bytes:
    return compute_entry_hash(
        chain_id,
        seq,
        prev,
        event_id=event_id or row.event_id,
        event_type=row.event_type,
        actor=json.loads(row.actor),
        tenant_id=row.tenant_id,
        occurred_at=row.occurred_at,
        content=content,
    )


async def rehash_from(
    conn: AsyncConnection, chain_id: str, seq: int, *, new_content: bytes, hmac_key: bytes | None
) -> None:
    """Change entry ``seq``'s content and recompute every later hash (and HMAC, when the key is known)."""
    prev = bytes(
        await conn.scalar(
            text("SELECT entry_hash FROM audit.entries WHERE chain_id = :c AND seq = :s"),
            {"c": chain_id, "s": seq - 1},
        )
    )
    for row in await rows_from(conn, chain_id, seq):
        content = new_content if row.seq == seq else bytes(row.content)
        entry_hash = hash_of(chain_id, row, row.seq, prev, content)
        mac = entry_hmac(hmac_key, prev, entry_hash) if hmac_key else bytes(row.hmac)
        await conn.execute(
            text(
                "UPDATE audit.entries SET content = :ct, prev_hash = :p, entry_hash = :h, hmac = :m "
                "WHERE chain_id = :c AND seq = :s"
            ),
            {"ct": content, "p": prev, "h": entry_hash, "m": mac, "c": chain_id, "s": row.seq},
        )
        prev = entry_hash


def altered(content: bytes) -> bytes:
    return content.replace(b'"n":', b'"n":100', 1)


async def test_an_untouched_chain_verifies_with_its_nodes_and_tree_heads(
    gateway: httpx.AsyncClient, probed: Probe
) -> None:
    chain = await probed()
    report = await verify(gateway, chain.org.admin)
    assert report["ok"] is True, report
    assert report["checked"] >= 6 and report["first_broken_seq"] is None
    assert report["tree_heads_checked"] >= 1 and report["merkle_nodes_checked"] >= 3
    assert report["external_tree_heads"] >= 1


async def test_a_changed_field_is_found_at_its_entry(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    target = chain.seqs[2]
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text("UPDATE audit.entries SET event_type = 'Harmless' WHERE chain_id = :c AND seq = :s"),
            {"c": chain.org.chain_id, "s": target},
        )
    report = await verify(gateway, chain.org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (False, target, "hash mismatch")


async def test_a_deleted_entry_is_found_at_its_position(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    target = chain.seqs[2]
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text("DELETE FROM audit.entries WHERE chain_id = :c AND seq = :s"),
            {"c": chain.org.chain_id, "s": target},
        )
    report = await verify(gateway, chain.org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (False, target, "sequence gap")


async def test_an_entry_inserted_in_the_middle_is_found_where_it_was_inserted(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    target, chain_id = chain.seqs[2], chain.org.chain_id
    async with as_superuser_without_triggers(engine) as conn:
        # Make room (renumber the rest), then forge a well-linked entry with a correct hash: only the HMAC,
        # which needs the service's key, cannot be made.
        await conn.execute(
            text("UPDATE audit.entries SET seq = -seq WHERE chain_id = :c AND seq >= :s"),
            {"c": chain_id, "s": target},
        )
        await conn.execute(
            text("UPDATE audit.entries SET seq = -seq + 1 WHERE chain_id = :c AND seq < 0"), {"c": chain_id}
        )
        template = (await rows_from(conn, chain_id, target + 1))[0]
        prev = bytes(
            await conn.scalar(
                text("SELECT entry_hash FROM audit.entries WHERE chain_id = :c AND seq = :s"),
                {"c": chain_id, "s": target - 1},
            )
        )
        forged_id, content = uuid.uuid4(), altered(bytes(template.content))
        forged = hash_of(chain_id, template, target, prev, content, event_id=str(forged_id))
        await conn.execute(
            text(
                "INSERT INTO audit.entries (chain_id, seq, event_id, event_type, actor, tenant_id, "
                "occurred_at, content, prev_hash, entry_hash, key_id, hmac) "
                "SELECT chain_id, CAST(:s AS bigint), :e, event_type, actor, tenant_id, occurred_at, "
                ":ct, :p, :h, key_id, :m FROM audit.entries "
                "WHERE chain_id = :c AND seq = CAST(:s AS bigint) + 1"
            ),
            {
                "c": chain_id,
                "s": target,
                "e": forged_id,
                "ct": content,
                "p": prev,
                "h": forged,
                "m": os.urandom(32),
            },
        )
    report = await verify(gateway, chain.org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (False, target, "hmac mismatch")


async def test_reordered_entries_are_found_at_the_first_moved_position(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    first, second = chain.seqs[2], chain.seqs[3]
    async with as_superuser_without_triggers(engine) as conn:
        params = {"c": chain.org.chain_id, "a": first, "b": second}
        await conn.execute(text("UPDATE audit.entries SET seq = -1 WHERE chain_id = :c AND seq = :a"), params)
        await conn.execute(text("UPDATE audit.entries SET seq = :a WHERE chain_id = :c AND seq = :b"), params)
        await conn.execute(text("UPDATE audit.entries SET seq = :b WHERE chain_id = :c AND seq = -1"), params)
    report = await verify(gateway, chain.org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (
        False,
        first,
        "prev hash mismatch",
    )


async def test_hashes_recomputed_without_the_hmac_key_are_found_at_the_first_rewritten_entry(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    target = chain.seqs[2]
    async with as_superuser_without_triggers(engine) as conn:
        [row] = (await rows_from(conn, chain.org.chain_id, target))[:1]
        await rehash_from(
            conn, chain.org.chain_id, target, new_content=altered(bytes(row.content)), hmac_key=None
        )
    report = await verify(gateway, chain.org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (False, target, "hmac mismatch")


async def test_a_rewrite_with_the_hmac_key_is_caught_by_the_signed_tree_heads(
    platform: Platform, gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    target, chain_id = chain.seqs[2], chain.org.chain_id
    async with as_superuser_without_triggers(engine) as conn:
        [row] = (await rows_from(conn, chain_id, target))[:1]
        await rehash_from(
            conn,
            chain_id,
            target,
            new_content=altered(bytes(row.content)),
            hmac_key=platform.env["AUDIT_SIGNING_KEY"].encode(),
        )
        # ... and rebuild the stored Merkle tree too: only the Ed25519 signing key is out of reach.
        hashes = [
            bytes(h)
            for h in await conn.scalars(
                text("SELECT entry_hash FROM audit.entries WHERE chain_id = :c ORDER BY seq"), {"c": chain_id}
            )
        ]
        levels = MerkleTree.from_leaf_hashes([leaf_hash(h) for h in hashes]).levels()
        for level, data in enumerate(levels[1:], start=1):
            for idx in range(len(data) // 32):
                await conn.execute(
                    text(
                        "UPDATE audit.merkle_nodes SET hash = :h WHERE chain_id = :c AND level = :l "
                        "AND idx = :i"
                    ),
                    {"h": data[idx * 32 : (idx + 1) * 32], "c": chain_id, "l": level, "i": idx},
                )
    report = await verify(gateway, chain.org.admin)
    assert report["ok"] is False and report["reason"] == "tree head root mismatch", report
    assert report["first_broken_seq"] <= target
    assert any("root mismatch" in p for p in report["problems"])


async def test_entries_dropped_at_the_end_are_caught_by_the_signed_tree_heads(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    size = chain.head["tree_size"]
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text("DELETE FROM audit.entries WHERE chain_id = :c AND seq > :s"),
            {"c": chain.org.chain_id, "s": size - 2},
        )
    report = await verify(gateway, chain.org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (
        False,
        size - 1,
        "beyond end of ledger",
    )


async def test_a_changed_merkle_node_is_found_with_the_entries_it_covers(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text("UPDATE audit.merkle_nodes SET hash = :h WHERE chain_id = :c AND level = 1 AND idx = 1"),
            {"h": os.urandom(32), "c": chain.org.chain_id},
        )
    report = await verify(gateway, chain.org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (False, 3, "merkle node mismatch")
    assert "covers entries 3..4" in report["detail"]


async def test_a_tree_head_deleted_from_the_database_is_found_in_the_external_log(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    await probed(2)  # a second, newer head, so the deleted one is not the newest
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text("DELETE FROM audit.tree_heads WHERE chain_id = :c AND tree_size = :n"),
            {"c": chain.org.chain_id, "n": chain.head["tree_size"]},
        )
    report = await verify(gateway, chain.org.admin)
    assert report["ok"] is False
    assert any("missing from the database" in p for p in report["problems"]), report


async def test_a_tree_head_signed_over_entries_appended_while_the_check_ran_is_not_taken_for_truncation(
    runtime_engine: AsyncEngine, service_keys: Any, probed: Probe, monkeypatch: Any
) -> None:
    """The check reads the chain's size, then its entries, then the heads: a head signed meanwhile may cover
    entries the check never saw. Here the check begins as if two entries ago (its first size read is two short)."""
    from audit import checker

    chain = await probed()
    real_size = checker.store.chain_size
    sizes: list[int] = []

    async def size_as_of_the_start(conn: Any, chain_id: str) -> int:
        size = await real_size(conn, chain_id)
        sizes.append(size)
        return size - 2 if len(sizes) == 1 else size

    monkeypatch.setattr(checker.store, "chain_size", size_as_of_the_start)
    report = await checker.check_chain(runtime_engine, chain.org.chain_id, hmac_keys=service_keys.hmac,
                                       public_keys=service_keys.public, head_log=service_keys.head_log)
    assert report.last_seq == sizes[0] - 2
    assert report.ok, report
