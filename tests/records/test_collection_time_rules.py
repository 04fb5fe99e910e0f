"""The collection time of a sample (``collected_at``), without I/O: the rules at the edge (time zone, not in the
future beyond the clock skew, not older than a year), the idempotency fingerprint, the analytics day."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.api import ClassifyRequest
from gateway.intake import fingerprint
from screening.analytics_stream import deidentified
from screening.store import RecordedFacts
from shared.events.screening import (
    COLLECTION_CLOCK_SKEW,
    COLLECTION_MAX_AGE,
    CompleteBloodCount,
    check_collection_time,
)
from tests.conftest import HEALTHY_CBC

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])


def body(collected_at: object) -> dict:
    return {"patient": {"external_id": "P-1"}, "cbc": HEALTHY_CBC, "collected_at": collected_at}


def problems(collected_at: object) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as caught:
        ClassifyRequest.model_validate(body(collected_at))
    return [(e["loc"], e["msg"]) for e in caught.value.errors()]


@given(st.timedeltas(min_value=-COLLECTION_CLOCK_SKEW, max_value=COLLECTION_MAX_AGE), ZONES)
def test_an_aware_time_within_the_last_year_is_accepted_as_it_is(ago: timedelta, zone: timezone) -> None:
    collected = (NOW - ago).astimezone(zone)
    assert check_collection_time(collected, NOW) == collected


@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3650)))
def test_a_time_beyond_the_clock_skew_in_the_future_is_refused(beyond: timedelta) -> None:
    with pytest.raises(ValueError, match="in the future"):
        check_collection_time(NOW + COLLECTION_CLOCK_SKEW + beyond, NOW)


@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3650)))
def test_a_time_more_than_a_year_ago_is_refused(beyond: timedelta) -> None:
    with pytest.raises(ValueError, match="365 days ago"):
        check_collection_time(NOW - COLLECTION_MAX_AGE - beyond, NOW)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        check_collection_time(NOW.replace(tzinfo=None), NOW)


def test_a_classify_body_reads_an_iso_time_with_its_zone() -> None:
    expected = (datetime.now(UTC) - timedelta(days=10)).replace(microsecond=0)
    india = expected.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()  # ...+05:30
    assert ClassifyRequest.model_validate(body(india)).collected_at == expected


def test_a_classify_body_without_a_collection_time_has_none() -> None:
    assert ClassifyRequest.model_validate({"patient": {"external_id": "P-1"}, "cbc": HEALTHY_CBC}).collected_at is None


def test_a_naive_time_in_a_classify_body_is_refused_naming_the_field() -> None:
    [(loc, message)] = problems((datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None).isoformat())
    assert loc == ("collected_at",) and "time zone" in message


def test_a_future_time_in_a_classify_body_is_refused_naming_the_field() -> None:
    [(loc, message)] = problems((datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert loc == ("collected_at",) and "future" in message


@pytest.mark.parametrize("value", [1767225600, 1.5e9, True, "yesterday", "2026-13-01T00:00:00Z"])
def test_a_collection_time_that_is_not_iso_8601_text_is_refused_naming_the_field(value: object) -> None:
    assert [loc for loc, _ in problems(value)] == [("collected_at",)]


def test_a_retry_with_another_collection_time_has_another_fingerprint() -> None:
    cbc = CompleteBloodCount.model_validate(HEALTHY_CBC)
    day = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    assert fingerprint("P-1", cbc, day) != fingerprint("P-1", cbc, day + timedelta(hours=1))
    assert fingerprint("P-1", cbc, day) == fingerprint("P-1", cbc, day.astimezone(timezone(timedelta(hours=2))))


def test_without_a_collection_time_the_fingerprint_is_the_one_made_before_it_existed() -> None:
    cbc = CompleteBloodCount.model_validate(HEALTHY_CBC)
    before = hashlib.sha256(json.dumps({"external_id": "P-1", "cbc": cbc.model_dump(mode="json")},
                                       sort_keys=True).encode()).hexdigest()
    assert fingerprint("P-1", cbc) == before


def _facts(collected_at: datetime | None) -> RecordedFacts:
    return RecordedFacts(id=uuid.uuid4(), patient_id=uuid.uuid4(), status="rejected", cbc=HEALTHY_CBC,
                         assessment=None, recorded_at=NOW, lab_id=None, doctor_id=None, collected_at=collected_at)


def test_the_analytics_event_carries_the_utc_day_of_collection_not_the_time() -> None:
    collected = datetime(2026, 5, 2, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))  # 1 May, 20:00 UTC
    event = deidentified(_facts(collected), uuid.uuid4(), b"k" * 32)
    assert event.collected_on.isoformat() == "2026-05-01"
    assert "collected_at" not in event.model_dump()


def test_the_analytics_event_has_no_collection_day_when_none_was_reported() -> None:
    assert deidentified(_facts(None), uuid.uuid4(), b"k" * 32).collected_on is None
