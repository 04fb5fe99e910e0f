"""Fast fault injection: kill -9 a service under a little classify load, restart it, then count.

Every accepted screening (classify answered 200 or 202) is recorded exactly once and its three events are in
the audit ledger exactly once. Each case prints one row of: fault, accepted, recorded, duplicates, lost,
audited, recovery time (restart of the service to the last accepted screening recorded and audited).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from tests.conftest import HEALTHY_CBC
from tests.integration.test_delivery_guarantees import tenant_schema_of
from tests.records.helpers import consented_patient

pytestmark = pytest.mark.disruptive
EVENTS = ("ScreeningRequested", "ScreeningClassified", "ScreeningRecorded")


async def load(gateway: httpx.AsyncClient, lab: dict, patients: list[str], stop: asyncio.Event,
               accepted: list[str], refused: list[int]) -> None:
    """One client classifying in a loop until ``stop``: ids of accepted screenings, statuses of refusals."""
    n = 0
    while not stop.is_set():
        body = {"patient": {"external_id": patients[n % len(patients)]}, "cbc": HEALTHY_CBC}
        n += 1
        try:
            response = await gateway.post("/api/screening/classify", json=body, headers=lab)
        except httpx.HTTPError:
            refused.append(0)
            continue
        if response.status_code in (200, 202):
            accepted.append(response.json()["id"])
        else:
            refused.append(response.status_code)
            await asyncio.sleep(0.2)


async def counts(engine: AsyncEngine, schema: str, ids: list[str]) -> tuple[dict[str, int], dict[str, int], int]:
    """Rows per screening id, complete ledger trails per id (all three events), duplicate ledger event ids."""
    async with engine.connect() as conn:
        rows = dict((await conn.execute(text(
            f'SELECT CAST(id AS text), count(*) FROM "{schema}".screenings WHERE CAST(id AS text) = ANY(:ids) '
            "GROUP BY id"), {"ids": ids})).all())
        trails = dict((await conn.execute(text(
            "SELECT r.id, count(DISTINCT e.event_type) FROM unnest(CAST(:ids AS text[])) AS r(id) "
            "JOIN audit.entries e ON e.refs @> ARRAY[r.id] AND e.event_type = ANY(:types) GROUP BY r.id"),
            {"ids": ids, "types": list(EVENTS)})).all())
        duplicates = await conn.scalar(text(
            "SELECT count(*) FROM (SELECT event_id FROM audit.entries e WHERE e.refs && CAST(:ids AS text[]) "
            "GROUP BY event_id HAVING count(*) > 1) d"), {"ids": ids})
    return rows, trails, duplicates


@pytest.mark.parametrize("service", ["audit", "screening"])
async def test_after_a_kill_9_every_accepted_screening_is_recorded_and_audited_exactly_once(
    service: str, platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    patients = [(await consented_patient(gateway, lab))["external_id"] for _ in range(3)]
    schema = await tenant_schema_of(engine)
    stop, accepted, refused = asyncio.Event(), [], []
    clients = [asyncio.create_task(load(gateway, lab, patients, stop, accepted, refused)) for _ in range(3)]
    try:
        while len(accepted) < 10:
            await asyncio.sleep(0.05)
        platform.kill_service(service)
        killed_with = len(accepted)
        while len(accepted) + len(refused) < killed_with + 6:  # load meets the missing service a while
            await asyncio.sleep(0.05)
        await asyncio.to_thread(platform.start_service, service)
        restarted = time.monotonic()
        while len(accepted) < killed_with + 10:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    deadline = restarted + 120
    while True:
        rows, trails, duplicates = await counts(engine, schema, accepted)
        done = len(rows) == len(set(accepted)) and all(trails.get(i) == len(EVENTS) for i in accepted)
        if done or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    recovery = time.monotonic() - restarted
    recorded = sum(rows.values())
    lost = len(set(accepted) - set(rows))
    audited = sum(1 for i in set(accepted) if trails.get(i) == len(EVENTS))
    print(f"\n{'fault':<16}{'accepted':>9}{'recorded':>9}{'duplicates':>11}{'lost':>5}{'audited':>8}{'recovery s':>11}"
          f"\n{'kill -9 ' + service:<16}{len(set(accepted)):>9}{recorded:>9}{duplicates + recorded - len(rows):>11}"
          f"{lost:>5}{audited:>8}{recovery:>11.1f}")
    assert lost == 0 and recorded == len(set(accepted)), "every accepted screening recorded exactly once"
    assert audited == len(set(accepted)) and duplicates == 0, "every event in the ledger exactly once"
