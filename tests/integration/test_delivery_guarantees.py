"""At-least-once delivery with idempotent consumers: duplicates change nothing, crashes lose nothing."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack import recovery
from devstack.stack import Platform
from shared.events import Topic
from shared.kafka import ensure_topics
from tests.conftest import HEALTHY_CBC
from tests.records.helpers import consented_patient


async def events_of(bootstrap: str, topic: str, screening_id: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"probe-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=5, enable_auto_commit=False)
    await consumer.start()
    found: list[bytes] = []
    try:
        idle = 0
        while idle < 10:
            batch = await consumer.getmany(timeout_ms=200)
            idle = 0 if batch else idle + 1
            found += [m.value for records in batch.values() for m in records if screening_id.encode() in m.value]
    finally:
        await consumer.stop()
    return found


async def ledger_count(engine: AsyncEngine, event_id: str) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT count(*) FROM audit.entries WHERE event_id = :e"), {"e": event_id})


async def screening_rows(engine: AsyncEngine, org_schema: str, screening_id: str) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text(f'SELECT count(*) FROM "{org_schema}".screenings WHERE id = :i'),
                                 {"i": screening_id})


async def tenant_schema_of(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT schema_name FROM screening.tenants t JOIN auth.organizations o "
                                      "ON o.id = t.org_id WHERE o.slug = 'demo'"))


async def test_a_redelivered_classification_records_and_audits_nothing_new(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    patient = await consented_patient(gateway, lab)
    body = {"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC}
    screening_id = (await gateway.post("/api/screening/classify", json=body, headers=lab)).json()["id"]
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    [classified] = await events_of(bootstrap, Topic.SCREENING_CLASSIFIED, screening_id)
    event_id = json.loads(classified)["event_id"]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(Topic.SCREENING_CLASSIFIED, classified, key=screening_id.encode())
    finally:
        await producer.stop()
    await asyncio.sleep(1.5)

    assert await screening_rows(engine, await tenant_schema_of(engine), screening_id) == 1
    assert await ledger_count(engine, event_id) == 1
    recorded = await events_of(bootstrap, Topic.SCREENING_RECORDED, screening_id)
    assert len({json.loads(r)["event_id"] for r in recorded}) == 1, "re-announcements keep one event id"


@pytest.mark.disruptive
async def test_a_screening_accepted_while_inference_is_down_is_recorded_after_it_restarts(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    """Accepted (committed to the intake after its admission check) means recorded eventually, whichever
    downstream service is down. (The screening service itself answers the admission check: see below.)"""
    patient = await consented_patient(gateway, lab)
    platform.kill_service("inference")
    try:
        body = {"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC}
        response = await gateway.post("/api/screening/classify", json=body, headers=lab)
        assert response.status_code == 202
        screening_id = response.json()["id"]
    finally:
        await asyncio.to_thread(platform.start_service, "inference")
    status = None
    for _ in range(150):
        status = (await gateway.get(f"/api/screenings/{screening_id}", headers=lab)).status_code
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert status == 200
    assert await screening_rows(engine, await tenant_schema_of(engine), screening_id) == 1


@pytest.mark.disruptive
async def test_while_the_screening_service_is_down_classify_is_refused_and_nothing_is_accepted(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    """Consent and patient checks need the screening service: without it nothing is accepted (fail closed)."""
    patient = await consented_patient(gateway, lab)
    platform.kill_service("screening")
    try:
        body = {"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC}
        response = await gateway.post("/api/screening/classify", json=body, headers=lab)
    finally:
        await asyncio.to_thread(platform.start_service, "screening")
    assert response.status_code == 503 and response.headers["retry-after"]
    async with engine.connect() as conn:
        accepted = await conn.scalar(text("SELECT count(*) FROM gateway.screening_intake "
                                          "WHERE position(CAST(:e AS bytea) IN command) > 0"),
                                     {"e": patient["external_id"].encode()})
    assert accepted == 0


#: Every consumer group, the ledger's pattern subscription included, is back this soon after a broker restart.
RECOVERY_SECONDS = 15.0


@pytest.mark.disruptive
async def test_a_screening_accepted_across_a_broker_restart_is_recorded_and_audited(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, admin: dict, engine: AsyncEngine
) -> None:
    """The bundled broker keeps nothing across a restart; the gateway's intake re-publishes what was lost, and
    every consumer group is back within RECOVERY_SECONDS (printed per group: ``docs/reliability.md``)."""
    broker = platform.bundled_broker
    assert broker is not None, "this test restarts the bundled broker; run it without KAFKA_BOOTSTRAP_SERVERS"
    patient = await consented_patient(gateway, lab)
    broker.stop()
    try:
        body = {"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC}
        response = await gateway.post("/api/screening/classify", json=body, headers=lab)
        assert response.status_code == 202  # accepted into the intake, not yet published
        screening_id = response.json()["id"]
    finally:
        restarted = datetime.now(UTC).isoformat()
        await asyncio.to_thread(broker.start)
        back_at = datetime.now(UTC)
        # The in-memory broker forgot its topics: create them as the platform does, before anything auto-creates.
        await ensure_topics(broker.bootstrap_servers, partitions=int(platform.env["KAFKA_TOPIC_PARTITIONS"]))
    status = None
    for _ in range(300):
        status = (await gateway.get(f"/api/screenings/{screening_id}", headers=lab)).status_code
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert status == 200, "the screening accepted during the outage was never recorded"
    times = await recovery.until_back(platform.logs, back_at, broker.bootstrap_servers, timeout=60)
    print(f"\nrecovery after the broker restart:\n{recovery.table(times)}")
    slow = {g: t for g, t in times.items() if t is None or t > RECOVERY_SECONDS}
    assert not slow, f"consumer groups not back within {RECOVERY_SECONDS} s: {slow}\n" + warnings_since(
        platform, restarted)
    wanted = {"ScreeningRequested", "ScreeningClassified", "ScreeningRecorded"}
    async with engine.connect() as conn:
        for _ in range(150):
            audited = set(await conn.scalars(text(
                "SELECT event_type FROM audit.entries WHERE refs @> ARRAY[CAST(:id AS text)]"),
                {"id": screening_id}))
            if wanted <= audited:
                break
            await asyncio.sleep(0.2)
    assert wanted <= audited, f"audited only {sorted(audited)}\n" + warnings_since(platform, restarted)
    await until_classify_answers_in_time(platform, gateway, lab)


#: Log lines that only say the broker was away (expected during a restart).
BROKER_AWAY = re.compile(r"NodeNotReady|Unable connect|Unable to update metadata|Failed fetch messages|"
                         r"Connection at .* closed|coordinator dead|Heartbeat")


def warnings_since(platform: Platform, since: str, limit: int = 12) -> str:
    """The last warnings and errors each service logged since ``since`` (an ISO time), for a failure report."""
    report = []
    for name, path in platform.logs.items():
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)  # the services log JSON lines; anything else is a library's banner
            except ValueError:
                continue
            if (isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR")
                    and record.get("time", "") >= since and not BROKER_AWAY.search(record.get("message", ""))):
                lines.append(line[:400])
        report += [f"--- {name}", *lines[-limit:]]
    return "\n".join(report)


async def until_classify_answers_in_time(platform: Platform, gateway: httpx.AsyncClient, lab: dict) -> None:
    """The platform recovers completely: consumers that lost their group to the restart have rejoined and
    classify answers within its wait again (and no later test depends on that recovery)."""
    since = datetime.now(UTC).isoformat()
    patient = await consented_patient(gateway, lab)
    body = {"patient": {"external_id": patient["external_id"]}, "cbc": HEALTHY_CBC}
    answers = []
    for _ in range(12):
        answers.append((await gateway.post("/api/screening/classify", json=body, headers=lab)).status_code)
        if answers[-1] == 200:
            return
    raise AssertionError(f"after the broker restart, classify never again answered within its wait: {answers}\n"
                         + warnings_since(platform, since))
