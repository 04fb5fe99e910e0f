"""The benchmarks' arithmetic: percentiles, ratios, the open-loop send schedule and the verdicts on the aims.

Pure, so that tests check the figures' definitions directly; the benchmarks (``bench``, ``soak``,
``bench-batch``) only measure and print what these functions compute. A verdict is always computed from a
measured figure, never written down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: A float product such as 0.07 * 100 may land a hair above the integer it means; ranks are rounded first.
_RANK_TOLERANCE = 1e-9


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile: the smallest value with at least a fraction ``q`` of ``values`` at or
    below it (None when there are none). No interpolation, so it is always a latency that was observed."""
    if not values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile lies in [0, 1], not {q}")
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - _RANK_TOLERANCE)
    return ordered[min(len(ordered) - 1, max(0, rank - 1))]


def latency_summary(latencies_ms: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 and the mean, in milliseconds rounded to 0.01 (None for an empty run)."""
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {"p50_ms": rounded(percentile(latencies_ms, 0.50)),
            "p95_ms": rounded(percentile(latencies_ms, 0.95)),
            "p99_ms": rounded(percentile(latencies_ms, 0.99)),
            "mean_ms": rounded(sum(latencies_ms) / len(latencies_ms)) if latencies_ms else None}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, None when either was not measured or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def send_offsets(rate: float, seconds: float) -> list[float]:
    """When each request of an open-loop run is due, in seconds from its start: ``rate`` per second, evenly
    spaced, every one before ``seconds``. Latency is measured from these times, not from when a request
    actually left, so a stalled sender cannot hide the queueing it caused (coordinated omission)."""
    if rate <= 0 or seconds <= 0:
        return []
    count = math.ceil(rate * seconds - _RANK_TOLERANCE)
    return [i / rate for i in range(count)]


@dataclass(frozen=True)
class Aim:
    """A bound a figure should respect: ``figure`` at least (or at most) ``bound``; not measured when None."""

    name: str
    figure: float | None
    bound: float
    kind: Literal["at least", "at most"]
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.figure is None or math.isnan(self.figure):
            return None
        return self.figure >= self.bound if self.kind == "at least" else self.figure <= self.bound

    @property
    def verdict(self) -> str:
        return {True: "met", False: "not met", None: "not measured"}[self.met]

    def line(self) -> str:
        shown = "—" if self.figure is None else f"{self.figure:,.{_decimals(self.figure)}f}{self.unit}"
        sign = "≥" if self.kind == "at least" else "≤"
        return f"{self.name}: {shown} (aim {sign} {self.bound:g}{self.unit}): {self.verdict}"


def _decimals(value: float) -> int:
    if isinstance(value, int) or abs(value) >= 100:
        return 0
    return 2 if abs(value) < 10 else 1
