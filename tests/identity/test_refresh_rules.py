"""Refresh-token decisions (RFC 9700 §4.14.2): rotate, grace retry, reuse, expiry, idle timeout, revocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from auth.domain import RefreshVerdict, StoredRefresh, judge_refresh, refresh_expiry

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GRACE = timedelta(seconds=5)
moments = st.timedeltas(min_value=timedelta(seconds=-10**6), max_value=timedelta(seconds=10**6))
optional_moments = st.none() | moments


@given(moments, optional_moments, st.booleans())
def test_a_token_of_a_revoked_family_is_refused_whatever_else_holds(used: timedelta, idle: timedelta | None,
                                                                    successor_unused: bool) -> None:
    stored = StoredRefresh(NOW + timedelta(days=1), NOW + used, NOW, NOW + idle if idle else None, successor_unused)
    assert judge_refresh(stored, NOW, grace=GRACE) is RefreshVerdict.REVOKED


@given(st.timedeltas(min_value=timedelta(0), max_value=GRACE - timedelta(microseconds=1)))
def test_the_immediately_previous_token_rotates_again_within_the_grace_window(since_use: timedelta) -> None:
    stored = StoredRefresh(NOW + timedelta(days=1), NOW - since_use, None, successor_unused=True)
    assert judge_refresh(stored, NOW, grace=GRACE) is RefreshVerdict.GRACE


@given(st.timedeltas(min_value=GRACE, max_value=timedelta(days=30)))
def test_after_the_grace_window_a_used_token_is_reuse(since_use: timedelta) -> None:
    stored = StoredRefresh(NOW + timedelta(days=1), NOW - since_use, None, successor_unused=True)
    assert judge_refresh(stored, NOW, grace=GRACE) is RefreshVerdict.REUSED


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)))
def test_a_token_whose_successor_was_used_is_reuse_even_within_the_grace_window(since_use: timedelta) -> None:
    stored = StoredRefresh(NOW + timedelta(days=1), NOW - since_use, None, successor_unused=False)
    assert judge_refresh(stored, NOW, grace=GRACE) is RefreshVerdict.REUSED


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)))
def test_without_a_grace_window_any_second_use_is_reuse(since_use: timedelta) -> None:
    stored = StoredRefresh(NOW + timedelta(days=1), NOW - since_use, None, successor_unused=True)
    assert judge_refresh(stored, NOW) is RefreshVerdict.REUSED


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=60)))
def test_past_the_sessions_absolute_lifetime_nothing_rotates(past: timedelta) -> None:
    stored = StoredRefresh(NOW - past, None, None, idle_expires_at=NOW + timedelta(days=1))
    assert judge_refresh(stored, NOW, grace=GRACE) is RefreshVerdict.EXPIRED


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=60)))
def test_a_token_unused_beyond_the_idle_timeout_is_refused(past: timedelta) -> None:
    stored = StoredRefresh(NOW + timedelta(days=10), None, None, idle_expires_at=NOW - past)
    assert judge_refresh(stored, NOW, grace=GRACE) is RefreshVerdict.IDLE


@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=60)))
def test_an_unused_live_token_rotates(left: timedelta) -> None:
    stored = StoredRefresh(NOW + left + timedelta(days=1), None, None, idle_expires_at=NOW + left)
    assert judge_refresh(stored, NOW, grace=GRACE) is RefreshVerdict.ROTATE


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=60)),
       st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=60)))
def test_a_new_token_never_outlives_its_session(session_left: timedelta, idle: timedelta) -> None:
    session_end = NOW + session_left
    expiry = refresh_expiry(NOW, session_end, idle)
    assert expiry <= session_end and expiry <= NOW + idle
