"""Subscriber: recorded screenings answer their waiting requests and close their intake entries."""

from __future__ import annotations

import uuid
from typing import Any

from faststream.kafka import KafkaBroker

from gateway import store
from gateway.outcomes import Outcomes
from shared.events import Envelope, Topic
from shared.events import screening as ev
from shared.kafka import raw_body
from shared.settings import CommonSettings

RecordedEnvelope = Envelope[ev.ScreeningRecordedV1]


def register(broker: KafkaBroker, settings: CommonSettings, outcomes: Outcomes, engine: Any) -> None:
    # Every gateway replica must see every recorded event (any of them may hold the waiting request), so each
    # process reads with a group of its own, from the moment it starts.
    @broker.subscriber(Topic.SCREENING_RECORDED, batch=True, max_records=1000, batch_timeout_ms=5,
                       group_id=f"gateway-{uuid.uuid4().hex}", auto_offset_reset="latest",
                       fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms, decoder=raw_body)
    async def screening_recorded(messages: list[bytes]) -> None:
        recorded = {e.payload.screening_id: e for e in (RecordedEnvelope.model_validate_json(r) for r in messages)}
        for screening_id, envelope in recorded.items():
            outcomes.resolve(screening_id, envelope.payload)
        async with engine.begin() as conn:
            await store.mark_recorded(conn, list(recorded),
                                      [e.payload.model_dump_json() for e in recorded.values()])
