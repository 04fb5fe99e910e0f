"""Bulk screening: a lab's batch travels in chunks of rows, so 100 000 rows are a few hundred messages.

The gateway validates every row up front, splits the accepted rows into chunks and publishes one
``ScreeningBatchRequested`` per chunk; inference answers each with one ``ScreeningBatchClassified``;
the screening service stores the chunk in one transaction and announces it with one ``ScreeningBatchRecorded``
(v2: every row's screening as stored, no per-row ``ScreeningRecorded``), from which the gateway reports the
job's progress, the analytics stream makes one de-identified chunk event and the audit ledger one entry. A
chunk is identified by (job id, chunk number); every consumer ignores a chunk it has already handled.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shared.events.screening import (
    Assessment,
    CompleteBloodCount,
    Label,
    PatientReference,
    RiskClass,
    ScreeningRecordedV1,
)

#: Most rows a chunk may hold. A classified row is at most about 3 KB of JSON (an assessment with every finding
#: is ≈ 2 KB, its request ≈ 0.7 KB with a 64-character patient id), so a classified chunk of 300 rows stays
#: below 1 MB, the default ``max_request_size`` of aiokafka and ``message.max.bytes`` of Kafka.
MAX_CHUNK_ROWS = 300
#: Most rows one upload may hold.
MAX_BATCH_ROWS = 100_000
#: Long-poll ceiling of the bulk consumers: a chunk is never in a hurry, and an idle consumer polling every 5 ms
#: (the platform's ceiling, for classify) costs the broker 200 empty fetches a second.
BATCH_FETCH_MAX_WAIT_MS = 100


class BatchRow(BaseModel):
    """One accepted row: its position in the uploaded file (1-based data row) and the screening it became."""

    model_config = ConfigDict(frozen=True)

    row: int = Field(ge=1)
    screening_id: uuid.UUID
    patient: PatientReference
    cbc: CompleteBloodCount
    consent_id: uuid.UUID | None = None
    #: When the blood was drawn, as in ``ScreeningRequestedV1`` (optional, additive).
    collected_at: datetime | None = None


class ScreeningBatchRequestedV1(BaseModel):
    """Command: screen these rows of a batch job. Published by the gateway, consumed by inference."""

    model_config = ConfigDict(frozen=True)

    job_id: uuid.UUID
    chunk: int = Field(ge=0)
    rows: list[BatchRow]
    requested_at: datetime
    #: The organisation's declared prevalence of B12 < 200 pg/mL, as in ``ScreeningRequestedV1`` (1.1).
    expected_prevalence: float | None = Field(None, gt=0.0, lt=1.0)


class ClassifiedRow(BaseModel):
    """A row and what the model said (``assessment`` None and ``rejection_reason`` set if it could not)."""

    model_config = ConfigDict(frozen=True)

    request: BatchRow
    assessment: Assessment | None
    rejection_reason: str | None = None


class ScreeningBatchClassifiedV1(BaseModel):
    """Event: inference assessed every row of a chunk. Consumed by the screening service."""

    model_config = ConfigDict(frozen=True)

    job_id: uuid.UUID
    chunk: int = Field(ge=0)
    rows: list[ClassifiedRow]
    requested_at: datetime


class RowOutcome(BaseModel):
    """What became of one row, small enough to keep per row for the job's report."""

    model_config = ConfigDict(frozen=True)

    row: int
    screening_id: uuid.UUID
    status: str = Field(description="classified | rejected")
    label: Label | None = None
    risk_class: RiskClass | None = None
    rejection_reason: str | None = None


class ScreeningBatchRecordedV1(BaseModel):
    """Event: a chunk is stored in the tenant's schema. Consumed by the gateway (job progress)."""

    model_config = ConfigDict(frozen=True)

    job_id: uuid.UUID
    chunk: int = Field(ge=0)
    outcomes: list[RowOutcome]
    recorded_at: datetime


class RecordedRow(BaseModel):
    """One row of a recorded chunk: its place in the upload and the screening exactly as stored.

    A row whose patient record vanished before its chunk was stored cannot be stored; it is still carried,
    as a rejection whose reason says it was not recorded, so that the chunk accounts for every accepted row.
    """

    model_config = ConfigDict(frozen=True)

    row: int = Field(ge=1)
    screening: ScreeningRecordedV1

    def outcome(self) -> RowOutcome:
        """The row's line in the job's report."""
        assessment = self.screening.assessment
        return RowOutcome(
            row=self.row, screening_id=self.screening.screening_id, status=self.screening.status,
            label=assessment.label if assessment else None,
            risk_class=assessment.risk_class if assessment else None,
            rejection_reason=self.screening.rejection_reason,
        )


class ScreeningBatchRecordedV2(BaseModel):
    """Event: a chunk is stored in the tenant's schema; the one recorded event of its rows.

    A chunk stays one message on every hop after inference: v2 carries each row's screening as stored (the
    content ``ScreeningRecorded`` has for a single screening), and its rows are not also published one by one
    as ``ScreeningRecorded``. Consumed by the gateway (job progress), the analytics stream (one de-identified
    chunk event) and the audit ledger (one entry committing to every row). v1 (outcomes only, rows also
    published as ``ScreeningRecorded``) is still read, so a v1 producer and a v2 consumer can meet in an upgrade.
    """

    model_config = ConfigDict(frozen=True)

    job_id: uuid.UUID
    chunk: int = Field(ge=0)
    rows: list[RecordedRow] = Field(min_length=1, max_length=MAX_CHUNK_ROWS)
    recorded_at: datetime

    def outcomes(self) -> list[RowOutcome]:
        return [row.outcome() for row in self.rows]


SCREENING_BATCH_REQUESTED = ("ScreeningBatchRequested", 1)
SCREENING_BATCH_CLASSIFIED = ("ScreeningBatchClassified", 1)
SCREENING_BATCH_RECORDED = ("ScreeningBatchRecorded", 1)
SCREENING_BATCH_RECORDED_V2 = ("ScreeningBatchRecorded", 2)
