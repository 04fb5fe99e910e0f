"""Pure rules of metrics, logs and readiness: bounded labels, correlation ids, the readiness answer."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from hypothesis import given
from hypothesis import strategies as st

from shared import health, metrics, observability
from shared.deadletter import reason_class

partition = st.tuples(st.sampled_from(["a", "b", "c"]), st.none() | st.integers(0, 10**9), st.integers(0, 10**9))


def test_a_process_own_consumer_group_is_labelled_by_its_name() -> None:
    assert metrics.group_label(f"gateway-{uuid.uuid4().hex}") == "gateway"
    assert metrics.group_label("audit-ledger") == "audit-ledger"


@given(st.lists(partition))
def test_consumer_lag_is_never_negative_and_counts_only_partitions_with_a_known_end(
        partitions: list[tuple[str, int | None, int]]) -> None:
    lag = metrics.lag_by_topic(partitions)
    assert all(value >= 0 for value in lag.values())
    for topic, value in lag.items():
        assert value == sum(max(end - pos, 0) for t, end, pos in partitions if t == topic and end is not None)


def test_a_callers_correlation_id_is_kept_only_when_it_is_a_uuid() -> None:
    given_id = uuid.uuid4()
    assert metrics.incoming_correlation(str(given_id).encode()) == str(given_id)
    assert metrics.incoming_correlation(b'"}, {"level": "forged') is None
    assert metrics.incoming_correlation(None) is None


def test_a_request_no_route_answered_is_labelled_unmatched_not_by_its_path() -> None:
    assert metrics.route_of({"path": "/api/patients/Jane%20Example"}) == metrics.UNMATCHED


def test_a_dead_letter_reason_is_counted_by_its_exception_class_only() -> None:
    assert reason_class("ValidationError: payload.cbc.hb, payload.cbc.mcv") == "ValidationError"
    assert reason_class("") == "unknown"


def test_a_delivery_of_one_screening_is_logged_with_its_one_correlation_and_tenant() -> None:
    headers = [{"correlation_id": "c1", "tenant_id": "t1"}, {"correlation_id": "c1", "tenant_id": "t1"}]
    assert observability.delivery_context(headers) == ("c1", "t1")


def test_a_delivery_of_many_screenings_is_logged_with_each_correlation_id() -> None:
    headers = [{"correlation_id": "c1"}, {"correlation_id": "c2"}, {"correlation_id": "c1"}]
    assert observability.delivery_context(headers) == (["c1", "c2"], None)


def _line(message: str) -> dict[str, object]:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, None, None)
    return json.loads(observability.JsonFormatter("gateway").format(record))


def test_log_lines_of_a_request_carry_its_correlation_and_the_tenant_of_the_event_it_published() -> None:
    async def request() -> tuple[dict[str, object], dict[str, object]]:
        reset = observability.bind_request(None)
        before = _line("accepted")
        observability.join_event("c-event", "t-org")
        after = _line("answered")
        reset()
        return before, after

    before, after = asyncio.run(request())
    assert before["service"] == "gateway" and "tenant_id" not in before and before["correlation_id"]
    assert (after["correlation_id"], after["tenant_id"]) == ("c-event", "t-org")


def test_log_lines_outside_any_request_or_delivery_carry_no_ids() -> None:
    assert {"correlation_id", "tenant_id"}.isdisjoint(_line("started"))


def test_log_lines_stay_redacted() -> None:
    assert "hunter2" not in _line('login {"password": "hunter2"}')["message"]


def test_readiness_names_the_failing_dependency() -> None:
    answer = health.report({"database": health.OK, "broker": "the broker does not answer"})
    assert answer == {"ready": False, "failing": ["broker"],
                      "checks": {"database": "ok", "broker": "the broker does not answer"}}


def test_a_check_that_does_not_answer_in_time_is_reported_as_such() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    answer = asyncio.run(health.readiness({"model": hangs}, timeout=0.05))
    assert answer["failing"] == ["model"] and answer["checks"]["model"] == "no answer within 0.05 s"


def test_a_service_not_started_is_not_ready() -> None:
    assert asyncio.run(health.readiness(None))["ready"] is False
