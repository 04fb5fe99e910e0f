"""``GET /api/audit/verify`` recomputes each chunk entry's root (requested, classified and recorded chunks)
from the row digests it lists, so a listed digest rewritten in SQL by someone holding the HMAC key (every
later hash and HMAC recomputed) is found at its entry.

The chunk event is published for an organisation created for the test, on the topic the probes use, so that
only the audit service acts on it (the ledger commits to a chunk by its event type, whatever the topic).
"""

from __future__ import annotations

import json

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.ledger import canonical_json
from devstack.stack import Platform
from tests.audit.conftest import (
    Org,
    as_superuser_without_triggers,
    chain_size,
    publish,
    verify,
    wait_appended,
    wait_for_head,
)
from tests.audit.test_audit_chunk_entries import EVENTS
from tests.audit.test_audit_tamper_detection import rehash_from, rows_from


async def chunk_entries(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> dict[str, int]:
    """The seqs of a three-row chunk entry of each kind in the organisation's chain, covered by a signed
    tree head."""
    envelopes = {kind: build(3, tenant=org.id)[0] for kind, build in EVENTS.items()}
    await publish(producer, list(envelopes.values()))
    seqs = await wait_appended(engine, [e.event_id for e in envelopes.values()])
    await wait_for_head(gateway, org.admin, await chain_size(engine, org.chain_id))
    return {kind: seqs[str(envelope.event_id)] for kind, envelope in envelopes.items()}


async def test_each_chunk_entry_is_counted_when_its_root_matches_its_listed_digests(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    await chunk_entries(gateway, engine, producer, org)
    report = await verify(gateway, org.admin)
    assert (report["ok"], report["chunk_entries"]) == (True, 3), report


@pytest.mark.parametrize("kind", list(EVENTS))
async def test_a_listed_digest_rewritten_with_the_hmac_key_is_found_at_its_chunk_entry(
    platform: Platform, gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org,
    kind: str,
) -> None:
    seq = (await chunk_entries(gateway, engine, producer, org))[kind]
    async with as_superuser_without_triggers(engine) as conn:
        [row] = (await rows_from(conn, org.chain_id, seq))[:1]
        content = json.loads(bytes(row.content))
        content["payload"]["rows"][1]["sha256"] = "ab" * 32
        await rehash_from(conn, org.chain_id, seq, new_content=canonical_json(content),
                          hmac_key=platform.env["AUDIT_SIGNING_KEY"].encode())
    report = await verify(gateway, org.admin)
    assert (report["ok"], report["first_broken_seq"], report["reason"]) == (False, seq, "chunk root mismatch")
    problem = f"entry {seq}: chunk root mismatch (the listed row digests do not hash to rows_root)"
    assert problem in report["problems"], report
