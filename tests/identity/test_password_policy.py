"""The password policy (NIST SP 800-63B §5.1.1.2, ASVS V2.1): length, any characters, no composition rules,
refusal of common, breached and guessable passwords. Pure rules, tested directly and with hypothesis."""

from __future__ import annotations

import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from auth.domain import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    common_passwords,
    normalise_password,
    password_problems,
    temporary_password,
)

LONG_COMMON = sorted(p for p in common_passwords() if MIN_PASSWORD_LENGTH <= len(p) <= MAX_PASSWORD_LENGTH)


@given(st.text(max_size=MIN_PASSWORD_LENGTH - 1).filter(lambda p: len(normalise_password(p)) < MIN_PASSWORD_LENGTH))
def test_fewer_than_twelve_characters_are_refused(password: str) -> None:
    assert password_problems(password) == [f"must be at least {MIN_PASSWORD_LENGTH} characters long"]


@settings(max_examples=25)
@given(st.text(min_size=MAX_PASSWORD_LENGTH + 1, max_size=MAX_PASSWORD_LENGTH + 50)
       .filter(lambda p: len(normalise_password(p)) > MAX_PASSWORD_LENGTH))
def test_more_than_128_characters_are_refused(password: str) -> None:
    assert password_problems(password) == [f"must be at most {MAX_PASSWORD_LENGTH} characters long"]


@given(st.sampled_from(LONG_COMMON), st.sampled_from([str.lower, str.upper, str.title]))
def test_common_and_breached_passwords_are_refused_whatever_their_case(password: str, case: object) -> None:
    assert password_problems(case(password)) == ["appears in a list of common or breached passwords"]  # type: ignore[operator]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([string.ascii_lowercase, string.digits, string.ascii_uppercase, "абвгдежзийклмнопрст",
                        "日本語の文字列をつかう", string.punctuation + " "]),
       st.integers(min_value=MIN_PASSWORD_LENGTH + 8, max_value=40), st.randoms(use_true_random=True))
def test_no_composition_rules_a_random_password_of_one_kind_of_character_is_accepted(
    alphabet: str, length: int, rng: random.Random
) -> None:
    password = "".join(rng.choice(alphabet) for _ in range(length))  # truly random: a real user's generator
    assert password_problems(password) == []


def test_spaces_and_any_unicode_are_allowed_in_a_passphrase() -> None:
    assert password_problems("correct horse battery staple") == []
    assert password_problems("Grüße aus Köln, 🌧️ und Wind!") == []


@settings(deadline=None)  # zxcvbn on a loaded machine: an example once took 0.5 s instead of 0.03 s
@given(st.text(alphabet=string.ascii_letters, min_size=1, max_size=3), st.integers(min_value=4, max_value=20))
def test_repeats_are_refused_as_easy_to_guess(unit: str, times: int) -> None:
    password = (unit * (MIN_PASSWORD_LENGTH // len(unit) + times))[:MAX_PASSWORD_LENGTH]
    problems = password_problems(password)
    assert problems and problems != [f"must be at least {MIN_PASSWORD_LENGTH} characters long"]


def test_a_password_built_on_the_username_is_refused() -> None:
    assert password_problems("lab_tech_anna-2024", context=["lab_tech_anna"]) == [
        "must not contain your username or the platform's name"]
    assert password_problems("my-clinomic-password!", context=["clinomic"])


def test_the_shipped_demo_password_would_be_refused() -> None:
    assert password_problems("Demo@2024")


@given(st.text(min_size=1, max_size=60))
def test_refusals_never_echo_the_password(password: str) -> None:
    for problem in password_problems(password):
        assert password not in problem or len(password) < 4


def test_length_counts_code_points_after_normalisation() -> None:
    composed, decomposed = "é" * 12, "e\u0301" * 12  # the same text, 12 or 24 code points before NFKC
    assert normalise_password(composed) == normalise_password(decomposed)
    assert len(normalise_password(decomposed)) == 12


def test_temporary_passwords_of_an_admin_reset_satisfy_the_policy() -> None:
    assert all(password_problems(temporary_password()) == [] for _ in range(50))
