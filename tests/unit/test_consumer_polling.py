"""How often idle consumers ask the broker: fast on the classify path, relaxed off it, resting when nothing
comes (docs/decisions.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.kafka import (
    ASSIGNMENT_CHECK_SECONDS,
    QUIET_AFTER_SECONDS,
    Tempo,
    at_least_once,
    ceiling_ms,
    every_event_from_now,
)
from shared.settings import CommonSettings

SETTINGS = CommonSettings(kafka_fetch_max_wait_ms=5, kafka_background_fetch_max_wait_ms=500,
                          kafka_idle_fetch_max_wait_ms=50)


def test_a_consumer_off_the_classify_path_polls_at_the_relaxed_period_and_sleeps_as_long_when_idle() -> None:
    for options in (at_least_once(SETTINGS, "ledger", background=True),
                    every_event_from_now(SETTINGS, "revocations", background=True)):
        assert options["fetch_max_wait_ms"] == 500 and options["batch_timeout_ms"] == 500
        assert "tempo" not in options  # always relaxed: nothing to pace


def test_a_consumer_on_the_classify_path_keeps_the_short_ceiling_and_its_own_batch_timeout() -> None:
    for options in (at_least_once(SETTINGS, "inference"), every_event_from_now(SETTINGS, "gateway")):
        assert options["fetch_max_wait_ms"] == 5 and "batch_timeout_ms" not in options


def test_a_consumer_on_the_classify_path_rests_at_the_idle_ceiling() -> None:
    for options in (at_least_once(SETTINGS, "inference"), every_event_from_now(SETTINGS, "gateway")):
        tempo = options["tempo"]
        assert (tempo.brisk_ms, tempo.resting_ms) == (5, 50)


def test_a_ceiling_of_its_own_wins_and_rests_at_the_relaxed_period() -> None:
    options = at_least_once(SETTINGS, "bulk", fetch_max_wait_ms=100)
    assert options["fetch_max_wait_ms"] == 100
    assert (options["tempo"].brisk_ms, options["tempo"].resting_ms) == (100, 500)


def test_each_consumer_gets_a_tempo_of_its_own() -> None:
    assert at_least_once(SETTINGS, "a")["tempo"] is not at_least_once(SETTINGS, "b")["tempo"]


def test_the_relaxed_period_cannot_outlast_half_the_assignment_check() -> None:
    """A request on the consumer's connection waits behind the fetch in flight; the rebalance listener's bounded
    check needs about two of them, so a longer period would let it time out and skip its reset."""
    with pytest.raises(ValidationError):
        CommonSettings(kafka_background_fetch_max_wait_ms=int(ASSIGNMENT_CHECK_SECONDS * 1000 / 2) + 1)


def test_the_idle_ceiling_cannot_outlast_half_the_assignment_check() -> None:
    with pytest.raises(ValidationError):
        CommonSettings(kafka_idle_fetch_max_wait_ms=int(ASSIGNMENT_CHECK_SECONDS * 1000 / 2) + 1)


def test_a_tempo_before_its_first_assignment_has_no_ceiling_to_tell() -> None:
    assert Tempo(5, 50).current_ms is None


@given(quiet_for=st.floats(0, QUIET_AFTER_SECONDS, exclude_max=True), brisk=st.integers(1, 1000),
       resting=st.integers(1, 1000))
def test_a_consumer_that_heard_news_lately_polls_briskly(quiet_for: float, brisk: int, resting: int) -> None:
    assert ceiling_ms(quiet_for, brisk_ms=brisk, resting_ms=resting) == brisk


@given(quiet_for=st.floats(QUIET_AFTER_SECONDS, 1e9), brisk=st.integers(1, 1000), resting=st.integers(1, 1000))
def test_a_quiet_consumer_rests_but_never_polls_faster_than_brisk(quiet_for: float, brisk: int,
                                                                  resting: int) -> None:
    assert ceiling_ms(quiet_for, brisk_ms=brisk, resting_ms=resting) == max(brisk, resting)
