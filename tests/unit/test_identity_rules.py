"""Refresh-token rotation decisions (RFC 9700 §4.14.2) and other identity rules without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from auth.domain import RefreshVerdict, StoredRefresh, judge_refresh, refresh_token_hash, username_digest

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(days=1)


def test_an_unused_unexpired_token_rotates() -> None:
    assert judge_refresh(StoredRefresh(LATER, None, None), NOW) is RefreshVerdict.ROTATE


def test_a_used_token_presented_again_is_reuse() -> None:
    assert judge_refresh(StoredRefresh(LATER, NOW, None), NOW) is RefreshVerdict.REUSED


def test_a_revoked_token_stays_revoked_even_if_unused() -> None:
    assert judge_refresh(StoredRefresh(LATER, None, NOW), NOW) is RefreshVerdict.REVOKED


def test_an_expired_token_does_not_rotate() -> None:
    assert judge_refresh(StoredRefresh(NOW, None, None), LATER) is RefreshVerdict.EXPIRED


@given(st.text(min_size=1))
def test_refresh_tokens_are_stored_as_hashes_that_do_not_contain_them(token: str) -> None:
    assert token not in refresh_token_hash(token) or len(token) < 3


def test_failed_login_usernames_are_digested_case_insensitively() -> None:
    assert username_digest("Lab_Demo ", b"k" * 32) == username_digest("lab_demo", b"k" * 32)
    assert "lab_demo" not in username_digest("lab_demo", b"k" * 32)
