"""The example consumer (examples/live_counts.py), run as its own process against the platform's broker,
counts the screenings made in the test per risk class and label, once each, and skips versions it does not
know."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiokafka import AIOKafkaProducer

from devstack.stack import Platform
from tests.analytics.conftest import Clinic
from tests.analytics.helpers import ANALYTICS_TOPIC, read_topic

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "live_counts.py"


@asynccontextmanager
async def live_counts(platform: Platform, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--bootstrap", platform.env["KAFKA_BOOTSTRAP_SERVERS"], "--json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


async def counts_reaching(process: asyncio.subprocess.Process, expected: int, timeout: float = 60.0) -> dict:
    """The consumer's counts once it has counted ``expected`` screenings."""
    assert process.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await process.stdout.readline()
            assert line, "the consumer exited"
            counts = json.loads(line)
            if counts["screenings"] >= expected:
                return counts


async def test_the_example_consumer_counts_the_screenings_made_in_the_test(
    platform: Platform, clinic: Clinic,
) -> None:
    async with live_counts(platform, "--from-beginning", "--tenant", clinic.org.id) as process:
        counts = await counts_reaching(process, len(clinic.screened()))
    assert counts == {"screenings": 4, "per_status": {"classified": 4},
                      "per_risk_class": {c: n for c, n in clinic.per_risk_class().items() if n},
                      "per_label": {label: n for label, n in clinic.per_label().items() if n}}


async def test_the_example_consumer_counts_a_redelivered_event_once_and_skips_an_unknown_version(
    platform: Platform, clinic: Clinic,
) -> None:
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    screening_id = clinic.screened({"unassigned"})[0]["id"]

    def of_screening(records: list) -> list:
        return [r for r in records
                if r.value and json.loads(r.value)["payload"].get("screening_id") == screening_id]

    records = await read_topic(bootstrap, ANALYTICS_TOPIC, lambda found: bool(of_screening(found)))
    original = of_screening(records)[0]
    event = json.loads(original.value)
    newer = event | {"event_id": str(uuid.uuid4()), "event_version": 2,
                     "payload": event["payload"] | {"screening_id": str(uuid.uuid4())}}
    async with live_counts(platform, "--from-beginning", "--tenant", clinic.org.id) as process:
        before = await counts_reaching(process, len(clinic.screened()))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:  # same key, so the copy is read before the newer version
            await producer.send_and_wait(ANALYTICS_TOPIC, original.value, key=original.key,
                                         headers=list(original.headers))
            await producer.send_and_wait(ANALYTICS_TOPIC, json.dumps(newer).encode(), key=original.key,
                                         headers=[("event_type", b"ScreeningRecordedDeidentified"),
                                                  ("event_version", b"2")])
        finally:
            await producer.stop()
        assert process.stderr is not None
        async with asyncio.timeout(60):
            while b"version 2" not in (warning := await process.stderr.readline()):
                assert warning, "the consumer exited"
        process.terminate()
        assert process.stdout is not None
        counted_since = await process.stdout.read()
    assert before["screenings"] == 4
    assert counted_since == b"", "neither the copy nor the unknown version was counted"


def test_the_example_consumer_counts_every_screening_of_a_chunk_event_once() -> None:
    spec = importlib.util.spec_from_file_location("live_counts", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # its dataclass looks its module up there
    spec.loader.exec_module(example)
    counts = example.LiveCounts()

    def screening(risk_class: int | None) -> dict:
        return {"status": "classified" if risk_class else "rejected", "risk_class": risk_class,
                "label": {1: "normal", 3: "deficient"}.get(risk_class) if risk_class else None}

    chunk = {"event_id": "c1", "event_type": "ScreeningBatchRecordedDeidentified", "event_version": 1,
             "payload": {"screenings": [screening(1), screening(3), screening(None)]}}
    single = {"event_id": "s1", "event_type": "ScreeningRecordedDeidentified", "event_version": 1,
              "payload": screening(3)}
    assert [counts.add(chunk), counts.add(single), counts.add(chunk)] == [True, True, False]
    assert json.loads(counts.as_json()) == {"screenings": 4, "per_status": {"classified": 3, "rejected": 1},
                                            "per_risk_class": {"1": 1, "3": 2},
                                            "per_label": {"deficient": 2, "normal": 1}}
