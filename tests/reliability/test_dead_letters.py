"""A poison message on a real topic: bounded retries, a dead letter, the partition moves on; listed and replayed."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from devstack.cli import app
from devstack.stack import Platform
from shared.deadletter import REPLAYED_FROM, DeadLetter, read_dead_letters, replay
from shared.events import Topic
from tests.conftest import HEALTHY_CBC
from tests.integration.test_delivery_guarantees import events_of
from tests.records.helpers import consented_patient, eventually


async def poison_classification(bootstrap: str, gateway: httpx.AsyncClient, lab: dict) -> tuple[bytes, str]:
    """A well-formed ScreeningClassified whose patient id holds a NUL character, which PostgreSQL refuses in
    text: the screening service's recorder raises on it every time. Returns its bytes and screening id."""
    patient = await consented_patient(gateway, lab)
    body = {"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC}
    screening_id = (await gateway.post("/api/screening/classify", json=body, headers=lab)).json()["id"]
    [classified] = await events_of(bootstrap, Topic.SCREENING_CLASSIFIED, screening_id)
    event = json.loads(classified)
    poisoned_id = str(uuid.uuid4())
    event["event_id"] = str(uuid.uuid4())
    event["payload"]["request"]["screening_id"] = poisoned_id
    event["payload"]["request"]["patient"]["external_id"] = "P-\u0000-poison"
    return json.dumps(event).encode(), poisoned_id


async def letters_of(bootstrap: str, screening_id: str, group: str) -> list[DeadLetter]:
    return [d for d in await read_dead_letters(bootstrap) if d.group == group and screening_id.encode() in d.value]


async def test_a_message_the_recorder_keeps_failing_on_is_dead_lettered_audited_and_replayable(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    poison, screening_id = await poison_classification(bootstrap, gateway, lab)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(Topic.SCREENING_CLASSIFIED, poison, key=screening_id.encode())
    finally:
        await producer.stop()

    [letter] = await eventually(lambda: letters_of(bootstrap, screening_id, "screening-recorder"), timeout=60)
    assert letter.value == poison and letter.key == screening_id.encode()
    assert letter.topic == Topic.SCREENING_CLASSIFIED and letter.source_offset >= 0 and letter.attempts == 5
    assert letter.reason and "P-" not in letter.reason  # why, without the values

    # the partition moved on: the next screening is recorded within classify's wait
    patient = await consented_patient(gateway, lab)
    body = {"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC}
    assert (await gateway.post("/api/screening/classify", json=body, headers=lab)).status_code == 200

    async def audited() -> int:
        async with engine.connect() as conn:
            return await conn.scalar(text(
                "SELECT count(*) FROM audit.entries WHERE event_type = 'MessageDeadLettered' "
                "AND refs @> ARRAY[CAST(:id AS text)] AND position('screening-recorder' IN convert_from(content, "
                "'UTF8')) > 0"), {"id": screening_id})
    await eventually(audited, timeout=30)

    listed = await asyncio.to_thread(CliRunner().invoke, app, ["deadletters", "list", "--bootstrap", bootstrap,
                                                               "--group", "screening-recorder"])
    assert listed.exit_code == 0 and letter.ref in listed.output

    assert await replay(bootstrap, [letter]) == 1  # still poison: the recorder dead-letters the replayed copy
    again = await eventually(lambda: _second(bootstrap, screening_id), timeout=60)
    assert again.value == poison and again.headers[REPLAYED_FROM] == letter.ref


async def _second(bootstrap: str, screening_id: str) -> DeadLetter | None:
    letters = await letters_of(bootstrap, screening_id, "screening-recorder")
    return letters[1] if len(letters) > 1 else None


async def test_replaying_an_unknown_dead_letter_reference_fails_and_sends_nothing(platform: Platform) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    before = len(await read_dead_letters(bootstrap))
    result = await asyncio.to_thread(CliRunner().invoke, app, ["deadletters", "replay", "0:999999999",
                                                               "--bootstrap", bootstrap])
    assert result.exit_code == 1 and "no such dead letter" in result.output
    assert len(await read_dead_letters(bootstrap)) == before
