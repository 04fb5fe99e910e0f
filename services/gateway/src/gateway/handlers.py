"""Subscribers: recorded screenings answer their waiting requests and close their intake entries; recorded
batch chunks advance their job."""

from __future__ import annotations

import logging
from typing import Any

from faststream.kafka import KafkaBroker
from pydantic import TypeAdapter, ValidationError

from gateway import batch, store
from gateway.outcomes import Outcomes
from shared.events import Envelope, Topic
from shared.events import batch as batch_ev
from shared.events import screening as ev
from shared.kafka import at_least_once, every_event_from_now, subscribe
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
RecordedEnvelope = Envelope[ev.ScreeningRecordedV1]
BatchRecordedEnvelope = Envelope[batch_ev.ScreeningBatchRecordedV1]
RowOutcomes = TypeAdapter(list[batch_ev.RowOutcome])


def register(broker: KafkaBroker, settings: CommonSettings, outcomes: Outcomes, engine: Any) -> None:
    # Every gateway replica must see every recorded event (any of them may hold the waiting request), so each
    # process reads with a group of its own, from the moment it starts.
    @subscribe(broker, Topic.SCREENING_RECORDED, batch=True, max_records=1000, batch_timeout_ms=5,
               **every_event_from_now(settings, "gateway"))
    async def screening_recorded(messages: list[bytes]) -> None:
        recorded = {e.payload.screening_id: e for e in (RecordedEnvelope.model_validate_json(r) for r in messages)}
        for screening_id, envelope in recorded.items():
            outcomes.resolve(screening_id, envelope.payload)
        async with engine.begin() as conn:
            await store.mark_recorded(conn, list(recorded),
                                      [e.payload.model_dump_json() for e in recorded.values()])

    # A chunk's outcome changes only the database, so one consumer group serves every replica.
    @subscribe(broker, Topic.SCREENING_BATCH_RECORDED, batch=True, max_records=100, batch_timeout_ms=5,
               **at_least_once(settings, "gateway-batch-progress", fetch_max_wait_ms=batch_ev.BATCH_FETCH_MAX_WAIT_MS))
    async def batch_chunk_recorded(messages: list[bytes]) -> None:
        chunks = []
        for raw in messages:
            try:
                chunks.append(BatchRecordedEnvelope.model_validate_json(raw).payload)
            except ValidationError:
                log.error("unreadable event on %s skipped (the audit ledger keeps it)", Topic.SCREENING_BATCH_RECORDED)
        async with engine.begin() as conn:
            for chunk in chunks:
                counts = batch.tally(chunk.outcomes)
                await store.record_batch_chunk(
                    conn, chunk.job_id, chunk.chunk, RowOutcomes.dump_json(chunk.outcomes).decode(),
                    recorded=counts.recorded, classified=counts.classified, risk_low=counts.risk_low,
                    risk_intermediate=counts.risk_intermediate, risk_high=counts.risk_high)
