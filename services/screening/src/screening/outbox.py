"""Record events, published at least once: written to ``screening.outbox`` inside the transaction of the
change (or the read) they describe, published right after commit, and re-published by a relay loop when
that publish did not happen (broker down, process killed). Consumers dedupe by event id.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.events import Actor, Envelope, new_envelope
from shared.events.envelope import RawEnvelope
from shared.events import records as ev
from shared.kafka import encode, publish_many

log = logging.getLogger(__name__)
TABLE = "screening.outbox"  # schema-qualified: written from inside tenant transactions


class Outbox:
    def __init__(self, engine: AsyncEngine, broker: KafkaBroker) -> None:
        self.engine = engine
        self.broker = broker
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, conn: AsyncConnection, payload: BaseModel, *, tenant: uuid.UUID,
                  actor: Actor) -> Envelope[Any]:
        kind = ev.KINDS[type(payload)]
        envelope = new_envelope(payload, event_type=kind[0], event_version=kind[1], tenant_id=tenant, actor=actor)
        await conn.execute(
            text(f"INSERT INTO {TABLE} (event_id, tenant_id, topic, key, envelope) "
                 "VALUES (:e, :t, :topic, :k, :b)"),
            {"e": envelope.event_id, "t": tenant, "topic": ev.RECORDS_TOPIC, "k": str(tenant),
             "b": encode(envelope)},
        )
        return envelope

    def dispatch(self, envelopes: list[Envelope[Any]]) -> None:
        """Publish committed events in the background; the response does not wait for the broker."""
        if not envelopes:
            return
        task = asyncio.create_task(self._publish(envelopes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, envelopes: list[Envelope[Any]]) -> None:
        try:
            await publish_many(self.broker, ev.RECORDS_TOPIC, envelopes, key=lambda e: str(e.tenant_id))
            async with self.engine.begin() as conn:
                await conn.execute(text(f"DELETE FROM {TABLE} WHERE event_id = ANY(:ids)"),
                                   {"ids": [e.event_id for e in envelopes]})
        except Exception:
            log.warning("record events not published yet; the outbox relay will retry", exc_info=True)

    async def drain(self) -> None:
        """Wait for background publishes (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def relay_once(self, older_than_seconds: float, limit: int = 500) -> int:
        async with self.engine.begin() as conn:
            rows = (await conn.execute(
                text(f"SELECT event_id, topic, key, envelope FROM {TABLE} "
                     "WHERE created_at < now() - make_interval(secs => :age) "
                     "ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED"),
                {"age": older_than_seconds, "limit": limit},
            )).all()
            keys: dict[uuid.UUID, str] = {}
            by_topic: dict[str, list[RawEnvelope]] = {}
            for event_id, topic, key, raw in rows:
                keys[event_id] = key
                by_topic.setdefault(topic, []).append(RawEnvelope.model_validate_json(bytes(raw)))
            for topic, envelopes in by_topic.items():
                await publish_many(self.broker, topic, envelopes, key=lambda e: keys[e.event_id])
            if rows:
                await conn.execute(text(f"DELETE FROM {TABLE} WHERE event_id = ANY(:ids)"),
                                   {"ids": [r[0] for r in rows]})
        return len(rows)

    async def relay_forever(self, older_than_seconds: float, interval_seconds: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                sent = await self.relay_once(older_than_seconds)
                if sent:
                    log.info("outbox relay re-published %d record events", sent)
            except Exception:
                log.warning("outbox relay pass failed; retrying", exc_info=True)
