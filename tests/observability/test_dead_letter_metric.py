"""A dead letter is counted in ``clinomic_dead_letters_total`` by group, topic and reason class."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from devstack.stack import Platform
from shared.kafka import at_least_once, ensure_topics, make_broker, subscribe
from shared.settings import CommonSettings
from tests.records.helpers import eventually


async def test_a_dead_lettered_message_is_counted_by_group_topic_and_reason_class(platform: Platform) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic, group = f"metric-poison-{uuid.uuid4().hex}", f"metric-poison-{uuid.uuid4().hex}"
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap)
    await ensure_topics(bootstrap, [topic], partitions=1)
    broker = make_broker(settings, "metric-poison-test")

    @subscribe(broker, topic, **at_least_once(settings, group))
    async def handle(raw: bytes) -> None:
        raise KeyError("unknown field")

    labels = {"group": group, "topic": topic, "reason_class": "KeyError"}
    await broker.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"poison", key=b"k")
        finally:
            await producer.stop()

        async def counted() -> float | None:
            return REGISTRY.get_sample_value("clinomic_dead_letters_total", labels)

        assert await eventually(counted, timeout=60, interval=0.2) == 1.0
    finally:
        await broker.stop()
