"""A retried batch upload with the same Idempotency-Key is the first job; the key with another file is a 422."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.batch.conftest import completed, consented, csv_batch, csv_row, upload
from tests.records.helpers import ok


async def jobs_with_key(engine: AsyncEngine, key: str) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT count(*) FROM gateway.batch_jobs WHERE idempotency_key = :k"),
                                 {"k": key})


async def test_an_upload_retried_with_its_idempotency_key_answers_with_the_first_job_and_accepts_nothing_new(
    gateway: httpx.AsyncClient, lab: dict[str, str], engine: AsyncEngine
) -> None:
    ids = await consented(gateway, lab, 2)
    body, key = csv_batch(csv_row(ids[0]), csv_row(ids[1])), f"upload-{uuid.uuid4()}"
    first = ok(await upload(gateway, lab | {"Idempotency-Key": key}, body), 202)
    again = await upload(gateway, lab | {"Idempotency-Key": key}, body)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["job_id"] == first["job_id"] and again.headers["location"] == first["url"]
    assert (again.json()["accepted"], again.json()["rejected"]) == (2, 0)
    assert await jobs_with_key(engine, key) == 1
    assert (await completed(gateway, lab, first["job_id"]))["recorded"] == 2


async def test_concurrent_uploads_with_one_idempotency_key_make_one_job(
    gateway: httpx.AsyncClient, lab: dict[str, str], engine: AsyncEngine
) -> None:
    ids = await consented(gateway, lab, 1)
    body, key = csv_batch(csv_row(ids[0])), f"upload-{uuid.uuid4()}"
    answers = await asyncio.gather(*(upload(gateway, lab | {"Idempotency-Key": key}, body) for _ in range(4)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert await jobs_with_key(engine, key) == 1


async def test_an_idempotency_key_reused_for_another_file_is_refused_in_the_platform_error_shape(
    gateway: httpx.AsyncClient, lab: dict[str, str], engine: AsyncEngine
) -> None:
    ids = await consented(gateway, lab, 2)
    key = f"upload-{uuid.uuid4()}"
    ok(await upload(gateway, lab | {"Idempotency-Key": key}, csv_batch(csv_row(ids[0]))), 202)
    other = await upload(gateway, lab | {"Idempotency-Key": key}, csv_batch(csv_row(ids[1])))
    assert other.status_code == 422
    assert other.json()["errors"] == [{"field": "header.Idempotency-Key", "type": "idempotency_key_reused",
                                       "message": "this Idempotency-Key was used for a different upload "
                                                  "(another file)"}]
    assert await jobs_with_key(engine, key) == 1


async def test_uploads_without_an_idempotency_key_are_separate_jobs(
    gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    ids = await consented(gateway, lab, 1)
    body = csv_batch(csv_row(ids[0]))
    first = ok(await upload(gateway, lab, body), 202)
    second = ok(await upload(gateway, lab, body), 202)
    assert first["job_id"] != second["job_id"]
