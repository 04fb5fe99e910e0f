"""A consumer never waits for a log to grow past a position it lost (a restarted in-memory broker).

Kafka answers a fetch beyond the end of a log with offset-out-of-range and the consumer resets; the bundled
broker answers with nothing. A committed position beyond the end is what a consumer group finds after that
broker restarted (its new log is shorter), so these tests commit one directly and start a subscriber.
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faststream.kafka import KafkaBroker

from devstack.stack import Platform
from shared.kafka import ensure_topics, every_event_from_now, raw_body, subscribe
from shared.settings import CommonSettings

BEYOND_THE_END = 500


async def commit_beyond_the_end(bootstrap: str, topic: str, group: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])  # commits without joining the group
        await consumer.commit({TopicPartition(topic, 0): BEYOND_THE_END})
    finally:
        await consumer.stop()


async def publish_until_received(bootstrap: str, topic: str, received: list[bytes]) -> list[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for n in range(40):
            await producer.send_and_wait(topic, f"event {n}".encode())
            if received:
                break
            await asyncio.sleep(0.5)
    finally:
        await producer.stop()
    return received


async def run_subscriber(bootstrap: str, topic: str, options: dict, received: list[bytes]) -> KafkaBroker:
    broker = KafkaBroker(bootstrap)

    @subscribe(broker, topic, **options)
    async def collect(raw: bytes) -> None:
        received.append(raw)

    await broker.start()
    return broker


async def test_a_group_whose_committed_position_lies_beyond_the_log_starts_again_at_its_beginning(
    platform: Platform,
) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic, group = f"positions-{uuid.uuid4().hex}", f"positions-{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    await commit_beyond_the_end(bootstrap, topic, group)
    received: list[bytes] = []
    options = {"group_id": group, "auto_offset_reset": "earliest", "fetch_max_wait_ms": 5,
               "decoder": raw_body}
    broker = await run_subscriber(bootstrap, topic, options, received)
    try:
        assert await publish_until_received(bootstrap, topic, received), "it waited at its lost position"
        assert received[0] == b"event 0"  # from the beginning, as Kafka resets an out-of-range earliest group
    finally:
        await broker.stop()


async def test_a_process_reading_from_now_on_resumes_at_the_end_of_the_log_not_at_a_lost_position(
    platform: Platform,
) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"positions-{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    options = every_event_from_now(CommonSettings(kafka_bootstrap_servers=bootstrap), "positions")
    await commit_beyond_the_end(bootstrap, topic, options["group_id"])
    received: list[bytes] = []
    broker = await run_subscriber(bootstrap, topic, options, received)
    try:
        assert await publish_until_received(bootstrap, topic, received), "it waited at its lost position"
    finally:
        await broker.stop()
