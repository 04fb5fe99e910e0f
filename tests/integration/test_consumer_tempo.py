"""A classify-path consumer rests when nothing comes and is brisk again as soon as something does.

On the bundled broker an empty fetch is held for its whole ceiling, so these check the ceiling the consumer
asks for (``shared.kafka.Tempo``), over a real connection: resting after a quiet spell, brisk after a record,
brisk at once when told a record is coming.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from devstack.stack import Platform
from shared.kafka import QUIET_AFTER_SECONDS, Tempo, at_least_once, ensure_topics, subscribe
from shared.settings import CommonSettings

DEADLINE = 30.0  # seconds: generous for a busy machine; every wait ends as soon as its condition holds


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < give_up, f"not within {DEADLINE} s: {what}"
        await asyncio.sleep(0.01)


async def paced_subscriber(bootstrap: str, topic: str, received: list[bytes],
                           **batch: object) -> tuple[KafkaBroker, Tempo]:
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap, kafka_fetch_max_wait_ms=5,
                              kafka_idle_fetch_max_wait_ms=50)
    options = at_least_once(settings, f"tempo-{uuid.uuid4().hex}")
    tempo = options["tempo"]
    broker = KafkaBroker(bootstrap)

    @subscribe(broker, topic, **batch, **options)
    async def collect(raw: bytes | list[bytes]) -> None:
        received.extend(raw if isinstance(raw, list) else [raw])

    await broker.start()
    return broker, tempo


async def publish_one(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"news")
    finally:
        await producer.stop()


async def test_a_quiet_consumer_rests_and_a_record_makes_it_brisk_again(platform: Platform) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"tempo-{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    received: list[bytes] = []
    broker, tempo = await paced_subscriber(bootstrap, topic, received)
    try:
        await until(lambda: tempo.current_ms == 5, "brisk from its first assignment")
        started_quiet = asyncio.get_running_loop().time()
        await until(lambda: tempo.current_ms == 50, "resting after a quiet spell")
        assert asyncio.get_running_loop().time() - started_quiet >= QUIET_AFTER_SECONDS * 0.9
        await publish_one(bootstrap, topic)
        await until(lambda: received == [b"news"], "the record delivered")
        await until(lambda: tempo.current_ms == 5, "brisk again after the record")
    finally:
        await broker.stop()


async def test_a_consumer_told_that_a_record_is_coming_stops_resting_at_once(platform: Platform) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"tempo-{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    broker, tempo = await paced_subscriber(bootstrap, topic, [])
    try:
        await until(lambda: tempo.current_ms == 50, "resting after a quiet spell")
        assert tempo.batch_period_ms is None  # not a batch subscriber: nothing else to pace
        tempo.brisk()
        assert tempo.current_ms == 5
    finally:
        await broker.stop()


async def test_a_quiet_batch_subscriber_also_wakes_less_often_and_takes_a_record_at_once(platform: Platform) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"tempo-{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    received: list[bytes] = []
    broker, tempo = await paced_subscriber(bootstrap, topic, received, batch=True, batch_timeout_ms=5)
    try:
        await until(lambda: (tempo.current_ms, tempo.batch_period_ms) == (50, 50), "resting after a quiet spell")
        await publish_one(bootstrap, topic)
        await until(lambda: received == [b"news"], "the record delivered")
        await until(lambda: (tempo.current_ms, tempo.batch_period_ms) == (5, 5), "brisk again after the record")
    finally:
        await broker.stop()
