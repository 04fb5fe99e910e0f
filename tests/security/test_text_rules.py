"""Pure rules behind the security fixes (issue 13): one username normal form, the text type, the JSON depth
check, the client address behind proxies, accent-folded password checks, TOTP codes in other scripts."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from auth.domain import TotpVerdict, check_totp, common_passwords, password_problems, username_digest
from gateway.middleware import client_address, trusted_networks
from shared.text import MultilineText, Text, username_key
from shared.web import MAX_JSON_DEPTH, json_too_deep

KEY = b"k" * 32
CONTROL = st.characters(categories=["Cc", "Cs"])
PRINTABLE = st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=30)


def spellings(name: str) -> st.SearchStrategy[str]:
    """Ways of typing ``name`` that mean the same account: any case per letter, fullwidth forms (NFKC folds
    them), surrounding spaces."""
    def variant(ch: str) -> st.SearchStrategy[str]:
        options = {ch, ch.upper(), ch.lower()}
        if "!" <= ch <= "~":
            options.add(chr(ord(ch) + 0xFEE0))  # FULLWIDTH form
        return st.sampled_from(sorted(options))

    return st.tuples(*(variant(ch) for ch in name), st.sampled_from(["", " "])).map(
        lambda parts: parts[-1] + "".join(parts[:-1]) + parts[-1])


@given(st.from_regex(r"[A-Za-z0-9_.@-]{3,20}", fullmatch=True).flatmap(
    lambda name: st.tuples(st.just(name), spellings(name))))
def test_every_spelling_of_an_account_name_has_the_accounts_lockout_key(pair: tuple[str, str]) -> None:
    name, typed = pair
    assert username_key(typed) == username_key(name)
    assert username_digest(typed, KEY) == username_digest(name, KEY)


@given(st.text(max_size=20), st.text(max_size=20))
@example("admin", "admİn")
@example("kelvin", "\u212aelvin")  # KELVIN SIGN
@example("straße", "STRASSE")
def test_the_lockout_key_and_the_lookup_key_agree_on_every_pair_of_names(a: str, b: str) -> None:
    """The user lookup compares ``username_key``; the lockout counts ``username_digest``: same account,
    same counter, for any two typed names whatsoever (the İ bypass was the two disagreeing)."""
    assert (username_key(a) == username_key(b)) == (username_digest(a, KEY) == username_digest(b, KEY))


def test_the_dotted_capital_i_does_not_reach_the_account_of_a_plain_i() -> None:
    assert username_key("admİn") != username_key("admin")


@given(st.text(max_size=20))
def test_the_normal_form_is_stable(name: str) -> None:
    assert username_key(username_key(name)) == username_key(name)


class _Body(BaseModel):
    line: Text
    block: MultilineText = ""


@given(PRINTABLE, CONTROL, PRINTABLE)
def test_no_single_line_text_field_accepts_a_control_character(before: str, control: str, after: str) -> None:
    with pytest.raises(ValidationError) as refused:
        _Body(line=before + control + after)
    assert refused.value.errors()[0]["type"] == "control_character"


@given(PRINTABLE, CONTROL.filter(lambda c: c not in "\n\r\t"), PRINTABLE)
def test_multiline_text_accepts_line_breaks_but_no_other_control_character(before: str, control: str,
                                                                            after: str) -> None:
    assert _Body(line="x", block=f"{before}\n\t{after}").block == f"{before}\n\t{after}"
    with pytest.raises(ValidationError):
        _Body(line="x", block=before + control + after)


@given(PRINTABLE)
def test_text_without_control_characters_is_accepted_unchanged(text: str) -> None:
    assert _Body(line=text).line == text


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k'), inner, max_size=3),
    max_leaves=60,
)


def _nest(value: Any, levels: int) -> Any:
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@given(JSON_VALUES, st.integers(0, 2 * MAX_JSON_DEPTH))
def test_the_depth_check_agrees_with_the_actual_depth_of_any_json(value: Any, extra: int) -> None:
    nested = _nest(value, extra)
    assert json_too_deep(json.dumps(nested).encode()) == (_depth(nested) > MAX_JSON_DEPTH)


def test_brackets_that_never_close_are_refused_before_the_parser_recurses() -> None:
    assert json_too_deep(b"[" * 100_000)
    assert json_too_deep(b'{"a":' * 50_000)


@pytest.mark.parametrize(("peer", "header", "trusted", "client"), [
    ("203.0.113.9", "1.2.3.4", "", "203.0.113.9"),  # no proxy configured: the header is ignored
    ("127.0.0.1", "1.2.3.4", "", "127.0.0.1"),  # not even from localhost
    ("10.0.0.2", "1.2.3.4", "10.0.0.0/8", "1.2.3.4"),  # our proxy names the client
    ("10.0.0.2", "6.6.6.6, 1.2.3.4", "10.0.0.0/8", "1.2.3.4"),  # the client's own entry is ignored
    ("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.7", "10.0.0.0/8", "1.2.3.4"),  # two proxies of ours
    ("10.0.0.2", "not-an-address", "10.0.0.0/8", "10.0.0.2"),
    ("198.51.100.1", "1.2.3.4", "10.0.0.0/8", "198.51.100.1"),  # a stranger's header is ignored
])
def test_the_client_address_is_taken_from_trusted_proxies_only(peer: str, header: str, trusted: str,
                                                                client: str) -> None:
    assert client_address(peer, header, trusted_networks(trusted)) == client


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=5))
def test_without_trusted_proxies_no_header_changes_the_client_address(hops: list[str]) -> None:
    assert client_address("192.0.2.1", ", ".join(hops), ()) == "192.0.2.1"


def test_one_accent_does_not_get_a_common_password_past_the_policy() -> None:
    assert password_problems("Pàssword1234") == ["appears in a list of common or breached passwords"]


_ACCENTS = ["\u0300", "\u0301", "\u0302", "\u0308", "\u0327"]
_LONG_COMMON = sorted(p for p in common_passwords() if len(p) >= 12 and p.isascii() and p.isalpha())[:300]


@given(st.sampled_from(_LONG_COMMON), st.lists(st.tuples(st.integers(0, 11), st.sampled_from(_ACCENTS)),
                                                 min_size=1, max_size=3))
def test_accented_variants_of_common_passwords_are_refused(password: str, marks: list[tuple[int, str]]) -> None:
    chars = list(password)
    for index, mark in marks:
        chars[index] += mark
    accented = unicodedata.normalize("NFC", "".join(chars))
    assert password_problems(accented) == ["appears in a list of common or breached passwords"]


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "１２３４５６", "12345\u0663", "\U0001d7ce" * 6])
def test_totp_codes_in_other_digit_scripts_are_invalid_not_an_error(code: str) -> None:
    assert check_totp("JBSWY3DPEHPK3PXP", code, 1_700_000_000.0, None).verdict is TotpVerdict.INVALID
