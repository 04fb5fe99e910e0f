"""A classify-path consumer rests when nothing comes and is brisk again as soon as something does.

On the bundled broker an empty fetch is held for its whole ceiling, so these check the ceiling the consumer
asks for (``shared.kafka.Tempo``), over a real connection: resting after a quiet spell, brisk after a record,
brisk at once when told a record is coming.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from devstack.stack import Platform
from shared.kafka import Tempo, at_least_once, ensure_topics, subscribe
from shared.settings import CommonSettings

DEADLINE = 30.0  # seconds: generous for a busy machine; every wait ends as soon as its condition holds


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < give_up, f"not within {DEADLINE} s: {what}"
        await asyncio.sleep(0.01)


@dataclass
class Paced:
    tempo: Tempo
    received: list[bytes]
    bootstrap: str
    topic: str

    async def publish_one(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(self.topic, b"news")
        finally:
            await producer.stop()


@asynccontextmanager
async def paced_subscriber(platform: Platform, **batch: object) -> AsyncIterator[Paced]:
    """A classify-path subscriber (5 ms brisk, 50 ms resting) of a topic of its own."""
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"tempo-{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap, kafka_fetch_max_wait_ms=5,
                              kafka_idle_fetch_max_wait_ms=50)
    options = at_least_once(settings, f"tempo-{uuid.uuid4().hex}")
    paced = Paced(options["tempo"], [], bootstrap, topic)
    broker = KafkaBroker(bootstrap)

    @subscribe(broker, topic, **batch, **options)
    async def collect(raw: bytes | list[bytes]) -> None:
        paced.received.extend(raw if isinstance(raw, list) else [raw])

    await broker.start()
    try:
        yield paced
    finally:
        await broker.stop()


async def test_a_quiet_consumer_rests_and_a_record_makes_it_brisk_again(platform: Platform) -> None:
    async with paced_subscriber(platform) as paced:
        tempo = paced.tempo
        await until(lambda: tempo.current_ms == 5, "brisk from its first assignment")
        await until(lambda: tempo.current_ms == 50, "resting after a quiet spell")  # when: tests/unit
        await paced.publish_one()
        await until(lambda: paced.received == [b"news"], "the record delivered")
        await until(lambda: tempo.current_ms == 5, "brisk again after the record")


async def test_a_consumer_told_that_a_record_is_coming_stops_resting_at_once(platform: Platform) -> None:
    async with paced_subscriber(platform) as paced:
        await until(lambda: paced.tempo.current_ms == 50, "resting after a quiet spell")
        assert paced.tempo.batch_period_ms is None  # not a batch subscriber: nothing else to pace
        paced.tempo.brisk()
        assert paced.tempo.current_ms == 5


async def test_a_quiet_batch_subscriber_also_wakes_less_often_and_takes_a_record_at_once(platform: Platform) -> None:
    async with paced_subscriber(platform, batch=True, batch_timeout_ms=5) as paced:
        tempo = paced.tempo
        await until(lambda: (tempo.current_ms, tempo.batch_period_ms) == (50, 50), "resting after a quiet spell")
        await paced.publish_one()
        await until(lambda: paced.received == [b"news"], "the record delivered")
        await until(lambda: (tempo.current_ms, tempo.batch_period_ms) == (5, 5), "brisk again after the record")
