"""The benchmarks' figures without a platform: percentiles, ratios, the open-loop schedule and sender, and the
verdicts on issue 17's aims, computed from what was measured."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack import batch, bench
from devstack.figures import Aim, latency_summary, percentile, ratio, send_offsets

latencies = st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=300)
quantiles = st.floats(min_value=0.0, max_value=1.0)


@given(latencies, quantiles)
def test_a_percentile_is_an_observed_value_with_at_least_that_share_at_or_below_it(values: list[float],
                                                                                    q: float) -> None:
    found = percentile(values, q)
    assert found in values
    assert sum(v <= found for v in values) >= q * len(values) - 1e-9


@given(latencies, quantiles)
def test_a_percentile_is_the_smallest_such_value(values: list[float], q: float) -> None:
    found = percentile(values, q)
    assert sum(v < found for v in values) < max(q * len(values), 1)


@given(latencies, quantiles, quantiles)
def test_percentiles_do_not_decrease_with_the_quantile(values: list[float], a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert percentile(values, low) <= percentile(values, high)  # type: ignore[operator]


def test_the_99th_percentile_of_a_hundred_values_is_the_99th_not_the_largest() -> None:
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)


def test_no_values_have_no_percentile_and_a_quantile_outside_0_1_is_refused() -> None:
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_the_latency_summary_of_an_empty_run_is_empty_and_of_a_run_its_percentiles_and_mean() -> None:
    assert set(latency_summary([]).values()) == {None}
    assert latency_summary([1.0, 2.0, 3.0, 10.0]) == {"p50_ms": 2.0, "p95_ms": 10.0, "p99_ms": 10.0,
                                                      "mean_ms": 4.0}


@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=1e-3, max_value=1e6))
def test_a_ratio_of_measured_figures_multiplies_back(numerator: float, denominator: float) -> None:
    assert math.isclose(ratio(numerator, denominator) * denominator, numerator, rel_tol=1e-9,  # type: ignore[operator]
                        abs_tol=1e-12)


def test_a_ratio_is_not_measured_without_both_figures_or_with_nothing_to_divide_by() -> None:
    assert ratio(None, 2.0) is None and ratio(2.0, None) is None and ratio(2.0, 0.0) is None


@given(st.floats(min_value=0.5, max_value=500.0), st.floats(min_value=0.01, max_value=60.0))
def test_the_open_loop_schedule_is_evenly_spaced_at_the_rate_and_within_the_run(rate: float,
                                                                                seconds: float) -> None:
    offsets = send_offsets(rate, seconds)
    assert offsets[0] == 0.0 and offsets[-1] < seconds
    assert all(math.isclose(b - a, 1.0 / rate) for a, b in zip(offsets, offsets[1:], strict=False))
    assert len(offsets) == math.ceil(round(rate * seconds, 9))


def test_fifty_a_second_for_twenty_seconds_is_a_thousand_requests() -> None:
    assert len(send_offsets(50, 20)) == 1000
    assert send_offsets(0, 20) == [] and send_offsets(50, 0) == []


@pytest.mark.parametrize(("figure", "kind", "verdict"), [
    (0.59, "at least", "not met"), (0.6, "at least", "met"), (0.7, "at least", "met"),
    (20.1, "at most", "not met"), (20.0, "at most", "met"), (None, "at most", "not measured"),
    (float("nan"), "at least", "not measured"),
])
def test_an_aim_is_judged_on_its_figure(figure: float | None, kind: str, verdict: str) -> None:
    bound = 0.6 if kind == "at least" else 20.0
    aim = Aim("x", figure, bound, kind, " ms")  # type: ignore[arg-type]
    assert aim.verdict == verdict and aim.line().endswith(f": {verdict}")


def run(throughput: float, latencies_ms: list[float] | None = None, *, rate: float | None = None,
        shed: int = 0, outcomes: Counter[str] | None = None) -> bench.Run:
    lat = latencies_ms if latencies_ms is not None else [10.0] * int(throughput * 10)
    return bench.Run("r", len(lat) / throughput, lat, outcomes or Counter({"200": len(lat)}), rate, shed)


def test_classify_aims_are_judged_on_the_measured_saturation_latency_and_idle_figures() -> None:
    open_run = run(50, [5.0] * 98 + [45.0, 60.0], rate=50)
    aims = {a.name: a for a in bench.classify_aims(idle_total=0.35, saturation=run(140), baseline=run(200),
                                                   open_run=open_run)}
    assert math.isclose(aims["classify saturation / in-process baseline"].figure, 0.7)  # type: ignore[arg-type]
    assert [a.verdict for a in aims.values()] == ["met", "met", "met", "met", "not met"]
    assert aims["open loop 50/s p99"].figure == 45.0


def test_a_shed_or_failed_open_loop_request_fails_its_aim_and_an_unmeasured_idle_is_not_measured() -> None:
    outcomes = Counter({"200": 99, "ServerDisconnectedError": 1})
    open_run = run(50, [5.0] * 100, rate=50, shed=1, outcomes=outcomes)
    aims = {a.name: a for a in bench.classify_aims(idle_total=None, saturation=run(100), baseline=run(200),
                                                   open_run=open_run)}
    assert aims["open loop 50/s requests shed or failed"].figure == 2
    assert aims["open loop 50/s requests shed or failed"].verdict == "not met"
    assert aims["idle platform, all processes"].verdict == "not measured"


async def test_the_open_loop_sends_on_schedule_without_waiting_for_answers_and_sheds_beyond_its_cap() -> None:
    started: list[float] = []
    release = asyncio.Event()

    async def never_answers_until_released(due: float) -> None:
        started.append(due)
        await release.wait()

    in_flight: set[asyncio.Task[None]] = set()
    begin = time.perf_counter()
    sent, shed = await bench.open_loop(100, 0.2, never_answers_until_released, in_flight=in_flight, cap=15)
    assert time.perf_counter() - begin >= 0.2
    assert (sent, shed) == (15, 5) and len(in_flight) == 15
    assert all(math.isclose(b - a, 0.01, abs_tol=1e-9) for a, b in zip(started, started[1:], strict=False))
    release.set()
    await asyncio.wait(in_flight)


def bulk_figures(**changes: object) -> dict[str, object]:
    return {"rows": 100_000, "accepted": 100_000, "rejected": 0, "chunks": 400, "upload_to_202_s": 12.0,
            "server": {"receive_seconds": 0.1, "validation_seconds": 4.0, "admission_seconds": 5.0,
                       "accept_seconds": 4.0, "publish_seconds": 0.5},
            "upload_to_recorded_s": 20.0, "rows_per_s_upload_to_recorded": 5_000, "audited_after_s": 21.0,
            "cpu_seconds_upload_to_recorded": {"screening": 10.0}, "validation_rows_per_s_in_process": 40_000,
            "model_rows_per_s_1_thread": 8_000, "model_rows_per_s_2_threads": 10_000} | changes


def test_bulk_aims_are_judged_against_the_better_model_limit_of_the_same_run() -> None:
    assert [a.verdict for a in batch.bulk_aims(bulk_figures())] == ["met", "met", "met"]
    slow = batch.bulk_aims(bulk_figures(rows_per_s_upload_to_recorded=800, upload_to_recorded_s=125.0,
                                        audited_after_s=140.0))
    assert [a.verdict for a in slow] == ["not met", "not met", "not met"]
    assert math.isclose(slow[1].figure, 0.08)  # type: ignore[arg-type]


def test_the_bulk_report_prints_recorded_and_audited_rates_their_ratio_to_the_limit_and_verdicts() -> None:
    printed = batch.report(bulk_figures())
    assert "upload → audited: every chunk's entry in the ledger after 21.0 s = 4,762 rows/s" in printed
    assert "limit 10,000 rows/s" in printed and "upload → recorded 0.50, upload → audited 0.48" in printed
    assert "time upload → audited / upload → recorded: 1.05× (aim ≤ 1.1×): met" in printed


def test_a_bulk_run_without_a_database_leaves_the_ledger_aim_not_measured() -> None:
    printed = batch.report(bulk_figures(audited_after_s=None))
    assert "upload → audited: not measured" in printed and printed.endswith("not measured")


def test_an_aim_line_shows_a_count_as_a_whole_number_and_a_ratio_with_its_decimals() -> None:
    assert Aim("shed or failed", 3, 0, "at most").line() == "shed or failed: 3 (aim ≤ 0): not met"
    assert Aim("ratio", 0.456, 0.6, "at least", "×").line() == "ratio: 0.46× (aim ≥ 0.6×): not met"
