"""Helpers of the analytics tests: reading a topic as raw records, the CBCs that give each risk class."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from tests.conftest import HEALTHY_CBC

#: Panels the shipped model puts in risk class 2, 3 and 1 (the summary counts whatever the model says):
#: P(deficient) 2.6 %, 6.7 % and 1.3 % against the thresholds 2 % and 3 % of b12-cbc-v2.
CBC_BY_EXPECTED_CLASS: dict[int, dict[str, Any]] = {
    2: {"hb": 13.0, "rbc": 4.1, "hct": 39.4, "mcv": 96, "mch": 31.7, "mchc": 33, "rdw": 14.2, "wbc": 6.5,
        "platelets": 240, "neutrophils_pct": 58, "lymphocytes_pct": 30, "age": 75, "sex": "male"},
    3: {"hb": 9.1, "rbc": 2.6, "hct": 28.9, "mcv": 111, "mch": 35.0, "mchc": 31.5, "rdw": 18.2, "wbc": 3.4,
        "platelets": 120, "neutrophils_pct": 55, "lymphocytes_pct": 35, "age": 67, "sex": "female"},
    1: HEALTHY_CBC,
}
ANALYTICS_TOPIC = "clinomic.analytics.screenings"


async def read_topic(bootstrap: str, topic: str, until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
                     timeout: float = 60.0) -> list[ConsumerRecord[bytes, bytes]]:
    """The topic's records from the beginning (key, value, headers as published) until ``until`` holds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"probe-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=5, enable_auto_commit=False)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not until(found):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{topic}: not met after {timeout} s ({len(found)} records read)")
            batch = await consumer.getmany(timeout_ms=200)
            found += [record for records in batch.values() for record in records]
    finally:
        await consumer.stop()
    return found


def of_tenant(records: list[ConsumerRecord[bytes, bytes]], tenant: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(r.value) for r in records if r.value) if e["tenant_id"] == tenant]


def carries(tenant: str, screening_ids: set[str]) -> Callable[[list[ConsumerRecord[bytes, bytes]]], bool]:
    """Whether records read so far hold a single screening's de-identified event of the tenant for each of
    ``screening_ids``."""
    def complete(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        return screening_ids <= {e["payload"].get("screening_id") for e in of_tenant(records, tenant)}

    return complete


async def analytics_events(bootstrap: str, tenant: str, screening_ids: set[str]) -> list[dict[str, Any]]:
    """The tenant's de-identified events, once one has arrived for each of ``screening_ids``."""
    return of_tenant(await read_topic(bootstrap, ANALYTICS_TOPIC, carries(tenant, screening_ids)), tenant)
