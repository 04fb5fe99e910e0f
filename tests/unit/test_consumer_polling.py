"""How often idle consumers ask the broker: fast on the classify path, relaxed off it (docs/decisions.md)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.kafka import ASSIGNMENT_CHECK_SECONDS, at_least_once, every_event_from_now
from shared.settings import CommonSettings

SETTINGS = CommonSettings(kafka_fetch_max_wait_ms=5, kafka_background_fetch_max_wait_ms=500)


def test_a_consumer_off_the_classify_path_polls_at_the_relaxed_period_and_sleeps_as_long_when_idle() -> None:
    for options in (at_least_once(SETTINGS, "ledger", background=True),
                    every_event_from_now(SETTINGS, "revocations", background=True)):
        assert options["fetch_max_wait_ms"] == 500 and options["batch_timeout_ms"] == 500


def test_a_consumer_on_the_classify_path_keeps_the_short_ceiling_and_its_own_batch_timeout() -> None:
    for options in (at_least_once(SETTINGS, "inference"), every_event_from_now(SETTINGS, "gateway")):
        assert options["fetch_max_wait_ms"] == 5 and "batch_timeout_ms" not in options


def test_a_ceiling_of_its_own_wins_over_the_relaxed_one() -> None:
    assert at_least_once(SETTINGS, "bulk", fetch_max_wait_ms=100, background=True)["fetch_max_wait_ms"] == 100


def test_the_relaxed_period_cannot_outlast_half_the_assignment_check() -> None:
    """A request on the consumer's connection waits behind the fetch in flight; the rebalance listener's bounded
    check needs about two of them, so a longer period would let it time out and skip its reset."""
    with pytest.raises(ValidationError):
        CommonSettings(kafka_background_fetch_max_wait_ms=int(ASSIGNMENT_CHECK_SECONDS * 1000 / 2) + 1)
