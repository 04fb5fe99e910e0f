"""Appending: one gapless chain per organisation, exactly once per event, across restarts and racing
appenders."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.checker import check_chain
from audit.handlers import Appender, item_of
from audit.ledger import chain_id_for_tenant
from audit.merkle import MerkleFrontier
from devstack.stack import Platform
from shared.kafka import encode, ensure_topics
from tests.audit.conftest import (
    Org,
    ServiceKeys,
    chain_size,
    probe_envelope,
    publish,
    verify,
    wait_appended,
)


async def seqs_of(engine: AsyncEngine, chain_id: str) -> list[int]:
    async with engine.connect() as conn:
        return list(
            await conn.scalars(
                text("SELECT seq FROM audit.entries WHERE chain_id = :c ORDER BY seq"), {"c": chain_id}
            )
        )


async def test_an_organisations_events_form_one_chain_numbered_without_gaps(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    envelopes = [probe_envelope(org.id, n) for n in range(5)]
    await publish(producer, envelopes)
    seqs = await wait_appended(engine, [e.event_id for e in envelopes])
    numbers = await seqs_of(engine, org.chain_id)
    assert numbers == list(range(1, len(numbers) + 1))
    assert sorted(seqs.values()) == numbers[-5:]
    assert (await verify(gateway, org.admin))["ok"] is True


async def test_events_without_an_organisation_go_to_the_platform_chain(
    engine: AsyncEngine, producer: AIOKafkaProducer
) -> None:
    envelope = probe_envelope(None, 0)
    await publish(producer, [envelope])
    await wait_appended(engine, [envelope.event_id])
    async with engine.connect() as conn:
        chain = await conn.scalar(
            text("SELECT chain_id FROM audit.entries WHERE event_id = :e"), {"e": envelope.event_id}
        )
    assert chain == "platform"


async def test_a_topic_created_after_start_is_audited_without_a_code_change(
    engine: AsyncEngine, producer: AIOKafkaProducer, platform: Platform, org: Org
) -> None:
    topic = f"clinomic.new-family-{uuid.uuid4().hex[:8]}"
    await ensure_topics(platform.env["KAFKA_BOOTSTRAP_SERVERS"], [topic], partitions=1)
    envelope = probe_envelope(org.id, 0)
    await publish(producer, [envelope], topic=topic)
    # The subscriber matches topics by pattern; the broker's metadata is re-read every few seconds.
    await wait_appended(engine, [envelope.event_id], timeout=60.0)
    async with engine.connect() as conn:
        chain = await conn.scalar(
            text("SELECT chain_id FROM audit.entries WHERE event_id = :e"), {"e": envelope.event_id}
        )
    assert chain == org.chain_id


async def test_a_duplicate_delivery_appends_nothing(
    engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    original = probe_envelope(org.id, 0)
    key = b"same-partition"
    for _ in range(3):
        await producer.send_and_wait("clinomic.identity", encode(original), key=key)
    marker = probe_envelope(org.id, 1)  # same key, same partition: appended after every copy was handled
    await producer.send_and_wait("clinomic.identity", encode(marker), key=key)
    await wait_appended(engine, [original.event_id, marker.event_id])
    async with engine.connect() as conn:
        copies = await conn.scalar(
            text("SELECT count(*) FROM audit.entries WHERE event_id = :e"), {"e": original.event_id}
        )
    assert copies == 1
    numbers = await seqs_of(engine, org.chain_id)
    assert numbers == list(range(1, len(numbers) + 1))


async def test_a_restarted_audit_service_continues_the_chain(
    platform: Platform, gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    before = [probe_envelope(org.id, n) for n in range(2)]
    await publish(producer, before)
    await wait_appended(engine, [e.event_id for e in before])
    size = await chain_size(engine, org.chain_id)
    platform.stop_service("audit")
    try:
        during = [probe_envelope(org.id, n) for n in range(2, 5)]
        await publish(producer, during)  # published while nobody appends
    finally:
        await asyncio.to_thread(platform.start_service, "audit")
    seqs = await wait_appended(engine, [e.event_id for e in during], timeout=60)
    assert sorted(seqs.values()) == [size + 1, size + 2, size + 3]
    assert await seqs_of(engine, org.chain_id) == list(range(1, size + 4))
    assert (await verify(gateway, org.admin))["ok"] is True


async def test_two_appenders_racing_never_fork_or_duplicate_a_sequence_number(
    platform: Platform, runtime_engine: AsyncEngine, service_keys: ServiceKeys
) -> None:
    from shared.db import create_engine

    tenant = uuid.uuid4()
    chain_id = chain_id_for_tenant(tenant)
    key = platform.env["AUDIT_SIGNING_KEY"].encode()
    items = [item_of(encode(probe_envelope(tenant, n)), "clinomic.identity") for n in range(400)]
    engines = [
        create_engine(platform.env["AUDIT_DATABASE_URL"], application_name=f"race-{i}", search_path="audit")
        for i in range(2)
    ]
    try:
        first, second = (Appender(e, "k1", key) for e in engines)

        async def run(appender: Appender, chunk: list) -> int:  # type: ignore[type-arg]
            added = 0
            for i in range(0, len(chunk), 25):
                added += await appender.append(chunk[i : i + 25])
            return added

        # Overlapping halves: events 100..299 are offered to both appenders at the same time.
        added = await asyncio.gather(run(first, items[:300]), run(second, items[100:]))
    finally:
        for e in engines:
            await e.dispose()
    assert sum(added) == 400
    assert await seqs_of(runtime_engine, chain_id) == list(range(1, 401))
    report = await check_chain(
        runtime_engine,
        chain_id,
        hmac_keys=service_keys.hmac,
        public_keys=service_keys.public,
        head_log=service_keys.head_log,
    )
    assert report.ok, report
    assert report.merkle_nodes_checked == 400 - bin(400).count("1")


async def test_every_append_stores_the_merkle_nodes_it_completes(
    runtime_engine: AsyncEngine, platform: Platform
) -> None:
    tenant = uuid.uuid4()
    appender = Appender(runtime_engine, "k1", platform.env["AUDIT_SIGNING_KEY"].encode())
    for n in range(13):
        await appender.append([item_of(encode(probe_envelope(tenant, n)), "clinomic.identity")])
    async with runtime_engine.connect() as conn:
        stored = {
            (r[0], r[1])
            for r in await conn.execute(
                text("SELECT level, idx FROM merkle_nodes WHERE chain_id = :c"),
                {"c": chain_id_for_tenant(tenant)},
            )
        }
    # Every complete subtree above the leaves: 6 + 3 + 1 for 13 leaves; the frontier's are among them.
    assert stored == {(1, i) for i in range(6)} | {(2, i) for i in range(3)} | {(3, 0)}
    assert {n for n in MerkleFrontier.nodes_needed(13) if n[0] > 0} <= stored


async def test_copies_within_one_batch_are_appended_once_in_first_seen_order(
    runtime_engine: AsyncEngine, platform: Platform
) -> None:
    tenant = uuid.uuid4()
    first, second = (item_of(encode(probe_envelope(tenant, n)), "clinomic.identity") for n in range(2))
    appender = Appender(runtime_engine, "k1", platform.env["AUDIT_SIGNING_KEY"].encode())
    assert await appender.append([first, second, first, second, first]) == 2
    async with runtime_engine.connect() as conn:
        order = list(
            await conn.scalars(
                text("SELECT event_id FROM entries WHERE chain_id = :c ORDER BY seq"),
                {"c": chain_id_for_tenant(tenant)},
            )
        )
    assert order == [first.event_id, second.event_id]


async def test_a_batch_larger_than_a_part_is_appended_whole_in_order_and_once(
    runtime_engine: AsyncEngine, platform: Platform, service_keys: ServiceKeys
) -> None:
    tenant = uuid.uuid4()
    messages = [(encode(probe_envelope(tenant, n)), "clinomic.identity") for n in range(23)]
    appender = Appender(runtime_engine, "k1", platform.env["AUDIT_SIGNING_KEY"].encode(), part_size=10)
    assert await appender.append_raw(messages) == 23
    assert await appender.append_raw(messages) == 0  # redelivered whole: every part is known
    async with runtime_engine.connect() as conn:
        order = list(
            await conn.scalars(
                text("SELECT event_id FROM entries WHERE chain_id = :c ORDER BY seq"),
                {"c": chain_id_for_tenant(tenant)},
            )
        )
    assert order == [item_of(raw, topic).event_id for raw, topic in messages]
    report = await check_chain(
        runtime_engine,
        chain_id_for_tenant(tenant),
        hmac_keys=service_keys.hmac,
        public_keys=service_keys.public,
        head_log=service_keys.head_log,
    )
    assert report.ok, report
