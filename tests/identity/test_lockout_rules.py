"""Per-account lockout: locked at the threshold-th consecutive failure, the delay doubling with each further
failure up to a ceiling, failures forgotten after a quiet day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from auth.domain import LockoutPolicy, effective_failures, lockout_seconds, retry_after

NOW = datetime(2026, 1, 1, tzinfo=UTC)
policies = st.builds(LockoutPolicy, threshold=st.integers(1, 100), base_seconds=st.floats(0.5, 600),
                     max_seconds=st.floats(1, 86400))


@given(policies, st.integers(0, 99))
def test_no_lockout_below_the_threshold(policy: LockoutPolicy, failures: int) -> None:
    if failures < policy.threshold:
        assert lockout_seconds(failures, policy) == 0


@given(policies, st.integers(0, 500))
def test_the_delay_never_shrinks_as_failures_grow_and_never_exceeds_the_ceiling(policy: LockoutPolicy,
                                                                                failures: int) -> None:
    assert lockout_seconds(failures, policy) <= lockout_seconds(failures + 1, policy)
    assert lockout_seconds(failures, policy) <= max(policy.max_seconds, 0)


def test_the_default_locks_at_the_tenth_failure_for_a_minute_then_doubles() -> None:
    policy = LockoutPolicy()
    assert [lockout_seconds(n, policy) for n in (9, 10, 11, 12, 20)] == [0, 60, 120, 240, 3600]


@given(st.integers(1, 50), st.floats(0, 86399))
def test_recent_failures_count(failures: int, age: float) -> None:
    policy = LockoutPolicy(reset_seconds=86400)
    assert effective_failures(failures, NOW - timedelta(seconds=age), NOW, policy) == failures


@given(st.integers(1, 50), st.floats(86400, 10**7))
def test_failures_older_than_the_reset_period_are_forgotten(failures: int, age: float) -> None:
    policy = LockoutPolicy(reset_seconds=86400)
    assert effective_failures(failures, NOW - timedelta(seconds=age), NOW, policy) == 0


@given(st.floats(0.001, 10**6))
def test_retry_after_is_whole_seconds_rounded_up(remaining: float) -> None:
    seconds = retry_after(NOW + timedelta(seconds=remaining), NOW)
    assert seconds >= 1 and seconds - 1 < max(remaining, 1)


def test_an_ended_lock_asks_for_no_wait() -> None:
    assert retry_after(NOW - timedelta(seconds=1), NOW) == 0 and retry_after(None, NOW) == 0
