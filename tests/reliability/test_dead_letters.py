"""A poison message on the real broker: bounded retries, a dead letter the ledger records, the partition moves
on; listed and replayed with the operator command."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from devstack.cli import app
from devstack.stack import Platform
from shared.deadletter import REPLAYED_FROM, DeadLetter, read_dead_letters
from shared.kafka import at_least_once, ensure_topics, make_broker, subscribe
from shared.settings import CommonSettings
from tests.records.helpers import eventually


async def send(bootstrap: str, topic: str, *values: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k", headers=[("event_type", b"Probe")])
    finally:
        await producer.stop()


async def letters_of(bootstrap: str, group: str) -> list[DeadLetter]:
    return [d for d in await read_dead_letters(bootstrap) if d.group == group]


async def test_a_message_a_consumer_keeps_failing_on_is_dead_lettered_audited_and_replayable(
    platform: Platform, engine: AsyncEngine
) -> None:
    """A subscriber declared as every service declares one, on the platform's broker: its handler raises on
    one message. The message is dead-lettered after its attempts, the next one is handled, the audit ledger
    records the dead letter, the CLI lists it and a replay brings the original bytes back to the topic."""
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic, group = f"poison-{uuid.uuid4().hex}", f"poison-{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    handled: list[bytes] = []
    broker = make_broker(CommonSettings(kafka_bootstrap_servers=bootstrap), "poison-test")

    @subscribe(broker, topic, **at_least_once(CommonSettings(kafka_bootstrap_servers=bootstrap), group))
    async def handle(raw: bytes) -> None:
        if raw == b"poison":
            raise ValueError("unknown event version")
        handled.append(raw)

    await broker.start()
    try:
        await send(bootstrap, topic, b"poison", b"after")
        [letter] = await eventually(lambda: letters_of(bootstrap, group), timeout=60)
        assert (letter.value, letter.key, letter.topic, letter.source_offset) == (b"poison", b"k", topic, 0)
        assert letter.attempts == 5 and letter.reason == "ValueError: unknown event version"
        assert letter.headers["event_type"] == "Probe"  # the original headers travel with it
        assert await eventually(lambda: asyncio.sleep(0, b"after" in handled), timeout=30)

        async def audited() -> int:
            async with engine.connect() as conn:
                return await conn.scalar(text(
                    "SELECT count(*) FROM audit.entries WHERE event_type = 'MessageDeadLettered' "
                    "AND position(:g IN content) > 0"), {"g": group.encode()})
        await eventually(audited, timeout=30)

        listed = await asyncio.to_thread(CliRunner().invoke, app, ["deadletters", "list", "--bootstrap", bootstrap,
                                                                   "--group", group])
        assert listed.exit_code == 0 and letter.ref in listed.output and "1 dead letter(s)" in listed.output

        replayed = await asyncio.to_thread(CliRunner().invoke, app, ["deadletters", "replay", letter.ref,
                                                                     "--bootstrap", bootstrap])
        assert replayed.exit_code == 0, replayed.output
        # still poison: the consumer dead-letters the replayed copy, which names the letter it came from
        again = await eventually(lambda: _second(bootstrap, group), timeout=60)
        assert again.value == b"poison" and again.source_offset == 2 and again.headers[REPLAYED_FROM] == letter.ref
    finally:
        await broker.stop()


async def _second(bootstrap: str, group: str) -> DeadLetter | None:
    letters = await letters_of(bootstrap, group)
    return letters[1] if len(letters) > 1 else None


async def test_replaying_an_unknown_dead_letter_reference_fails_and_sends_nothing(platform: Platform) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    before = len(await read_dead_letters(bootstrap))
    result = await asyncio.to_thread(CliRunner().invoke, app, ["deadletters", "replay", "0:999999999",
                                                               "--bootstrap", bootstrap])
    assert result.exit_code == 1 and "no such dead letter" in result.output
    assert len(await read_dead_letters(bootstrap)) == before
