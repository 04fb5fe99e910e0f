"""Soak: classify at a fixed open-loop rate for a bounded time and watch what drifts.

Open loop means requests are sent on a schedule (``rate`` per second) whether or not earlier ones have
answered, so latency is measured at a chosen load rather than restating throughput (as closed-loop clients
do by Little's law); each latency runs from when the request was due (``devstack.bench.open_loop``). Each
window reports requests, answers by status, latency percentiles, every service's resident memory and the
gateway's intake backlog (accepted, not yet recorded). Nothing is asserted here: the figures are printed, and
the aims (no errors, memory growth under 10 %) are stated beside them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from sqlalchemy import text

from devstack import stack
from devstack.bench import (
    BENCH_PATIENT_NAME,
    IN_FLIGHT_SECONDS,
    cbc_variant,
    consented_patients,
    lab_login,
    open_loop,
)
from devstack.figures import percentile
from shared.db import create_engine

RSS_GROWTH_AIM = 0.10
KEEPALIVE_SECONDS = 3.0


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a live process (Linux ``/proc``), None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Window:
    index: int
    sent: int = 0
    shed: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    rss: dict[str, int | None] = field(default_factory=dict)
    backlog: int | None = None

    @property
    def errors(self) -> int:
        """Answers that are neither the recorded screening (200) nor accepted-and-pending (202)."""
        return sum(n for status, n in self.answers.items() if status not in ("200", "202"))

    def row(self) -> dict[str, object]:
        return {"window": self.index, "sent": self.sent, "shed": self.shed, "answers": dict(self.answers),
                "errors": self.errors, "p50_ms": _round(percentile(self.latencies_ms, 0.5)),
                "p95_ms": _round(percentile(self.latencies_ms, 0.95)),
                "p99_ms": _round(percentile(self.latencies_ms, 0.99)),
                "rss_mib": {k: None if v is None else round(v / 2**20, 1) for k, v in self.rss.items()},
                "intake_backlog": self.backlog}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class Report:
    rate: float
    window_seconds: float
    windows: list[Window]
    final_backlog: int | None
    drain_seconds: float

    def summary(self) -> dict[str, object]:
        first, last = self.windows[0], self.windows[-1]
        growth = {}
        for name, start in first.rss.items():
            end = last.rss.get(name)
            growth[name] = None if not start or end is None else round(end / start - 1.0, 4)
        p50_first, p50_last = percentile(first.latencies_ms, 0.5), percentile(last.latencies_ms, 0.5)
        errors = sum(w.errors for w in self.windows)
        return {
            "rate_per_s": self.rate, "windows": len(self.windows), "window_s": self.window_seconds,
            "sent": sum(w.sent for w in self.windows), "shed": sum(w.shed for w in self.windows),
            "answers": dict(sum((w.answers for w in self.windows), Counter())), "errors": errors,
            "p50_drift": None if not p50_first or p50_last is None else round(p50_last / p50_first - 1.0, 3),
            "rss_growth_first_to_last_window": growth,
            "final_intake_backlog": self.final_backlog, "drain_s": round(self.drain_seconds, 1),
            "aims": {"no_errors": errors == 0,
                     "rss_growth_below_10_percent": all(g is not None and g < RSS_GROWTH_AIM for g in growth.values())},
        }


async def _backlog(engine) -> int | None:  # type: ignore[no-untyped-def]
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text(
                "SELECT count(*) FROM gateway.screening_intake WHERE recorded_at IS NULL")))
    except Exception:  # noqa: BLE001 - a soak reports an unreadable backlog, it does not stop for it
        return None


async def soak(gateway_url: str, database_url: str, *, rate: float, seconds: float, window: float,
               pids: dict[str, int], patients: int = 200, drain_timeout: float = 120.0,
               echo=print) -> Report:  # type: ignore[no-untyped-def]
    """Run the soak against a running platform; ``pids`` name the service processes whose memory is read."""
    engine = create_engine(database_url, application_name="clinomic-soak", pool_size=1)
    cap = max(1, int(rate * IN_FLIGHT_SECONDS))
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends, so a request is never sent on a
    # connection the server is closing (a client-side race that would show as a disconnect, not a server error).
    connector = aiohttp.TCPConnector(limit=cap, keepalive_timeout=KEEPALIVE_SECONDS)
    windows: list[Window] = []
    try:
        async with aiohttp.ClientSession(gateway_url, connector=connector) as http:
            headers = await lab_login(http)
            pool = await consented_patients(http, headers, patients)
            rng = random.Random(20240617)
            in_flight: set[asyncio.Task[None]] = set()

            async def one(into: Window, due: float) -> None:
                external_id, sex = rng.choice(pool)
                body = {"patient": {"external_id": external_id, "name": BENCH_PATIENT_NAME},
                        "cbc": cbc_variant(rng) | {"sex": sex}}
                try:
                    async with http.post("/api/screening/classify", json=body, headers=headers) as response:
                        await response.read()
                        into.answers[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as problem:
                    into.answers[type(problem).__name__] += 1
                into.latencies_ms.append((time.perf_counter() - due) * 1000)

            for index in range(max(1, round(seconds / window))):
                current = Window(index + 1)
                windows.append(current)
                current.sent, current.shed = await open_loop(
                    rate, window, lambda due, into=current: one(into, due), in_flight=in_flight, cap=cap)
                current.rss = {name: rss_bytes(pid) for name, pid in pids.items()}
                current.backlog = await _backlog(engine)
                echo(json.dumps(current.row()))
            if in_flight:
                await asyncio.wait(in_flight, timeout=60)
        drain_started = time.perf_counter()
        backlog = await _backlog(engine)
        while backlog and time.perf_counter() - drain_started < drain_timeout:
            await asyncio.sleep(0.5)
            backlog = await _backlog(engine)
        return Report(rate, window, windows, backlog, time.perf_counter() - drain_started)
    finally:
        await engine.dispose()


def main(*, rate: float, seconds: float, window: float, gateway_url: str | None, database_url: str | None,
         state_dir: Path) -> dict[str, object]:
    from devstack import infra

    if gateway_url:
        if not database_url:
            raise SystemExit("--database-url (or DATABASE_URL) is needed with --gateway-url, for the backlog")
        report = asyncio.run(soak(gateway_url, database_url, rate=rate, seconds=seconds, window=window, pids={}))
    else:
        ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
        with stack.platform(state_dir, ports=ports, ephemeral=True,
                            extra_env={"LOG_LEVEL": "WARNING", "DEBUG": "false"}) as platform:
            print(f"platform: {platform.infra}")
            pids = {name: process.pid for name, process in platform.processes.items()}
            report = asyncio.run(soak(platform.gateway_url, platform.env["DATABASE_URL"], rate=rate,
                                      seconds=seconds, window=window, pids=pids))
    summary = report.summary()
    print(json.dumps(summary))
    return summary
