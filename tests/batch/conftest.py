"""Helpers of the bulk-screening tests: batch files for consented patients, uploads, waiting for a job."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.batch import CSV_COLUMNS
from tests.conftest import HEALTHY_CBC
from tests.records.helpers import consented_patient, ok


def csv_row(external_id: str, name: str = "", **changes: object) -> str:
    cbc = HEALTHY_CBC | changes
    return ",".join([external_id, name, *(str(cbc[c]) for c in CSV_COLUMNS[2:])])


def csv_batch(*rows: str) -> bytes:
    return "\n".join([",".join(CSV_COLUMNS), *rows]).encode()


async def consented(gateway: httpx.AsyncClient, lab: dict[str, str], count: int) -> list[str]:
    """External ids of ``count`` new patients with an active screening consent."""
    patients = await asyncio.gather(*(consented_patient(gateway, lab) for _ in range(count)))
    return [p["external_id"] for p in patients]


async def upload(gateway: httpx.AsyncClient, headers: dict[str, str], body: bytes,
                 media: str = "text/csv") -> httpx.Response:
    return await gateway.post("/api/screening/batch", content=body, headers=headers | {"content-type": media})


async def completed(gateway: httpx.AsyncClient, headers: dict[str, str], job_id: str,
                    timeout: float = 120.0, **params: Any) -> dict[str, Any]:
    """The job's report once every accepted row is recorded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = ok(await gateway.get(f"/api/screening/batch/{job_id}", params=params, headers=headers))
        if job["status"] == "completed":
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job not completed after {timeout} s: {job}"
        await asyncio.sleep(0.2)


async def demo_schema(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT schema_name FROM screening.tenants t JOIN auth.organizations o "
                                      "ON o.id = t.org_id WHERE o.slug = 'demo'"))


async def stored_rows(engine: AsyncEngine, schema: str, job_id: str) -> list[tuple[int, str, str]]:
    """(row, screening id, status) of every screening the tenant holds for the job."""
    async with engine.connect() as conn:
        rows = await conn.execute(text(f'SELECT batch_row, id::text, status FROM "{schema}".screenings '
                                       "WHERE batch_job_id = :j ORDER BY batch_row"), {"j": job_id})
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def raw_messages(bootstrap: str, topic: str, needle: str, *, at_least: int = 0,
                       timeout: float = 30.0) -> list[bytes]:
    """Messages of ``topic`` (from the beginning) that contain ``needle``: until ``at_least`` are found, or else
    until the topic is idle."""
    import uuid

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"probe-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=5, enable_auto_commit=False)
    await consumer.start()
    found: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        idle = 0
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            idle = 0 if batch else idle + 1
            found += [m.value for records in batch.values() for m in records if m.value and needle.encode() in m.value]
            if (at_least and len(found) >= at_least) or (not at_least and idle >= 8):
                break
    finally:
        await consumer.stop()
    return found
