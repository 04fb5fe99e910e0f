"""Canonical JSON: stable bytes for the same value, RFC 8785 style."""

from __future__ import annotations

import hmac
import json
import math
import random
import uuid

import pytest
from audit.ledger import _actor_bytes, _FastHmac, canonical_json
from hypothesis import given, settings
from hypothesis import strategies as st

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8), st.randoms(use_true_random=False))
def test_canonical_json_is_stable_across_key_order(mapping: dict, rnd: random.Random) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(mapping)


def test_canonical_json_sorts_keys_and_has_no_whitespace() -> None:
    assert (
        canonical_json({"b": [1, 2], "a": {"d": None, "c": True}}) == b'{"a":{"c":true,"d":null},"b":[1,2]}'
    )


def test_canonical_json_sorts_keys_by_utf16_code_units() -> None:
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FB01 although its code point is larger.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'.encode()


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (-1.5e-9, "-1.5e-9"),
        (333333333.3333333, "333333333.3333333"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992.0, "9007199254740992"),
        (0.1, "0.1"),
        (123.456, "123.456"),
    ],
)
def test_canonical_json_formats_numbers_like_ecmascript(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_nan_and_infinity(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": bad})


def test_canonical_json_escapes_only_quotes_backslash_and_control_characters() -> None:
    value = 'q"b\\n\n t\t c\x01 del\x7f sep\u2028 e\u00e9 /'
    assert canonical_json(value) == '"q\\"b\\\\n\\n t\\t c\\u0001 del\x7f sep\u2028 e\u00e9 /"'.encode()


def test_canonical_json_is_utf8() -> None:
    assert canonical_json("B\u2081\u2082") == '"B\u2081\u2082"'.encode("utf-8")


def test_canonical_json_refuses_lone_surrogates() -> None:
    with pytest.raises(ValueError):
        canonical_json("\ud800")


def test_canonical_json_refuses_non_json_types() -> None:
    with pytest.raises(TypeError):
        canonical_json({"id": uuid.UUID(int=1)})
    with pytest.raises(TypeError):
        canonical_json({1: "non-string key"})


def test_canonical_json_writes_big_integers_exactly() -> None:
    assert canonical_json(2**64 + 1) == b"18446744073709551617"


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_canonical_json_is_a_fixed_point_of_parsing(value: object) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.none() | st.text(max_size=20), max_size=6))
def test_actor_fast_path_matches_canonical_json(actor: dict) -> None:
    assert _actor_bytes(actor) == canonical_json(actor)
    assert _actor_bytes(dict(reversed(list(actor.items())))) == canonical_json(actor)


def test_actor_fast_path_does_not_confuse_equal_values_of_other_types() -> None:
    assert _actor_bytes({"level": 1}) == b'{"level":1}'
    assert _actor_bytes({"level": True}) == b'{"level":true}'
    assert _actor_bytes({"level": 1.0}) == b'{"level":1}'


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=64, max_size=64))
def test_precomputed_pad_hmac_equals_stdlib_hmac(key: bytes, message: bytes) -> None:
    assert _FastHmac(key).digest(message) == hmac.digest(key, message, "sha256")


def _reference(value: object) -> bytes:
    from audit.ledger import _emit

    out: list[str] = []
    _emit(value, out)
    return "".join(out).encode("utf-8")


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_the_fast_path_writes_the_same_bytes_as_the_reference_emitter(value: object) -> None:
    try:
        expected = _reference(value)
    except (ValueError, UnicodeEncodeError):
        with pytest.raises(ValueError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


@pytest.mark.parametrize("number", [1e-4, 0.00012345, 1.5, 123.456, 9999999999999998.0, 1e15 + 0.5, 1e16, 1e-5,
                                    -2.5e-3, 5e-324, 1.7976931348623157e308, -0.0, 12.0, 2.0**53])
def test_floats_at_the_fast_paths_edges_are_written_as_the_reference_does(number: float) -> None:
    assert canonical_json({"x": [number, -number]}) == _reference({"x": [number, -number]})
