"""The recorded chunk event (``ScreeningBatchRecorded`` v2), pure: it fits in one Kafka message at the largest
chunk size, the job's progress reads the same outcomes from v1 and v2, a row that could not be stored is still
accounted for."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import numpy as np

from gateway.handlers import chunk_outcomes
from inference.model import DEFAULT_MODEL_DIR, B12Model
from inference.training.cohort import generate_cohort
from screening.batch import PATIENT_MISSING, announcement, not_recorded
from shared.events import Actor, new_envelope
from shared.events.envelope import derived_event_id
from shared.events import batch as ev
from shared.events.screening import (
    FEATURE_ORDER,
    Assessment,
    CompleteBloodCount,
    Label,
    PatientReference,
    RiskClass,
    ScreeningRecordedV1,
)
from shared.kafka import encode, headers_of
from tests.batch.test_batch_chunks import KAFKA_MESSAGE_LIMIT
from tests.conftest import HEALTHY_CBC

SERVICE = Actor(role="service", service="screening")


def assessments(count: int) -> list[Assessment]:
    model = B12Model.load(DEFAULT_MODEL_DIR)
    columns = generate_cohort(count, 5)
    x = np.column_stack([(columns["sex"] == "male").astype(float) if n == "sex_male" else columns[n]
                         for n in FEATURE_ORDER])
    return model.assess(x)


def recorded(assessment: Assessment | None, external_id: str = "P-1") -> ScreeningRecordedV1:
    now = datetime.now(UTC)
    return ScreeningRecordedV1(
        screening_id=uuid.uuid4(), status="classified" if assessment else "rejected", patient_external_id=external_id,
        assessment=assessment, rejection_reason=None if assessment else "not assessed", requested_at=now,
        recorded_at=now, patient_id=uuid.uuid4())


def chunk_v2(rows: list[ev.RecordedRow]) -> ev.ScreeningBatchRecordedV2:
    return ev.ScreeningBatchRecordedV2(job_id=uuid.uuid4(), chunk=3, rows=rows, recorded_at=datetime.now(UTC))


def test_a_recorded_chunk_of_the_largest_size_fits_in_one_kafka_message() -> None:
    largest = max(assessments(3000), key=lambda a: len(a.model_dump_json()))
    rows = [ev.RecordedRow(row=99_000 + i, screening=recorded(largest, "P" * 64)) for i in range(ev.MAX_CHUNK_ROWS)]
    envelope = new_envelope(chunk_v2(rows), event_type="ScreeningBatchRecorded", event_version=2,
                            tenant_id=uuid.uuid4(), actor=SERVICE)
    assert len(encode(envelope)) < KAFKA_MESSAGE_LIMIT


def test_job_progress_reads_the_same_outcomes_from_a_v1_and_a_v2_chunk_event() -> None:
    rows = [ev.RecordedRow(row=row, screening=recorded(a)) for row, a in zip((1, 3, 4), [*assessments(2), None],
                                                                             strict=True)]
    v2 = chunk_v2(rows)
    v1 = ev.ScreeningBatchRecordedV1(job_id=v2.job_id, chunk=v2.chunk, outcomes=v2.outcomes(),
                                     recorded_at=v2.recorded_at)
    read = []
    for payload, (kind, version) in ((v1, ev.SCREENING_BATCH_RECORDED), (v2, ev.SCREENING_BATCH_RECORDED_V2)):
        envelope = new_envelope(payload, event_type=kind, event_version=version, tenant_id=uuid.uuid4(),
                                actor=SERVICE)
        with_headers = chunk_outcomes(encode(envelope), [(k, v.encode()) for k, v in headers_of(envelope).items()])
        assert chunk_outcomes(encode(envelope), []) == with_headers, "without headers, the envelope says"
        read.append(with_headers)
    assert read[0] == read[1] == (v2.job_id, 3, v2.outcomes())
    assert [(o.row, o.status, o.risk_class is None) for o in v2.outcomes()] == [
        (1, "classified", False), (3, "classified", False), (4, "rejected", True)]


def test_an_unknown_chunk_event_version_is_skipped_by_job_progress() -> None:
    envelope = new_envelope(chunk_v2([ev.RecordedRow(row=1, screening=recorded(None))]),
                            event_type="ScreeningBatchRecorded", event_version=3, tenant_id=uuid.uuid4(), actor=SERVICE)
    assert chunk_outcomes(encode(envelope), []) is None


def test_a_row_whose_patient_vanished_is_carried_as_not_recorded() -> None:
    request = ev.BatchRow(row=7, screening_id=uuid.uuid4(),
                          patient=PatientReference(external_id="P-7", patient_id=uuid.uuid4()),
                          cbc=CompleteBloodCount.model_validate(HEALTHY_CBC))
    now = datetime.now(UTC)
    row = ev.RecordedRow(row=7, screening=not_recorded(ev.ClassifiedRow(request=request, assessment=None), now, now))
    outcome = row.outcome()
    assert (outcome.row, outcome.screening_id, outcome.status, outcome.rejection_reason) == (
        7, request.screening_id, "rejected", PATIENT_MISSING)



def v2_bytes(rows: list[dict[str, object]]) -> bytes:
    envelope = new_envelope(chunk_v2([ev.RecordedRow(row=1, screening=recorded(None))]),
                            event_type="ScreeningBatchRecorded", event_version=2, tenant_id=uuid.uuid4(),
                            actor=SERVICE)
    event = json.loads(encode(envelope))
    event["payload"]["rows"] = rows
    return json.dumps(event).encode()


def test_job_progress_needs_only_the_outcome_fields_of_a_v2_chunk_row() -> None:
    sid = uuid.uuid4()
    raw = v2_bytes([{"row": 5, "screening": {"screening_id": str(sid), "status": "classified",
                                             "assessment": {"label": "deficient", "risk_class": 3}}}])
    _, _, outcomes = chunk_outcomes(raw, []) or (None, None, [])
    assert outcomes == [ev.RowOutcome(row=5, screening_id=sid, status="classified", label=Label.DEFICIENT,
                                      risk_class=RiskClass.HIGH)]


def test_a_v2_chunk_whose_outcome_fields_are_unreadable_is_skipped_by_job_progress() -> None:
    raw = v2_bytes([{"row": 5, "screening": {"screening_id": str(uuid.uuid4()), "status": "maybe",
                                             "assessment": None}}])
    assert chunk_outcomes(raw, []) is None


def test_a_chunks_announcement_carries_each_row_as_stored_now_or_as_not_recorded_in_row_order() -> None:
    [assessment] = assessments(1)
    requests = [ev.BatchRow(row=row, screening_id=uuid.uuid4(),
                            patient=PatientReference(external_id=f"P-{row}", patient_id=uuid.uuid4()),
                            cbc=CompleteBloodCount.model_validate(HEALTHY_CBC)) for row in (4, 9)]
    now = datetime.now(UTC)
    classified = new_envelope(
        ev.ScreeningBatchClassifiedV1(job_id=uuid.uuid4(), chunk=2, requested_at=now, rows=[
            ev.ClassifiedRow(request=requests[0], assessment=assessment),
            ev.ClassifiedRow(request=requests[1], assessment=assessment)]),
        event_type="ScreeningBatchClassified", event_version=1, tenant_id=uuid.uuid4(),
        actor=Actor(role="service", service="inference"))
    announced = announcement(classified, {requests[0].screening_id}, {}, now)
    assert announced.event_id == derived_event_id(classified.event_id, "ScreeningBatchRecorded")
    assert (announced.payload.job_id, announced.payload.chunk) == (classified.payload.job_id, 2)
    assert [(r.row, r.screening.status, r.screening.rejection_reason) for r in announced.payload.rows] == [
        (4, "classified", None), (9, "rejected", PATIENT_MISSING)]
    assert announced.payload.rows[0].screening.assessment == assessment
