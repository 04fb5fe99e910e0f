"""Long chains are verified in segments by worker processes: same verdict as one process, same first break.

Segments of 8 entries here (2**15 in the service) so that a short chain spans several.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.checker import ChainReport, VerifierPool, check_chain
from audit.handlers import Appender, item_of
from audit.ledger import chain_id_for_tenant
from devstack.stack import Platform
from shared.kafka import encode
from tests.audit.conftest import ServiceKeys, as_superuser_without_triggers, probe_envelope


@pytest.fixture(scope="module")
async def pool(platform: Platform) -> AsyncIterator[VerifierPool]:
    workers = VerifierPool(platform.env["AUDIT_DATABASE_URL"], 2)
    await workers.warm()
    yield workers
    workers.close()


async def chain_of(runtime_engine: AsyncEngine, platform: Platform, entries: int) -> str:
    tenant = uuid.uuid4()
    appender = Appender(runtime_engine, "k1", platform.env["AUDIT_SIGNING_KEY"].encode())
    await appender.append([item_of(encode(probe_envelope(tenant, n)), "t") for n in range(entries)])
    return chain_id_for_tenant(tenant)


async def both(
    engine: AsyncEngine, chain_id: str, keys: ServiceKeys, pool: VerifierPool
) -> tuple[ChainReport, ChainReport]:
    args = {"hmac_keys": keys.hmac, "public_keys": keys.public, "head_log": keys.head_log}
    return (
        await check_chain(engine, chain_id, **args),
        await check_chain(engine, chain_id, **args, pool=pool, segment_level=3),
    )


def verdict(report: ChainReport) -> tuple[object, ...]:
    return (
        report.ok,
        report.checked,
        report.first_broken_seq,
        report.reason,
        report.merkle_nodes_checked,
        report.problems,
    )


async def test_segments_in_worker_processes_give_the_same_verdict_as_one_process(
    runtime_engine: AsyncEngine, platform: Platform, service_keys: ServiceKeys, pool: VerifierPool
) -> None:
    chain_id = await chain_of(runtime_engine, platform, 37)
    alone, parallel = await both(runtime_engine, chain_id, service_keys, pool)
    assert alone.ok and verdict(parallel) == verdict(alone)
    assert parallel.merkle_nodes_checked == 37 - bin(37).count("1")


async def test_a_break_in_a_later_segment_is_found_at_the_same_entry(
    runtime_engine: AsyncEngine,
    engine: AsyncEngine,
    platform: Platform,
    service_keys: ServiceKeys,
    pool: VerifierPool,
) -> None:
    chain_id = await chain_of(runtime_engine, platform, 37)
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text("DELETE FROM audit.entries WHERE chain_id = :c AND seq = 17"), {"c": chain_id}
        )
        await conn.execute(
            text("UPDATE audit.entries SET event_type = 'X' WHERE chain_id = :c AND seq = 30"),
            {"c": chain_id},
        )
    alone, parallel = await both(runtime_engine, chain_id, service_keys, pool)
    assert (parallel.first_broken_seq, parallel.reason) == (17, "sequence gap")
    assert verdict(parallel) == verdict(alone)


async def test_warming_the_pool_starts_every_worker_not_just_the_first_free_one(platform: Platform) -> None:
    workers = VerifierPool(platform.env["AUDIT_DATABASE_URL"], 3)
    try:
        assert await workers.warm() == 3
    finally:
        workers.close()
