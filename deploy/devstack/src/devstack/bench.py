"""Benchmark: classify through the gateway with N clients for T seconds, then an in-process baseline.

The baseline does what one request needs without the architecture (validation, both model stages, one
insert) in a single process with the same concurrency, so the two throughputs can be compared directly.
Figures are measured here and printed; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from devstack import infra, recovery, stack

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


@dataclass
class Run:
    name: str
    seconds: float
    latencies_ms: list[float]
    outcomes: Counter[str]

    def report(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else (lambda p: float("nan"))
        return {"run": self.name, "requests": len(lat), "throughput_rps": round(len(lat) / self.seconds, 1),
                "p50_ms": round(q(0.50), 2), "p95_ms": round(q(0.95), 2), "p99_ms": round(q(0.99), 2),
                "mean_ms": round(statistics.fmean(lat), 2) if lat else None, "outcomes": dict(self.outcomes)}


async def drive(duration: float, clients: int, one_request) -> tuple[list[float], Counter[str]]:  # type: ignore[no-untyped-def]
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


async def through_gateway(gateway_url: str, clients: int, seconds: float) -> Run:
    """The load generator is aiohttp: it costs far less CPU per request than httpx, and it shares the cores.
    Patients and their consents are recorded before the clock starts; each request screens one of them."""
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(gateway_url, connector=connector) as http:
        async with http.post("/api/auth/login",
                             json={"username": "lab_demo", "password": stack.DEMO_PASSWORD}) as login:
            login.raise_for_status()
            headers = {"Authorization": f"Bearer {(await login.json())['access_token']}"}
        pool = await consented_patients(http, headers, 4 * clients)

        async def one(rng: random.Random) -> str:
            external_id, sex = rng.choice(pool)
            body = {"patient": {"external_id": external_id, "name": BENCH_PATIENT_NAME},
                    "cbc": cbc_variant(rng) | {"sex": sex}}
            async with http.post("/api/screening/classify", json=body, headers=headers) as response:
                await response.read()
                return str(response.status)

        await drive(2.0, clients, one)  # warm-up: connections, consumer fetch loops, model caches
        latencies, outcomes = await drive(seconds, clients, one)
    return Run(f"gateway → Kafka → inference → screening → gateway ({clients} clients)", seconds, latencies, outcomes)


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


def print_runs(runs: list[Run]) -> None:
    reports = [r.report() for r in runs]
    for report in reports:
        print(json.dumps(report))
    if len(reports) == 2 and reports[1]["throughput_rps"]:
        ratio = reports[0]["throughput_rps"] / reports[1]["throughput_rps"]  # type: ignore[operator]
        print(f"gateway throughput / baseline throughput = {ratio:.2f} (aim ≥ 0.6); "
              f"gateway p99 = {reports[0]['p99_ms']} ms (aim ≤ 40 ms at 50 clients)")


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


def main(*, clients: int, seconds: float, gateway_url: str | None, state_dir: Path, idle_seconds: float = 60.0) -> None:
    if gateway_url:
        database_url = os.environ["DATABASE_URL"]
        runs = [asyncio.run(through_gateway(gateway_url, clients, seconds))]
        runs.append(asyncio.run(in_process_baseline(database_url, clients, seconds)))
        print_runs(runs)
        return
    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    with stack.platform(state_dir, ports=ports, ephemeral=True,
                        extra_env={"LOG_LEVEL": "WARNING", "DEBUG": "false"}) as platform:
        print(f"platform: {platform.infra}")
        if idle_seconds > 0:
            recovery.until_settled(platform.logs, timeout=120.0)
            idle = idle_cores(platform_processes(platform), idle_seconds)
            print(json.dumps({"idle_cores": idle, "seconds": idle_seconds, "aim_total_at_most": 0.2}))
        runs = [asyncio.run(through_gateway(platform.gateway_url, clients, seconds))]
        runs.append(asyncio.run(in_process_baseline(platform.env["DATABASE_URL"], clients, seconds)))
    print_runs(runs)
