"""Proofs from the API check out against signed tree heads, with nothing but the public key, and fail once
an entry changes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.ledger import compute_entry_hash
from audit.merkle import load_public_key, verify_consistency, verify_inclusion, verify_tree_head
from audit.treeheads import file_name
from audit.verifier import entry_from_json
from devstack.stack import Platform
from tests.audit.conftest import Probed, as_superuser_without_triggers

Probe = Callable[..., Awaitable[Probed]]


async def public_key(gateway: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    response = await gateway.get("/api/audit/public-key.pem", headers=headers)
    assert response.status_code == 200
    return load_public_key(response.content)


def recomputed_entry_hash(chain_id: str, entry_json: dict[str, Any]) -> bytes:
    """What a client does: the hash from the entry's own fields, never the stored ``entry_hash``."""
    entry = entry_from_json(entry_json, chain_id)
    return compute_entry_hash(
        chain_id,
        entry.seq,
        entry.prev_hash,
        event_id=entry.event_id,
        event_type=entry.event_type,
        actor=entry.actor,
        tenant_id=entry.tenant_id,
        occurred_at=entry.occurred_at,
        content=entry.content,
    )


def inclusion_holds(answer: dict[str, Any], key: Any) -> bool:
    head = answer["tree_head"]
    assert head is not None and verify_tree_head(head, key)
    return verify_inclusion(
        recomputed_entry_hash(answer["chain_id"], answer["entry"]),
        answer["seq"] - 1,
        head["tree_size"],
        [bytes.fromhex(p) for p in answer["proof"]],
        bytes.fromhex(head["root_hash"]),
    )


async def test_an_inclusion_proof_from_the_api_verifies_against_the_signed_tree_head(
    gateway: httpx.AsyncClient, probed: Probe
) -> None:
    chain = await probed()
    key = await public_key(gateway, chain.org.admin)
    for seq in chain.seqs:
        answer = (await gateway.get(f"/api/audit/entries/{seq}/proof", headers=chain.org.admin)).json()
        assert answer["tree_head"]["tree_size"] >= seq
        assert answer["root_hash"] == answer["tree_head"]["root_hash"]
        assert inclusion_holds(answer, key)


async def test_an_inclusion_proof_fails_once_its_entry_is_changed(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe
) -> None:
    chain = await probed()
    key = await public_key(gateway, chain.org.admin)
    target = chain.seqs[1]
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text(
                "UPDATE audit.entries SET occurred_at = '2020-01-01T00:00:00.000000Z' "
                "WHERE chain_id = :c AND seq = :s"
            ),
            {"c": chain.org.chain_id, "s": target},
        )
    answer = (await gateway.get(f"/api/audit/entries/{target}/proof", headers=chain.org.admin)).json()
    assert not inclusion_holds(answer, key)


async def consistency_between_two_heads(
    gateway: httpx.AsyncClient, probed: Probe
) -> tuple[Probed, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Two signed heads of one chain, three entries apart, and the consistency answer between them."""
    first = await probed(3)
    older, newer = first.head, (await probed(3)).head
    answer = (
        await gateway.get(
            "/api/audit/consistency",
            headers=first.org.admin,
            params={"first": older["tree_size"], "second": newer["tree_size"]},
        )
    ).json()
    return first, older, newer, answer


async def test_a_consistency_proof_between_two_signed_heads_verifies(
    gateway: httpx.AsyncClient, probed: Probe
) -> None:
    first, older, newer, answer = await consistency_between_two_heads(gateway, probed)
    key = await public_key(gateway, first.org.admin)
    assert newer["tree_size"] > older["tree_size"]
    assert verify_tree_head(older, key) and verify_tree_head(newer, key)
    assert verify_consistency(
        older["tree_size"],
        newer["tree_size"],
        bytes.fromhex(older["root_hash"]),
        bytes.fromhex(newer["root_hash"]),
        [bytes.fromhex(p) for p in answer["proof"]],
    )


async def test_a_consistency_proof_carries_the_signed_heads_of_both_sizes(
    gateway: httpx.AsyncClient, probed: Probe
) -> None:
    _, older, newer, answer = await consistency_between_two_heads(gateway, probed)
    assert (answer["first_tree_head"], answer["second_tree_head"]) == (older, newer)
    assert (answer["first_root"], answer["second_root"]) == (older["root_hash"], newer["root_hash"])


async def test_tree_heads_are_signed_by_the_published_key_and_also_written_outside_the_database(
    platform: Platform, gateway: httpx.AsyncClient, probed: Probe
) -> None:
    chain = await probed()
    key = await public_key(gateway, chain.org.admin)
    heads = (await gateway.get("/api/audit/tree-heads", headers=chain.org.admin)).json()["items"]
    assert heads and all(verify_tree_head(h, key) and h["chain_id"] == chain.org.chain_id for h in heads)
    listed = (await gateway.get("/api/audit/public-key", headers=chain.org.admin)).json()["keys"]
    assert listed[0]["current"] and listed[0]["key_id"] == heads[0]["key_id"]
    written = (
        Path(platform.env["AUDIT_TREE_HEAD_DIR"], file_name(chain.org.chain_id)).read_text().splitlines()
    )
    assert [json.loads(line) for line in written][: len(heads)] == heads
