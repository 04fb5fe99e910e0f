"""Subscribers: recorded screenings answer their waiting requests and close their intake entries; recorded
batch chunks advance their job."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, Field, TypeAdapter

from gateway import batch, store
from gateway.outcomes import Outcomes
from shared.events import Envelope, Topic
from shared.events import batch as batch_ev
from shared.events import screening as ev
from shared.events.envelope import event_kind
from shared.kafka import at_least_once, every_event_from_now, subscribe
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
RecordedEnvelope = Envelope[ev.ScreeningRecordedV1]
RowOutcomes = TypeAdapter(list[batch_ev.RowOutcome])


class _OutcomeAssessment(BaseModel):
    label: ev.Label
    risk_class: ev.RiskClass


class _OutcomeScreening(BaseModel):
    screening_id: uuid.UUID
    status: Literal["classified", "rejected"]
    assessment: _OutcomeAssessment | None
    rejection_reason: str | None = None


class _OutcomeRow(BaseModel):
    row: int = Field(ge=1)
    screening: _OutcomeScreening

    def outcome(self) -> batch_ev.RowOutcome:
        assessment = self.screening.assessment
        return batch_ev.RowOutcome(
            row=self.row, screening_id=self.screening.screening_id, status=self.screening.status,
            label=assessment.label if assessment else None,
            risk_class=assessment.risk_class if assessment else None,
            rejection_reason=self.screening.rejection_reason)


class ChunkOutcomesV2(BaseModel):
    """What job progress reads of a ``ScreeningBatchRecorded`` v2: each row's outcome fields, nothing else.

    Validating the whole event (every assessment) cost about 12 ms per 250-row chunk, most of the gateway's
    CPU in a bulk run; the rest of a row is the screening service's and the ledger's business.
    """

    job_id: uuid.UUID
    chunk: int = Field(ge=0)
    rows: list[_OutcomeRow] = Field(min_length=1, max_length=batch_ev.MAX_CHUNK_ROWS)

    def outcomes(self) -> list[batch_ev.RowOutcome]:
        return [row.outcome() for row in self.rows]


#: The versions of a recorded chunk the job's progress reads (v1 from a producer not yet upgraded).
CHUNK_OUTCOMES = {batch_ev.SCREENING_BATCH_RECORDED: Envelope[batch_ev.ScreeningBatchRecordedV1],
                  batch_ev.SCREENING_BATCH_RECORDED_V2: Envelope[ChunkOutcomesV2]}


def screening_key(key: bytes | None) -> uuid.UUID | None:
    """The screening id a recorded event is keyed by, or None for a key that is not one."""
    try:
        return uuid.UUID(key.decode()) if key else None
    except ValueError:
        return None


def chunk_outcomes(raw: bytes, headers: Any) -> tuple[uuid.UUID, int, list[batch_ev.RowOutcome]] | None:
    """(job id, chunk, row outcomes) of a recorded chunk of either version; None for what cannot be read."""
    try:
        model = CHUNK_OUTCOMES.get(event_kind(raw, headers))
        if model is None:
            log.error("unknown event version on %s skipped (the audit ledger keeps it)",
                      Topic.SCREENING_BATCH_RECORDED)
            return None
        chunk = model.model_validate_json(raw).payload
    except ValueError:
        log.error("unreadable event on %s skipped (the audit ledger keeps it)", Topic.SCREENING_BATCH_RECORDED)
        return None
    outcomes = chunk.outcomes if isinstance(chunk, batch_ev.ScreeningBatchRecordedV1) else chunk.outcomes()
    return chunk.job_id, chunk.chunk, outcomes


def register(broker: KafkaBroker, settings: CommonSettings, outcomes: Outcomes, engine: Any) -> None:
    # Every gateway replica must see every recorded event (any of them may hold the waiting request), so each
    # process reads with a group of its own, from the moment it starts.
    waiter = every_event_from_now(settings, "gateway")
    outcomes.heads_up = waiter["tempo"].brisk

    @subscribe(broker, Topic.SCREENING_RECORDED, batch=True, max_records=1000, batch_timeout_ms=5, **waiter)
    async def screening_recorded(messages: list[bytes], message: KafkaMessage) -> None:
        """Only an event a request waits for is parsed (its key is the screening id); the intake entries of
        all of them are closed with the events as published."""
        recorded: dict[uuid.UUID, bytes] = {}
        for raw, record in zip(messages, message.raw_message, strict=True):
            screening_id = screening_key(record.key)
            if screening_id is None:
                log.error("event on %s without a screening id key skipped", Topic.SCREENING_RECORDED)
                continue
            if outcomes.waiting(screening_id):
                outcomes.resolve(screening_id, RecordedEnvelope.model_validate_json(raw).payload)
            recorded[screening_id] = raw
        if recorded:
            async with engine.begin() as conn:
                await store.mark_recorded(conn, list(recorded), [raw.decode() for raw in recorded.values()])

    # A chunk's outcome changes only the database, so one consumer group serves every replica.
    @subscribe(broker, Topic.SCREENING_BATCH_RECORDED, batch=True, max_records=100,
               batch_timeout_ms=batch_ev.BATCH_FETCH_MAX_WAIT_MS,
               **at_least_once(settings, "gateway-batch-progress", fetch_max_wait_ms=batch_ev.BATCH_FETCH_MAX_WAIT_MS))
    async def batch_chunk_recorded(messages: list[bytes], message: KafkaMessage) -> None:
        """``message`` is the delivery, or a ``shared.deadletter.Part`` when one message is retried alone."""
        chunks = [chunk_outcomes(raw, record.headers)
                  for raw, record in zip(messages, message.raw_message, strict=True)]
        async with engine.begin() as conn:
            for job_id, chunk, row_outcomes in filter(None, chunks):
                counts = batch.tally(row_outcomes)
                await store.record_batch_chunk(
                    conn, job_id, chunk, RowOutcomes.dump_json(row_outcomes).decode(),
                    recorded=counts.recorded, classified=counts.classified, risk_low=counts.risk_low,
                    risk_intermediate=counts.risk_intermediate, risk_high=counts.risk_high)
