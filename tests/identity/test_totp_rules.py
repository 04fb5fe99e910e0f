"""TOTP per RFC 6238 (30 s steps, ±1 step) with replay refusal (ASVS 2.8.4), and backup codes."""

from __future__ import annotations

import math
import re

import pyotp
from hypothesis import given
from hypothesis import strategies as st

from auth.domain import (
    BACKUP_CODE_COUNT,
    TotpVerdict,
    backup_code_digest,
    check_totp,
    matching_backup_code,
    new_backup_codes,
    new_totp_secret,
    totp_code,
    totp_step,
)

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
times = st.floats(min_value=1.6e9, max_value=2.2e9, allow_nan=False)
offsets = st.integers(min_value=-1, max_value=1)


def test_codes_are_those_of_rfc_6238_as_computed_by_pyotp() -> None:
    assert totp_code(SECRET, totp_step(1_700_000_000)) == pyotp.TOTP(SECRET).at(1_700_000_000)


@given(times, offsets)
def test_a_code_of_the_current_step_or_one_either_side_is_accepted(now: float, offset: int) -> None:
    step = totp_step(now) + offset
    check = check_totp(SECRET, totp_code(SECRET, step), now, last_step=None)
    assert check.verdict is TotpVerdict.ACCEPTED and check.step is not None and check.step >= step
    assert totp_code(SECRET, check.step) == totp_code(SECRET, step)


@given(times, st.integers(min_value=2, max_value=10_000), st.booleans())
def test_a_code_outside_the_window_is_never_accepted_for_its_own_step(now: float, distance: int,
                                                                      later: bool) -> None:
    step = totp_step(now) + (distance if later else -distance)
    check = check_totp(SECRET, totp_code(SECRET, step), now, last_step=None)
    # A code of another step is accepted only if it happens to equal a code inside the window.
    if check.verdict is TotpVerdict.ACCEPTED:
        assert check.step is not None and abs(check.step - totp_step(now)) <= 1
        assert totp_code(SECRET, check.step) == totp_code(SECRET, step)


@given(times, offsets)
def test_an_accepted_code_is_refused_as_a_replay(now: float, offset: int) -> None:
    code = totp_code(SECRET, totp_step(now) + offset)
    first = check_totp(SECRET, code, now, last_step=None)
    again = check_totp(SECRET, code, now, last_step=first.step)
    assert again.verdict is TotpVerdict.REPLAYED


@given(times, offsets, offsets)
def test_no_code_of_a_step_up_to_the_last_accepted_one_is_accepted(now: float, accepted: int,
                                                                   presented: int) -> None:
    current = totp_step(now)
    last = current + accepted
    check = check_totp(SECRET, totp_code(SECRET, current + presented), now, last_step=last)
    if current + presented <= last:
        assert check.verdict is not TotpVerdict.ACCEPTED or (check.step is not None and check.step > last)
    else:
        assert check.verdict is TotpVerdict.ACCEPTED


@given(times, st.text(max_size=12))
def test_anything_that_is_not_six_digits_is_invalid(now: float, code: str) -> None:
    if not re.fullmatch(r"\s*\d{6}\s*", code):
        assert check_totp(SECRET, code, now, None).verdict is TotpVerdict.INVALID


def test_secrets_are_160_random_bits_in_base32() -> None:
    secret = new_totp_secret()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret) and secret != new_totp_secret()


def test_ten_distinct_backup_codes_of_at_least_112_bits() -> None:
    codes = new_backup_codes()
    assert len(set(codes)) == BACKUP_CODE_COUNT
    alphabet = {ch for code in codes for ch in code.replace("-", "")}
    assert len(codes[0].replace("-", "")) * math.log2(31) >= 112 and alphabet <= set("abcdefghjkmnpqrstuvwxyz23456789")


@given(st.binary(min_size=16, max_size=16))
def test_a_backup_code_matches_its_salted_digest_however_it_is_typed(salt: bytes) -> None:
    code = new_backup_codes(1)[0]
    stored = [("mine", salt, backup_code_digest(code, salt)), ("other", salt, backup_code_digest("x" * 24, salt))]
    assert matching_backup_code(code.upper().replace("-", " "), stored) == "mine"
    assert matching_backup_code(new_backup_codes(1)[0], stored) is None


def test_the_same_backup_code_under_two_salts_has_two_digests() -> None:
    code = new_backup_codes(1)[0]
    assert backup_code_digest(code, b"a" * 16) != backup_code_digest(code, b"b" * 16)
