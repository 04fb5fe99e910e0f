"""Chunks of a batch: every accepted row in exactly one chunk, in order, small enough for one Kafka message;
progress counts what the recorded chunks say."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.batch import AdmittedRow, CheckedRow, chunk_commands, chunked, status, tally
from inference.model import DEFAULT_MODEL_DIR, B12Model
from inference.training.cohort import generate_cohort
from shared.events import Actor, new_envelope
from shared.events import batch as ev
from shared.events.screening import FEATURE_ORDER, CompleteBloodCount, Label, RiskClass
from shared.kafka import encode
from tests.conftest import HEALTHY_CBC

#: aiokafka's default max_request_size and Kafka's default message.max.bytes.
KAFKA_MESSAGE_LIMIT = 1_048_576


@given(rows=st.lists(st.integers(), max_size=600), size=st.integers(1, 300))
def test_chunks_hold_every_row_once_in_order_and_only_the_last_is_short(rows: list[int], size: int) -> None:
    parts = chunked(rows, size)
    assert [r for part in parts for r in part] == rows
    assert all(len(part) == size for part in parts[:-1]) and all(0 < len(part) <= size for part in parts)


def test_a_chunk_holds_at_least_one_row() -> None:
    with pytest.raises(ValueError):
        chunked([1, 2], 0)


def admitted(count: int) -> list[AdmittedRow]:
    cbc = CompleteBloodCount.model_validate(HEALTHY_CBC)
    return [AdmittedRow(CheckedRow(2 * i + 1, f"P-{i}", None, cbc), uuid.uuid4(), None) for i in range(count)]


def test_chunk_commands_give_each_row_a_screening_id_and_carry_the_job_as_correlation() -> None:
    job, tenant = uuid.uuid4(), uuid.uuid4()
    commands = chunk_commands(job, tenant, Actor(role="lab_technician"), admitted(7), 3, datetime.now(UTC))
    assert [(c.payload.chunk, [r.row for r in c.payload.rows]) for c in commands] == [
        (0, [1, 3, 5]), (1, [7, 9, 11]), (2, [13])]
    assert {c.correlation_id for c in commands} == {job} and {c.tenant_id for c in commands} == {tenant}
    ids = [r.screening_id for c in commands for r in c.payload.rows]
    assert len(set(ids)) == 7
    decoded = ev.ScreeningBatchRequestedV1.model_validate_json(commands[0].payload.model_dump_json())
    assert decoded == commands[0].payload and decoded.rows[0].patient.name_ciphertext is None


def test_a_classified_chunk_of_the_largest_size_fits_in_one_kafka_message() -> None:
    model = B12Model.load(DEFAULT_MODEL_DIR)
    columns = generate_cohort(3000, 5)
    x = np.column_stack([(columns["sex"] == "male").astype(float) if n == "sex_male" else columns[n]
                         for n in FEATURE_ORDER])
    largest = max(model.assess(x), key=lambda a: len(a.model_dump_json()))
    row = AdmittedRow(CheckedRow(99_999, "P" * 64, None, CompleteBloodCount.model_validate(HEALTHY_CBC)),
                      uuid.uuid4(), uuid.uuid4())
    [command] = chunk_commands(uuid.uuid4(), uuid.uuid4(), Actor(role="lab_technician"), [row] * ev.MAX_CHUNK_ROWS,
                               ev.MAX_CHUNK_ROWS, datetime.now(UTC))
    classified = ev.ScreeningBatchClassifiedV1(
        job_id=command.payload.job_id, chunk=0, requested_at=command.payload.requested_at,
        rows=[ev.ClassifiedRow(request=r, assessment=largest) for r in command.payload.rows])
    envelope = new_envelope(classified, event_type="ScreeningBatchClassified", event_version=1,
                            tenant_id=uuid.uuid4(), actor=Actor(role="service", service="inference"))
    assert len(encode(envelope)) < KAFKA_MESSAGE_LIMIT


def outcome(row: int, risk: RiskClass | None) -> ev.RowOutcome:
    return ev.RowOutcome(row=row, screening_id=uuid.uuid4(), status="classified" if risk else "rejected",
                         label=Label.NORMAL if risk else None, risk_class=risk,
                         rejection_reason=None if risk else "not assessed")


def test_a_recorded_chunk_adds_its_classified_rows_by_risk_class() -> None:
    counts = tally([outcome(1, RiskClass.LOW), outcome(2, RiskClass.HIGH), outcome(3, None),
                    outcome(4, RiskClass.HIGH)])
    assert (counts.recorded, counts.classified, counts.risk_low, counts.risk_intermediate, counts.risk_high) == (
        4, 3, 1, 0, 2)


@pytest.mark.parametrize("recorded, expected", [(0, "queued"), (1, "running"), (10, "completed")])
def test_a_job_is_queued_then_running_then_completed(recorded: int, expected: str) -> None:
    assert status(10, recorded) == expected
