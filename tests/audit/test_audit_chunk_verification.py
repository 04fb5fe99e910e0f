"""``GET /api/audit/verify`` recomputes each chunk entry's root from the row digests it lists, so a listed
digest rewritten in SQL by someone holding the HMAC key (every later hash and HMAC recomputed) is found at
its entry.

The chunk event is published for an organisation created for the test, on the topic the probes use, so that
only the audit service acts on it (the ledger commits to a chunk by its event type, whatever the topic).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.ledger import canonical_json
from devstack.stack import Platform
from shared.events import Actor, new_envelope
from shared.events.batch import SCREENING_BATCH_RECORDED_V2, RecordedRow, ScreeningBatchRecordedV2
from shared.events.screening import ScreeningRecordedV1
from tests.audit.conftest import (
    Org,
    as_superuser_without_triggers,
    chain_size,
    publish,
    verify,
    wait_appended,
    wait_for_head,
)
from tests.audit.test_audit_tamper_detection import rehash_from, rows_from


async def chunk_entry(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> int:
    """The seq of a three-row chunk entry in the organisation's chain, covered by a signed tree head."""
    now = datetime.now(UTC)
    rows = [
        RecordedRow(row=n, screening=ScreeningRecordedV1(
            screening_id=uuid.uuid4(), status="rejected", patient_external_id=f"LAB-{n:05d}", assessment=None,
            rejection_reason="the blood count is implausible", requested_at=now, recorded_at=now))
        for n in (1, 2, 3)
    ]
    envelope = new_envelope(
        ScreeningBatchRecordedV2(job_id=uuid.uuid4(), chunk=0, rows=rows, recorded_at=now),
        event_type=SCREENING_BATCH_RECORDED_V2[0], event_version=SCREENING_BATCH_RECORDED_V2[1],
        tenant_id=org.id, actor=Actor(role="service", service="audit-tests"),
    )
    await publish(producer, [envelope])
    seq = (await wait_appended(engine, [envelope.event_id]))[str(envelope.event_id)]
    await wait_for_head(gateway, org.admin, await chain_size(engine, org.chain_id))
    return seq


async def test_each_chunk_entry_is_counted_when_its_root_matches_its_listed_digests(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    await chunk_entry(gateway, engine, producer, org)
    report = await verify(gateway, org.admin)
    assert (report["ok"], report["chunk_entries"]) == (True, 1), report


async def test_a_listed_digest_rewritten_with_the_hmac_key_is_found_at_its_chunk_entry(
    platform: Platform, gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    seq = await chunk_entry(gateway, engine, producer, org)
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
