"""A batch accepted is a batch recorded, even when the in-memory broker forgets its chunks."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from shared.kafka import ensure_topics
from tests.batch.conftest import completed, consented, csv_batch, csv_row, demo_schema, stored_rows, upload
from tests.records.helpers import ok


@pytest.mark.disruptive
async def test_a_batch_accepted_before_a_broker_restart_is_recorded_once_after_it(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    broker = platform.bundled_broker
    if broker is None:
        pytest.skip("needs the bundled in-memory broker, which forgets everything when restarted")
    ids = await consented(gateway, lab, 2)
    platform.stop_service("inference")  # the chunks wait in the broker ...
    try:
        job_id = ok(await upload(gateway, lab, csv_batch(csv_row(ids[0]), csv_row(ids[1]))), 202)["job_id"]
        await asyncio.to_thread(broker.restart)  # ... which forgets them
        await ensure_topics(broker.bootstrap_servers, partitions=int(platform.env["KAFKA_TOPIC_PARTITIONS"]))
    finally:
        await asyncio.to_thread(platform.start_service, "inference")
    # the gateway re-publishes the chunks once the pipeline has been idle for BATCH_REDELIVER_AFTER_SECONDS
    job = await completed(gateway, lab, job_id, timeout=240)
    assert job["recorded"] == 2
    assert [row for row, _, _ in await stored_rows(engine, await demo_schema(engine), job_id)] == [1, 2]
