"""How a fault's result is counted and judged (devstack.chaos, pure): the verdict must catch every broken promise."""

from __future__ import annotations

import httpx
from hypothesis import given
from hypothesis import strategies as st

from devstack import chaos

IDS = [f"s{i}" for i in range(6)]


def clean() -> chaos.Observed:
    """Six classifies and a batch of four, all recorded and audited once, chain intact, latency unchanged."""
    return chaos.Observed(
        accepted=set(IDS), batch_accepted=4, rows={i: 1 for i in IDS}, batch_rows=[1, 2, 3, 4],
        trails={i: len(chaos.CLASSIFY_EVENTS) for i in IDS}, batch_trails=4, chain_ok=True, recovery_s=2.0,
        p50_before_ms=40.0, p50_after_ms=45.0)


def test_a_fault_that_left_everything_in_place_is_ok() -> None:
    result = chaos.outcome("kill -9 audit", clean())
    assert (result.accepted, result.recorded, result.lost, result.duplicates, result.audited) == (10, 10, 0, 0, 10)
    assert result.ok


def test_an_accepted_screening_never_recorded_is_lost() -> None:
    seen = clean()
    del seen.rows["s3"]
    assert chaos.outcome("f", seen).lost == 1 and not chaos.outcome("f", seen).ok


def test_a_batch_row_recorded_twice_is_a_duplicate() -> None:
    seen = clean()
    seen.batch_rows = [1, 2, 2, 3, 4]
    assert chaos.outcome("f", seen).duplicates == 1


def test_a_missing_batch_row_is_lost() -> None:
    seen = clean()
    seen.batch_rows = [1, 2, 4]
    assert chaos.outcome("f", seen).lost == 1


def test_an_event_twice_in_the_ledger_breaks_the_promise() -> None:
    seen = clean()
    seen.ledger_duplicates = 1
    assert any("duplicate" in p for p in chaos.outcome("f", seen).problems)


def test_a_screening_missing_one_of_its_events_in_the_ledger_is_not_audited() -> None:
    seen = clean()
    seen.trails["s0"] = len(chaos.CLASSIFY_EVENTS) - 1
    result = chaos.outcome("f", seen)
    assert result.audited == result.accepted - 1 and not result.ok


def test_a_chain_that_does_not_verify_breaks_the_promise() -> None:
    seen = clean()
    seen.chain_ok = False
    assert not chaos.outcome("f", seen).ok


def test_a_503_saying_when_to_retry_is_allowed_but_not_one_without() -> None:
    assert chaos.answer_kind(503, httpx.Headers({"retry-after": "2"})) == ("503+retry-after", False)
    assert chaos.answer_kind(503, httpx.Headers()) == ("503 without retry-after", True)


@given(st.integers(500, 599).filter(lambda s: s != 503))
def test_any_other_5xx_breaks_the_promise(status: int) -> None:
    assert chaos.answer_kind(status, httpx.Headers({"retry-after": "1"}))[1]


@given(st.integers(200, 499))
def test_answers_below_500_never_break_it(status: int) -> None:
    assert not chaos.answer_kind(status, httpx.Headers())[1]


@given(before=st.floats(1, 2000), factor=st.floats(0, 10))
def test_latency_after_recovery_is_usual_within_three_times_or_200_ms_more(before: float, factor: float) -> None:
    seen = clean()
    seen.p50_before_ms, seen.p50_after_ms = before, before * factor
    usual = before * factor <= max(3 * before, before + 200)
    assert chaos.outcome("f", seen).latency_usual is usual


def test_no_latency_after_recovery_is_not_usual() -> None:
    seen = clean()
    seen.p50_after_ms = None
    assert not chaos.outcome("f", seen).ok


def test_the_table_has_a_row_per_fault_with_its_verdict() -> None:
    bad = clean()
    bad.rows.pop("s1")
    lines = chaos.table([chaos.outcome("kill -9 gateway", clean()), chaos.outcome("kill -9 auth", bad)]).splitlines()
    assert lines[0].split()[:7] == ["fault", "accepted", "recorded", "duplicates", "lost", "audited", "recovery"]
    assert lines[1].startswith("kill -9 gateway") and lines[1].endswith("ok")
    assert lines[2].startswith("kill -9 auth") and "never recorded" in lines[2]
