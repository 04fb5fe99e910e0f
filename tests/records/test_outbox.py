"""Record events are written to an outbox with their change; what was not published right after commit
(broker down, process killed) is published by the relay, then removed. Run against a database of its own,
so the running platform's outbox is not touched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from screening import store
from screening.outbox import Outbox
from shared.db import create_engine, ensure_database, migrate
from shared.events import Actor
from shared.events import records as ev


class RecordingBroker:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[dict[str, Any]] = []
        self.fail = fail

    async def publish(self, message: bytes, **options: Any) -> asyncio.Future[None] | None:
        """Like FastStream's: with ``no_confirm`` the caller gets the broker's acknowledgement to await."""
        if self.fail:
            raise ConnectionError("broker down")
        self.published.append({"message": message} | options)
        if not options.get("no_confirm"):
            return None
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged


@pytest.fixture(scope="module")
async def own_engine(platform: Platform) -> AsyncIterator[AsyncEngine]:
    url = make_url(platform.env["DATABASE_URL"]).set(database="clinomic_outbox_test")
    await ensure_database(url.render_as_string(hide_password=False))
    engine = create_engine(url.render_as_string(hide_password=False), application_name="outbox-test", pool_size=2)
    await migrate(engine, store.CONTROL_MIGRATIONS, store.CONTROL_SCHEMA)
    yield engine
    await engine.dispose()


async def _pending(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT count(*) FROM screening.outbox"))


async def test_an_event_whose_publish_failed_stays_in_the_outbox_and_the_relay_publishes_it(
    own_engine: AsyncEngine,
) -> None:
    tenant, lab_id = uuid.uuid4(), uuid.uuid4()
    down = Outbox(own_engine, RecordingBroker(fail=True))  # type: ignore[arg-type]
    async with own_engine.begin() as conn:
        envelope = await down.add(conn, ev.LabCreatedV1(lab_id=lab_id), tenant=tenant,
                                  actor=Actor(role="org_admin", user_id=uuid.uuid4()))
    down.dispatch([envelope])
    await down.drain()
    assert await _pending(own_engine) == 1

    broker = RecordingBroker()
    assert await Outbox(own_engine, broker).relay_once(older_than_seconds=0) == 1  # type: ignore[arg-type]
    [sent] = broker.published
    assert sent["topic"] == "clinomic.records" and str(envelope.event_id).encode() in sent["message"]
    assert sent["headers"]["event_type"] == "LabCreated"
    assert await _pending(own_engine) == 0


async def test_an_event_of_a_rolled_back_change_is_never_published(own_engine: AsyncEngine) -> None:
    outbox = Outbox(own_engine, RecordingBroker())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        async with own_engine.begin() as conn:
            await outbox.add(conn, ev.LabCreatedV1(lab_id=uuid.uuid4()), tenant=uuid.uuid4(),
                             actor=Actor(role="org_admin"))
            raise RuntimeError("the change failed")
    assert await _pending(own_engine) == 0
