"""Benchmark of classify: the idle platform's CPU, latency at a fixed open-loop rate, saturation throughput of N
closed-loop clients, and an in-process baseline; the aims of issue 17 with their verdicts beside the figures.

The baseline does what one request needs without the architecture (validation, both model stages, one
insert) in a single process with the same concurrency, so the two throughputs can be compared directly.
Closed-loop latency only restates throughput (Little's law), so latency is judged at a fixed open-loop rate.
Figures are measured here and printed; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from devstack import infra, recovery, stack
from devstack.figures import Aim, latency_summary, ratio, send_offsets

BASE_CBC = {"hb": 13.1, "rbc": 4.4, "hct": 39.6, "mcv": 90.0, "mch": 29.8, "mchc": 33.1, "rdw": 13.4,
            "wbc": 6.9, "platelets": 240, "neutrophils_pct": 57, "lymphocytes_pct": 33, "age": 52, "sex": "female"}


def cbc_variant(rng: random.Random) -> dict[str, object]:
    """A plausible, internally consistent panel with some spread, so the model sees varied input."""
    rbc = rng.uniform(3.4, 5.4)
    mcv = rng.uniform(78, 108)
    mchc = rng.uniform(31, 35)
    hct = rbc * mcv / 10
    hb = mchc * hct / 100
    return BASE_CBC | {"rbc": round(rbc, 2), "mcv": round(mcv, 1), "hb": round(hb, 1), "hct": round(hct, 1),
                       "mch": round(hb * 10 / rbc, 1), "mchc": round(mchc, 1),
                       "rdw": round(rng.uniform(11.5, 18), 1), "age": rng.randint(18, 90),
                       "sex": rng.choice(["female", "male"])}


#: Issue 17's aims for classify.
SATURATION_RATIO_AIM = 0.6
OPEN_LOOP_P50_AIM_MS = 20.0
OPEN_LOOP_P99_AIM_MS = 50.0
IDLE_CORES_AIM = 0.2
#: An open-loop run keeps at most this many rate-seconds of requests in flight; beyond it a request is shed.
IN_FLIGHT_SECONDS = 5


@dataclass
class Run:
    name: str
    seconds: float
    latencies_ms: list[float]
    outcomes: Counter[str]
    rate: float | None = None
    shed: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds

    @property
    def failed(self) -> int:
        """Answers other than the recorded screening (200) or accepted-and-pending (202), and requests that
        got no answer."""
        return sum(n for outcome, n in self.outcomes.items() if outcome not in ("200", "202", "recorded"))

    def report(self) -> dict[str, object]:
        load = {"rate_per_s": self.rate, "shed": self.shed} if self.rate is not None else {}
        return {"run": self.name, **load, "requests": len(self.latencies_ms),
                "throughput_rps": round(self.throughput, 1), **latency_summary(self.latencies_ms),
                "outcomes": dict(self.outcomes)}


async def drive(duration: float, clients: int, one_request) -> tuple[list[float], Counter[str]]:  # type: ignore[no-untyped-def]
    """Closed loop: each client sends its next request when the previous one has answered."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    deadline = time.perf_counter() + duration

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            outcome = await one_request(rng)
            latencies.append((time.perf_counter() - start) * 1000)
            outcomes[outcome] += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, outcomes


async def open_loop(rate: float, seconds: float, send: Callable[[float], Awaitable[None]], *,
                    in_flight: set[asyncio.Task[None]], cap: int) -> tuple[int, int]:
    """Open loop: start ``send(due)`` at each time ``send_offsets`` gives, whether or not earlier requests have
    answered (``due`` is the scheduled ``perf_counter`` time, for ``send`` to measure latency from); a request
    due while ``cap`` are in flight is shed. Returns (sent, shed) once ``seconds`` have passed, leaving the
    requests still in flight in ``in_flight``."""
    start = time.perf_counter()
    sent = shed = 0
    for offset in send_offsets(rate, seconds):
        due = start + offset
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= cap:
            shed += 1
            continue
        task = asyncio.create_task(send(due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        sent += 1
    if (rest := start + seconds - time.perf_counter()) > 0:
        await asyncio.sleep(rest)
    return sent, shed


BENCH_PATIENT_NAME = "Bench Patient"


async def consented_patients(http: aiohttp.ClientSession, headers: dict[str, str],
                             count: int) -> list[tuple[str, str]]:
    """(external id, sex) of ``count`` new patients with an active consent: classify requires one by default."""
    pool: list[tuple[str, str]] = []
    for i in range(count):
        external_id, sex = f"B-{uuid.uuid4().hex[:12]}", ("female", "male")[i % 2]
        async with http.post("/api/patients", headers=headers, json={
                "external_id": external_id, "name": BENCH_PATIENT_NAME, "sex": sex}) as created:
            created.raise_for_status()
            patient_id = (await created.json())["id"]
        async with http.post("/api/consents", headers=headers, json={
                "patient_id": patient_id, "method": "electronic",
                "text": "I agree to have my blood count screened for vitamin B12 deficiency."}) as consent:
            consent.raise_for_status()
        pool.append((external_id, sex))
    return pool


def classify_body(rng: random.Random, pool: list[tuple[str, str]]) -> dict[str, object]:
    external_id, sex = rng.choice(pool)
    return {"patient": {"external_id": external_id, "name": BENCH_PATIENT_NAME},
            "cbc": cbc_variant(rng) | {"sex": sex}}


async def lab_login(http: aiohttp.ClientSession) -> dict[str, str]:
    credentials = {"username": "lab_demo", "password": stack.DEMO_PASSWORD}
    async with http.post("/api/auth/login", json=credentials) as login:
        login.raise_for_status()
        return {"Authorization": f"Bearer {(await login.json())['access_token']}"}


async def through_gateway(http: aiohttp.ClientSession, headers: dict[str, str], pool: list[tuple[str, str]],
                          clients: int, seconds: float) -> Run:
    """Saturation: ``clients`` closed-loop clients, each screening one of the ``pool``'s patients at a time."""
    async def one(rng: random.Random) -> str:
        body = classify_body(rng, pool)
        async with http.post("/api/screening/classify", json=body, headers=headers) as response:
            await response.read()
            return str(response.status)

    await drive(2.0, clients, one)  # warm-up: connections, consumer fetch loops, model caches
    latencies, outcomes = await drive(seconds, clients, one)
    return Run(f"gateway → Kafka → inference → screening → gateway ({clients} clients)", seconds, latencies, outcomes)


async def open_loop_through_gateway(http: aiohttp.ClientSession, headers: dict[str, str],
                                    pool: list[tuple[str, str]], rate: float, seconds: float) -> Run:
    """Latency at ``rate`` classify/s sent on schedule, each measured from when it was due to its answer."""
    rng = random.Random(20241217)
    in_flight: set[asyncio.Task[None]] = set()
    cap = max(1, int(rate * IN_FLIGHT_SECONDS))

    async def run(seconds: float) -> Run:
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()

        async def one(due: float) -> None:
            try:
                async with http.post("/api/screening/classify", json=classify_body(rng, pool),
                                     headers=headers) as response:
                    await response.read()
                    outcomes[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as problem:
                outcomes[type(problem).__name__] += 1
            latencies.append((time.perf_counter() - due) * 1000)

        _, shed = await open_loop(rate, seconds, one, in_flight=in_flight, cap=cap)
        if in_flight:
            await asyncio.wait(in_flight)
        return Run(f"open loop: {rate:g} classify/s through the gateway", seconds, latencies, outcomes,
                   rate, shed)

    await run(2.0)  # warm-up at the same rate
    return await run(seconds)


async def gateway_runs(gateway_url: str, *, clients: int, seconds: float, rate: float) -> list[Run]:
    """The open-loop run first (on a platform with no backlog), then saturation. The load generator is
    aiohttp: it costs far less CPU per request than httpx, and it shares the cores. Patients and their
    consents are recorded before any clock starts."""
    async with aiohttp.ClientSession(gateway_url) as http:
        headers = await lab_login(http)
        pool = await consented_patients(http, headers, 4 * clients)
    runs = []
    if rate > 0:
        connector = aiohttp.TCPConnector(limit=max(1, int(rate * IN_FLIGHT_SECONDS)))
        async with aiohttp.ClientSession(gateway_url, connector=connector) as http:
            runs.append(await open_loop_through_gateway(http, headers, pool, rate, seconds))
    async with aiohttp.ClientSession(gateway_url, connector=aiohttp.TCPConnector(limit=clients)) as http:
        runs.append(await through_gateway(http, headers, pool, clients, seconds))
    return runs


async def in_process_baseline(database_url: str, clients: int, seconds: float) -> Run:
    from inference.model import B12Model
    from inference.settings import InferenceSettings
    from sqlalchemy import text

    from shared.db import create_engine
    from shared.events.screening import CompleteBloodCount

    model = B12Model.load(InferenceSettings().model_dir)
    engine = create_engine(database_url, application_name="clinomic-bench", pool_size=min(clients, 20))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SCHEMA IF NOT EXISTS bench"))
        await conn.execute(text("CREATE TABLE IF NOT EXISTS bench.baseline_screenings "
                                "(id uuid PRIMARY KEY, cbc jsonb NOT NULL, assessment jsonb NOT NULL, "
                                "recorded_at timestamptz NOT NULL DEFAULT now())"))
    insert = text("INSERT INTO bench.baseline_screenings (id, cbc, assessment) "
                  "VALUES (:id, CAST(:cbc AS jsonb), CAST(:a AS jsonb))")

    async def one(rng: random.Random) -> str:
        cbc = CompleteBloodCount.model_validate(cbc_variant(rng))
        assessment = model.assess(np.array([cbc.as_features()], dtype=np.float64))[0]
        async with engine.begin() as conn:
            await conn.execute(insert, {"id": uuid.uuid4(), "cbc": cbc.model_dump_json(),
                                        "a": assessment.model_dump_json()})
        return "recorded"

    try:
        await drive(2.0, clients, one)
        latencies, outcomes = await drive(seconds, clients, one)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA bench CASCADE"))
        await engine.dispose()
    return Run(f"in-process baseline: validate + model + insert ({clients} clients)", seconds, latencies, outcomes)


def classify_aims(*, idle_total: float | None, saturation: Run, baseline: Run,
                  open_run: Run | None) -> list[Aim]:
    """Issue 17's classify aims, each judged on the figure measured in this run."""
    aims = [Aim("classify saturation / in-process baseline",
                ratio(saturation.throughput, baseline.throughput), SATURATION_RATIO_AIM, "at least", "×")]
    if open_run is not None:
        latency, name = latency_summary(open_run.latencies_ms), f"open loop {open_run.rate:g}/s"
        aims += [Aim(f"{name} p50", latency["p50_ms"], OPEN_LOOP_P50_AIM_MS, "at most", " ms"),
                 Aim(f"{name} p99", latency["p99_ms"], OPEN_LOOP_P99_AIM_MS, "at most", " ms"),
                 Aim(f"{name} requests shed or failed", open_run.shed + open_run.failed, 0, "at most")]
    aims.append(Aim("idle platform, all processes", idle_total, IDLE_CORES_AIM, "at most", " cores"))
    return aims


def print_figures(runs: list[Run], baseline: Run, idle_total: float | None) -> None:
    for run in [*runs, baseline]:
        print(json.dumps(run.report(), ensure_ascii=False))
    open_run = next((r for r in runs if r.rate is not None), None)
    saturation = runs[-1]
    print(f"saturation {saturation.throughput:.1f}/s through the gateway, "
          f"{baseline.throughput:.1f}/s in process")
    print("aims (issue 17):")
    aims = classify_aims(idle_total=idle_total, saturation=saturation, baseline=baseline, open_run=open_run)
    for aim in aims:
        print(f"  {aim.line()}")


def idle_cores(processes: dict[str, int], seconds: float) -> dict[str, float]:
    """Cores each process keeps busy while nothing is asked of it (CPU seconds used over ``seconds``), and the
    total: what an idle platform costs the machine it shares."""
    from devstack.batch import cpu_seconds

    before = cpu_seconds(processes)
    time.sleep(seconds)
    after = cpu_seconds(processes)
    used = {name: round((after[name] - before[name]) / seconds, 3) for name in before if name in after}
    return used | {"total": round(sum(used.values()), 3)}


def platform_processes(platform: stack.Platform) -> dict[str, int]:
    """The five services and, when bundled, the broker (PostgreSQL is left out: it is idle unless asked)."""
    found = {name: process.pid for name, process in platform.processes.items()}
    broker = platform.bundled_broker
    if broker is not None and broker.process is not None:
        found["broker"] = broker.process.pid
    return found


def main(*, clients: int, seconds: float, rate: float, gateway_url: str | None, state_dir: Path,
         idle_seconds: float = 60.0) -> None:
    if gateway_url:
        runs = asyncio.run(gateway_runs(gateway_url, clients=clients, seconds=seconds, rate=rate))
        baseline = asyncio.run(in_process_baseline(os.environ["DATABASE_URL"], clients, seconds))
        print_figures(runs, baseline, None)
        return
    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    idle_total = None
    with stack.platform(state_dir, ports=ports, ephemeral=True,
                        extra_env={"LOG_LEVEL": "WARNING", "DEBUG": "false"}) as platform:
        print(f"platform: {platform.infra}")
        if idle_seconds > 0:
            recovery.until_settled(platform.logs, timeout=120.0)
            idle = idle_cores(platform_processes(platform), idle_seconds)
            idle_total = idle["total"]
            print(json.dumps({"idle_cores": idle, "seconds": idle_seconds}))
        runs = asyncio.run(gateway_runs(platform.gateway_url, clients=clients, seconds=seconds, rate=rate))
        baseline = asyncio.run(in_process_baseline(platform.env["DATABASE_URL"], clients, seconds))
    print_figures(runs, baseline, idle_total)
