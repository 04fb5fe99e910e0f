"""Fault injection: under a steady classify load and a bulk batch, break one part of the platform, heal it, and
count what became of every screening the platform accepted (docs/reliability.md, "Faults").

``clinomic chaos`` runs every fault on a platform of its own and prints the table; the disruptive tests run a
subset of the same faults on the test session's platform. What a fault must leave behind: every accepted
screening recorded exactly once, each of its events in the audit ledger exactly once, the organisation's chain
verifying, no 5xx other than 503 with ``Retry-After`` while a dependency is down, and classify answering
after recovery about as fast as before the fault.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack import batch, stack
from devstack.stack import Platform
from shared.events.envelope import derived_event_id

#: The three events of one classify, each expected once in the ledger; a batch row is audited by the one
#: ``ScreeningBatchRecorded`` entry of its chunk (see :func:`chunk_recorded_event_id`).
CLASSIFY_EVENTS = ("ScreeningRequested", "ScreeningClassified", "ScreeningRecorded")
#: After recovery classify may be this much slower than before the fault and still count as usual.
LATENCY_FACTOR, LATENCY_SLACK_MS = 3.0, 200.0
PROBES = 15
HEALTHY_CBC: dict[str, Any] = {
    "hb": 14.2, "rbc": 4.8, "hct": 42.5, "mcv": 88.5, "mch": 29.6, "mchc": 33.4, "rdw": 12.9, "wbc": 6.8,
    "platelets": 260, "neutrophils_pct": 58, "lymphocytes_pct": 32, "age": 46, "sex": "male",
}


# -- what a fault left behind (pure) -------------------------------------------------------------------------


@dataclass
class Observed:
    """What the clients saw while the fault lasted, and what the database held afterwards."""

    accepted: set[str] = field(default_factory=set)
    batch_accepted: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    unexpected_5xx: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    batch_rows: list[int] = field(default_factory=list)
    trails: dict[str, int] = field(default_factory=dict)
    batch_trails: int = 0
    ledger_duplicates: int = 0
    chain_ok: bool | None = None
    chain_report: str = ""
    recovery_s: float | None = None
    p50_before_ms: float | None = None
    p50_after_ms: float | None = None


def answer_kind(status: int, headers: httpx.Headers) -> tuple[str, bool]:
    """How to count one answer: its label and whether it breaks the promise (a 5xx other than a 503 that says
    when to retry)."""
    if status == 503:
        return ("503+retry-after", False) if headers.get("retry-after") else ("503 without retry-after", True)
    return str(status), status >= 500


@dataclass(frozen=True)
class Outcome:
    fault: str
    accepted: int
    recorded: int
    duplicates: int
    lost: int
    audited: int
    recovery_s: float | None
    unexpected_5xx: int
    p50_before_ms: float | None
    p50_after_ms: float | None
    chain_ok: bool | None
    chain_report: str
    answers: dict[str, int]

    @property
    def latency_usual(self) -> bool:
        if self.p50_before_ms is None or self.p50_after_ms is None:
            return False
        return self.p50_after_ms <= max(self.p50_before_ms * LATENCY_FACTOR, self.p50_before_ms + LATENCY_SLACK_MS)

    @property
    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} accepted screening(s) never recorded")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate record(s) or ledger entr(ies)")
        if self.audited != self.accepted:
            found.append(f"{self.accepted - self.audited} accepted screening(s) not fully audited")
        if self.unexpected_5xx:
            found.append(f"{self.unexpected_5xx} 5xx answer(s) other than 503 with Retry-After")
        if self.chain_ok is not True:
            found.append(f"the organisation's audit chain did not verify: {self.chain_report}")
        if not self.latency_usual:
            found.append(f"classify p50 after recovery {self.p50_after_ms} ms vs {self.p50_before_ms} ms before")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def outcome(fault: str, seen: Observed) -> Outcome:
    """Count one fault's result: every accepted classify by id, the batch by its rows."""
    recorded_ids = {i for i, n in seen.rows.items() if n > 0 and i in seen.accepted}
    duplicate_rows = sum(n - 1 for i, n in seen.rows.items() if n > 1)
    batch_duplicates = len(seen.batch_rows) - len(set(seen.batch_rows))
    audited = sum(1 for i in seen.accepted if seen.trails.get(i) == len(CLASSIFY_EVENTS))
    return Outcome(
        fault=fault,
        accepted=len(seen.accepted) + seen.batch_accepted,
        recorded=len(recorded_ids) + len(set(seen.batch_rows)),
        duplicates=duplicate_rows + batch_duplicates + seen.ledger_duplicates,
        lost=len(seen.accepted - recorded_ids) + max(0, seen.batch_accepted - len(set(seen.batch_rows))),
        audited=audited + min(seen.batch_trails, seen.batch_accepted),
        recovery_s=seen.recovery_s,
        unexpected_5xx=len(seen.unexpected_5xx),
        p50_before_ms=seen.p50_before_ms,
        p50_after_ms=seen.p50_after_ms,
        chain_ok=seen.chain_ok,
        chain_report=seen.chain_report,
        answers=dict(seen.answers),
    )


def table(outcomes: list[Outcome]) -> str:
    head = (f"{'fault':<30}{'accepted':>9}{'recorded':>9}{'duplicates':>11}{'lost':>5}{'audited':>8}"
            f"{'recovery s':>11}{'bad 5xx':>8}{'p50 ms before/after':>21}  verdict")
    lines = [head]
    for o in outcomes:
        p50 = f"{_ms(o.p50_before_ms)}/{_ms(o.p50_after_ms)}"
        recovery = "-" if o.recovery_s is None else f"{o.recovery_s:.1f}"
        lines.append(f"{o.fault:<30}{o.accepted:>9}{o.recorded:>9}{o.duplicates:>11}{o.lost:>5}{o.audited:>8}"
                     f"{recovery:>11}{o.unexpected_5xx:>8}{p50:>21}  {'ok' if o.ok else '; '.join(o.problems)}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# -- the faults ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A way to break the platform: ``inject``, keep it broken under load for ``lasting`` seconds, ``heal``."""

    name: str
    inject: Callable[[Platform], Awaitable[None]]
    heal: Callable[[Platform], Awaitable[None]]
    lasting: float


def kill_9(service: str, lasting: float = 3.0) -> Fault:
    async def inject(platform: Platform) -> None:
        platform.kill_service(service)

    async def heal(platform: Platform) -> None:
        await asyncio.to_thread(platform.start_service, service)

    return Fault(f"kill -9 {service}", inject, heal, lasting)


def broker_restart(lasting: float = 3.0) -> Fault:
    async def inject(platform: Platform) -> None:
        if platform.bundled_broker is None:
            raise RuntimeError("restarting the broker needs the bundled broker (unset KAFKA_BOOTSTRAP_SERVERS)")
        await asyncio.to_thread(platform.bundled_broker.stop)

    async def heal(platform: Platform) -> None:
        from shared.kafka import ensure_topics

        assert platform.bundled_broker is not None
        await asyncio.to_thread(platform.bundled_broker.start)
        await ensure_topics(platform.bundled_broker.bootstrap_servers,
                            partitions=int(platform.env.get("KAFKA_TOPIC_PARTITIONS", "1")))

    return Fault("broker stop and restart", inject, heal, lasting)


def maintenance_url(database_url: str) -> str:
    """The same server's ``postgres`` database: where one can refuse connections to the platform's."""
    return make_url(database_url).set(database="postgres").render_as_string(hide_password=False)


def database_refuses(lasting: float = 10.0) -> Fault:
    """PostgreSQL refuses every connection to the platform's database (and drops the open ones) for a while,
    as a failover or a restart would."""

    async def toggle(platform: Platform, allow: bool) -> None:
        name = make_url(platform.env["DATABASE_URL"]).database
        admin = create_async_engine(maintenance_url(platform.env["DATABASE_URL"]), isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}'))
                if not allow:
                    await conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                            "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": name})
        finally:
            await admin.dispose()

    async def inject(platform: Platform) -> None:
        await toggle(platform, False)

    async def heal(platform: Platform) -> None:
        await toggle(platform, True)

    return Fault(f"PostgreSQL refuses {lasting:.0f} s", inject, heal, lasting)


def intake_fills(lasting: float = 15.0) -> Fault:
    """Inference is down long enough for accepted screenings to pile up in the gateway's intake."""
    fault = kill_9("inference", lasting)
    return Fault("intake fills, inference down", fault.inject, fault.heal, lasting)


def every_fault() -> list[Fault]:
    return [*(kill_9(s) for s in ("gateway", "inference", "screening", "audit", "auth")),
            broker_restart(), database_refuses(), intake_fills()]


# -- running one -------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Classify clients that keep going until told to stop; what they saw is kept in ``seen``."""

    gateway: httpx.AsyncClient
    headers: dict[str, str]
    patients: list[str]
    seen: Observed
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, offset: int) -> None:
        n = offset
        while not self.stop.is_set():
            body = {"patient": {"external_id": self.patients[n % len(self.patients)]}, "cbc": HEALTHY_CBC}
            n += 1
            try:
                response = await self.gateway.post("/api/screening/classify", json=body, headers=self.headers)
            except httpx.HTTPError as problem:
                self.seen.answers[type(problem).__name__] += 1  # the gateway itself is down: no answer at all
                await asyncio.sleep(0.2)
                continue
            kind, breaks = answer_kind(response.status_code, response.headers)
            self.seen.answers[kind] += 1
            if breaks:
                self.seen.unexpected_5xx.append(f"{kind}: {response.text[:200]}")
            if response.status_code in (200, 202):
                self.seen.accepted.add(response.json()["id"])
            else:
                await asyncio.sleep(0.2)

    def answered(self) -> int:
        return sum(self.seen.answers.values())


async def median_latency_ms(gateway: httpx.AsyncClient, headers: dict[str, str], patient: str) -> float | None:
    """Median of sequential classifies answered 200 (the usual, synchronous answer)."""
    times = []
    for _ in range(PROBES):
        started = time.perf_counter()
        response = await gateway.post("/api/screening/classify", headers=headers,
                                      json={"patient": {"external_id": patient}, "cbc": HEALTHY_CBC})
        if response.status_code == 200:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times) if times else None


async def until_serving(gateway: httpx.AsyncClient, headers: dict[str, str], patient: str, timeout: float) -> None:
    """Wait until classify answers synchronously again (every part of the pipeline is back)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = await gateway.post("/api/screening/classify", headers=headers,
                                          json={"patient": {"external_id": patient}, "cbc": HEALTHY_CBC})
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)


async def tenant_schema(engine: AsyncEngine, slug: str = "demo") -> str:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT schema_name FROM screening.tenants t JOIN auth.organizations o "
                                      "ON o.id = t.org_id WHERE o.slug = :s"), {"s": slug})


def chunk_recorded_event_id(command: bytes) -> uuid.UUID:
    """The event id of a chunk's ``ScreeningBatchRecorded``, derived from its command's as inference derives the
    classified chunk's and the screening service the recorded chunk's: the same for every redelivery."""
    requested = uuid.UUID(json.loads(command)["event_id"])
    return derived_event_id(derived_event_id(requested, "ScreeningBatchClassified"), "ScreeningBatchRecorded")


async def count_into(seen: Observed, engine: AsyncEngine, schema: str, job_id: str | None) -> None:
    """Rows per accepted id, the batch's rows, complete ledger trails, duplicate ledger event ids."""
    ids = sorted(seen.accepted)
    async with engine.connect() as conn:
        seen.rows = dict((await conn.execute(text(
            f'SELECT CAST(id AS text), count(*) FROM "{schema}".screenings WHERE CAST(id AS text) = ANY(:ids) '
            "GROUP BY id"), {"ids": ids})).all())
        seen.trails = dict((await conn.execute(text(
            "SELECT r.id, count(DISTINCT e.event_type) FROM unnest(CAST(:ids AS text[])) AS r(id) "
            "JOIN audit.entries e ON e.refs @> ARRAY[r.id] AND e.event_type = ANY(:types) GROUP BY r.id"),
            {"ids": ids, "types": list(CLASSIFY_EVENTS)})).all())
        batch_ids: list[str] = []
        if job_id:
            found = (await conn.execute(text(f'SELECT batch_row, CAST(id AS text) FROM "{schema}".screenings '
                                             "WHERE batch_job_id = :j"), {"j": job_id})).all()
            seen.batch_rows = [row for row, _ in found]
            batch_ids = [i for _, i in found]
            chunks = {chunk_recorded_event_id(command): rows for rows, command in (await conn.execute(text(
                "SELECT rows, command FROM gateway.batch_chunks WHERE job_id = :j"), {"j": job_id})).all()}
            audited = set((await conn.scalars(text("SELECT event_id FROM audit.entries WHERE event_id = ANY(:e)"),
                                              {"e": list(chunks)})).all())
            seen.batch_trails = sum(rows for event_id, rows in chunks.items() if event_id in audited)
            batch_ids.append(job_id)  # every chunk entry names its job
        seen.ledger_duplicates = await conn.scalar(text(
            "SELECT count(*) FROM (SELECT event_id FROM audit.entries e WHERE e.refs && CAST(:ids AS text[]) "
            "GROUP BY event_id HAVING count(*) > 1) d"), {"ids": ids + batch_ids})


def settled(seen: Observed) -> bool:
    complete = all(seen.rows.get(i) and seen.trails.get(i) == len(CLASSIFY_EVENTS) for i in seen.accepted)
    return complete and len(set(seen.batch_rows)) >= seen.batch_accepted and seen.batch_trails >= seen.batch_accepted


async def consented(gateway: httpx.AsyncClient, headers: dict[str, str], count: int) -> list[batch.PoolPatient]:
    pool = batch.pool_patients(count, f"X{uuid.uuid4().hex[:6]}")
    await batch.create_pool(str(gateway.base_url).rstrip("/"), headers, pool)
    return pool


async def upload_batch(gateway: httpx.AsyncClient, headers: dict[str, str], pool: list[batch.PoolPatient],
                       rows: int, seen: Observed) -> str | None:
    """Upload a batch as a careful client would: retried under one Idempotency-Key until it is accepted."""
    body = batch.csv_bytes(batch.synthetic_rows(rows, pool, seed=11))
    key = f"chaos-{uuid.uuid4().hex}"
    for _ in range(60):
        try:
            response = await gateway.post("/api/screening/batch", content=body,
                                          headers=headers | {"content-type": "text/csv", "idempotency-key": key})
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
            continue
        kind, breaks = answer_kind(response.status_code, response.headers)
        seen.answers[f"batch {kind}"] += 1
        if breaks:
            seen.unexpected_5xx.append(f"batch {kind}: {response.text[:200]}")
        if response.status_code == 202:
            seen.batch_accepted = response.json()["accepted"]
            return response.json()["job_id"]
        await asyncio.sleep(float(response.headers.get("retry-after", "0.5")))
    return None


async def login(gateway: httpx.AsyncClient, username: str, password: str = stack.DEMO_PASSWORD) -> dict[str, str]:
    response = await gateway.post("/api/auth/login", json={"username": username, "password": password})
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def exercise(platform: Platform, fault: Fault, *, clients: int = 3, batch_rows: int = 200,
                   settle_timeout: float = 180.0) -> Outcome:
    """Break the platform with ``fault`` under load, heal it, wait for every accepted screening, count."""
    engine = create_async_engine(platform.env["DATABASE_URL"], pool_pre_ping=True, pool_size=2)
    try:
        async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30.0) as gateway:
            lab = await login(gateway, "lab_demo")
            auditor = await login(gateway, "auditor_demo")
            pool = await consented(gateway, lab, 6)
            patients = [p.external_id for p in pool]
            schema = await tenant_schema(engine)
            seen = Observed(p50_before_ms=await median_latency_ms(gateway, lab, patients[0]))
            load = Load(gateway, lab, patients, seen)
            workers = [asyncio.create_task(load.client(i)) for i in range(clients)]
            try:
                while len(seen.accepted) < 5:
                    await asyncio.sleep(0.05)
                job_id = await upload_batch(gateway, lab, pool, batch_rows, seen)
                await fault.inject(platform)
                broken = time.monotonic()
                met = load.answered()
                # the load meets the fault for its duration and at least a few requests
                while time.monotonic() - broken < fault.lasting or load.answered() < met + 3:
                    await asyncio.sleep(0.05)
                await fault.heal(platform)
                healed = time.monotonic()
                with_heal = len(seen.accepted)
                while len(seen.accepted) < with_heal + 5 and time.monotonic() - healed < settle_timeout:
                    await asyncio.sleep(0.05)
            finally:
                load.stop.set()
                await asyncio.gather(*workers)
            deadline = healed + settle_timeout
            while True:
                await count_into(seen, engine, schema, job_id)
                if settled(seen) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            seen.recovery_s = time.monotonic() - healed if settled(seen) else None
            await until_serving(gateway, lab, patients[0], timeout=60.0)
            seen.p50_after_ms = await median_latency_ms(gateway, lab, patients[0])
            verified = await gateway.get("/api/audit/verify", headers=auditor)
            seen.chain_ok = verified.status_code == 200 and verified.json()["ok"]
            seen.chain_report = verified.text[:300]
            return outcome(fault.name, seen)
    finally:
        await engine.dispose()


def main(*, only: list[str], state_dir, echo=print) -> list[Outcome]:  # type: ignore[no-untyped-def]
    """Start a platform of its own, run each fault in turn, print one table row per fault and the table."""
    from devstack import infra

    faults = [f for f in every_fault() if not only or any(o in f.name for o in only)]
    if not faults:
        raise SystemExit(f"no fault matches {only}; faults: {', '.join(f.name for f in every_fault())}")
    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    outcomes: list[Outcome] = []
    with stack.platform(state_dir, ports=ports, ephemeral=True,
                        extra_env={"DEBUG": "false", "CLASSIFY_WAIT_SECONDS": "10",
                                   "REDELIVER_AFTER_SECONDS": "3"}) as platform:
        echo(f"platform: {platform.infra}")
        for fault in faults:
            started = time.monotonic()
            outcomes.append(asyncio.run(exercise(platform, fault)))
            echo(f"{table(outcomes[-1:]).splitlines()[1]}   ({time.monotonic() - started:.0f} s)")
    echo("\n" + table(outcomes))
    return outcomes
