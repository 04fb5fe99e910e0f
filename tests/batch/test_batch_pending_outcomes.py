"""A job's outcomes list every accepted row from the moment of acceptance, pending until recorded, so a lab
can follow each row by its screening id; recording changes a row's status, never its id or its place."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from tests.batch.conftest import completed, consented, csv_batch, csv_row, demo_schema, stored_rows, upload
from tests.batch.test_batch_pending import accepted_screening_ids
from tests.records.helpers import ok

pytestmark = pytest.mark.disruptive

PAGE = 100


async def pages(gateway: httpx.AsyncClient, lab: dict, job_id: str) -> list[dict[str, Any]]:
    """Every page of the job's outcomes, following ``next_after`` until it is null."""
    found: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        found.append(ok(await gateway.get(f"/api/screening/batch/{job_id}",
                                          params={"after": after, "limit": PAGE}, headers=lab)))
        after = found[-1]["next_after"]
        assert len(found) < 10, "next_after never became null"
    return found


async def test_outcomes_list_accepted_rows_as_pending_with_their_ids_until_recorded(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    ids = await consented(gateway, lab, 2)
    rows = [csv_row(ids[i % 2]) for i in range(301)]
    rows[2] = csv_row(ids[0], hb="x")  # row 3 is rejected: the first chunk's rows are 1, 2, 4 ... 251
    accepted_rows = [1, 2, *range(4, 302)]
    platform.stop_service("inference")
    try:
        accepted = ok(await upload(gateway, lab, csv_batch(*rows)), 202)
        job_id = accepted["job_id"]
        assert (accepted["accepted"], accepted["chunks"], accepted["rejected"]) == (300, 2, 1)
        waiting = await pages(gateway, lab, job_id)
        screening_ids = await accepted_screening_ids(engine, job_id)
    finally:
        await asyncio.to_thread(platform.start_service, "inference")
    assert [p["status"] for p in waiting] == ["queued"] * 3 and waiting[0]["rejected_rows"][0]["row"] == 3
    # three full pages; the last (across both chunks) says it is the last
    assert [len(p["outcomes"]) for p in waiting] == [PAGE] * 3
    assert [p["next_after"] for p in waiting] == [101, 201, None]
    pending = [o for p in waiting for o in p["outcomes"]]
    assert pending == [{"row": row, "screening_id": screening_id, "status": "pending", "label": None,
                        "risk_class": None, "rejection_reason": None}
                       for row, screening_id in zip(accepted_rows, screening_ids, strict=True)]

    await completed(gateway, lab, job_id, timeout=240)
    done = await pages(gateway, lab, job_id)
    assert [p["next_after"] for p in done] == [101, 201, None]
    outcomes = [o for p in done for o in p["outcomes"]]
    assert [(o["row"], o["screening_id"]) for o in outcomes] == [(o["row"], o["screening_id"]) for o in pending]
    assert all(o["status"] == "classified" and o["label"] and o["risk_class"] in (1, 2, 3)
               for o in outcomes)
    stored = await stored_rows(engine, await demo_schema(engine), job_id)
    assert [(row, screening_id) for row, screening_id, _ in stored] == [
        (o["row"], o["screening_id"]) for o in outcomes]
