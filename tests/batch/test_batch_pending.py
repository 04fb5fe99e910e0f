"""A batch row accepted but not yet recorded is pending for its organisation's screeners, as a single classify
is, and does not exist for anyone else."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from tests.batch.conftest import consented, csv_batch, csv_row, upload
from tests.records.helpers import new_org, ok

pytestmark = pytest.mark.disruptive


async def accepted_screening_ids(engine: AsyncEngine, job_id: str) -> list[str]:
    """The screening ids the gateway gave a job's rows, read from its chunk commands: the API names a row's
    screening only once it is recorded."""
    async with engine.connect() as conn:
        commands = await conn.scalars(
            text("SELECT command FROM gateway.batch_chunks WHERE job_id = :j ORDER BY chunk"), {"j": job_id})
        return [row["screening_id"] for c in commands for row in json.loads(c)["payload"]["rows"]]


@pytest.fixture(scope="module")
async def stalled_job(platform: Platform, gateway: httpx.AsyncClient, lab: dict,
                      engine: AsyncEngine) -> AsyncIterator[tuple[str, list[str]]]:
    """(job id, screening ids) of two rows accepted while inference is stopped: nothing can record them until
    inference starts again, after the module's tests."""
    ids = await consented(gateway, lab, 2)
    platform.stop_service("inference")
    try:
        job_id = ok(await upload(gateway, lab, csv_batch(csv_row(ids[0]), csv_row(ids[1]))), 202)["job_id"]
        yield job_id, await accepted_screening_ids(engine, job_id)
    finally:
        await asyncio.to_thread(platform.start_service, "inference")


async def test_a_batch_row_not_yet_recorded_is_pending_and_names_its_job(
    gateway: httpx.AsyncClient, lab: dict, admin: dict, stalled_job: tuple[str, list[str]]
) -> None:
    job_id, screening_ids = stalled_job
    assert len(screening_ids) == 2
    for screener in (lab, admin):
        for screening_id in screening_ids:
            assert ok(await gateway.get(f"/api/screenings/{screening_id}", headers=screener), 202) == {
                "id": screening_id, "status": "pending", "batch_id": job_id}
    assert ok(await gateway.get(f"/api/screening/batch/{job_id}", headers=lab))["recorded"] == 0


async def test_a_batch_row_not_yet_recorded_is_pending_as_recorded_too(
    gateway: httpx.AsyncClient, lab: dict, stalled_job: tuple[str, list[str]]
) -> None:
    job_id, [screening_id, _] = stalled_job
    assert ok(await gateway.get(f"/api/screenings/{screening_id}/recorded", headers=lab), 202) == {
        "id": screening_id, "status": "pending", "batch_id": job_id}


async def test_another_organisations_pending_batch_row_is_not_found_like_an_unknown_one(
    gateway: httpx.AsyncClient, stalled_job: tuple[str, list[str]]
) -> None:
    _, screening_ids = stalled_job
    other = await new_org(gateway, "pending", roles=("lab_technician",))
    for screener in (other.headers["lab"], other.headers["admin"]):
        theirs = await gateway.get(f"/api/screenings/{screening_ids[0]}", headers=screener)
        unknown = await gateway.get(f"/api/screenings/{uuid.uuid4()}", headers=screener)
        assert theirs.status_code == unknown.status_code == 404 and theirs.json() == unknown.json()
