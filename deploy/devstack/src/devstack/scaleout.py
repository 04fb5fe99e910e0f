"""Scale-out proof: the same classify load on one process of each pipeline service, then on R replicas of gateway,
inference and screening, over topics of N partitions; per phase the figures and what became of every screening.

Both phases run on one platform (``clinomic scale-out``): phase (a) with the platform as it starts, phase (b) after
R - 1 more processes of each of the three services joined. The load spreads its requests over the gateway replicas
in turn, as a load balancer would. After each phase every accepted screening is counted in the tenant schema and
the audit ledger (``devstack.chaos.count_into``). Figures are measured and printed, never tuned; the command exits
1 when a screening was lost or recorded twice, or a gateway replica never answered a classify synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from sqlalchemy.ext.asyncio import create_async_engine

from devstack import bench, chaos, infra, recovery, stack

#: The services a classify passes through on its way and back; each gets the replicas.
SCALED = ("gateway", "inference", "screening")


# -- pure -----------------------------------------------------------------------------------------------------


def shape_problem(replicas: int, partitions: int) -> str | None:
    """Why a shape cannot show a scale-out, or None: a replica beyond the partitions of a topic holds none of it."""
    if replicas < 2:
        return f"--replicas must be at least 2 to compare with one (got {replicas})"
    if partitions < replicas:
        return f"--partitions ({partitions}) must be at least --replicas ({replicas}), or a replica holds no partition"
    return None


def quantile(values: list[float], p: float) -> float | None:
    """The nearest-rank quantile of ``values`` (None when there are none), as ``devstack.bench`` reports it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def busy_cores(before: list[int], after: list[int], cpus: int) -> float:
    """Cores the whole machine kept busy between two readings of the ``cpu`` line of /proc/stat (jiffies of user,
    nice, system, idle, iowait, ...), over all its cores: what every process, ours or not, used."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent)
    if total <= 0:
        return 0.0
    idle = spent[3] + (spent[4] if len(spent) > 4 else 0)
    return (total - idle) / total * cpus


def cores(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
          seconds: float) -> dict[str, tuple[float, float]]:
    """Per process, from two readings of (ns on a core, ns runnable but waiting for one): the cores it kept busy and
    how many of its threads were, on average, waiting for a core meanwhile (CPU starvation)."""
    return {name: (round(max(0, after[name][0] - ran) / 1e9 / seconds, 2),
                   round(max(0, after[name][1] - waited) / 1e9 / seconds, 2))
            for name, (ran, waited) in before.items() if name in after}


def held_partitions(lines: Iterable[str]) -> dict[str, list[str]]:
    """Each consumer group's latest assignment (``topic:partition``) in one service log, of its current process
    only: uvicorn's start line begins a new process, whose groups start from nothing."""
    held: dict[str, list[str]] = {}
    for line in lines:
        try:
            message = json.loads(line)["message"]
        except (ValueError, TypeError, KeyError):
            continue
        if recovery.STARTED.match(message):
            held = {}
        elif match := recovery.ASSIGNED.match(message):
            held[match[1]] = sorted(json.loads(match[2]))
    return held


def sharing(held: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """Per consumer group (per-process groups under one label), what each process holds: ``held`` is process →
    group → partitions, the result group label → process → partitions."""
    shared: dict[str, dict[str, list[str]]] = {}
    for process, groups in held.items():
        for group, partitions in groups.items():
            shared.setdefault(recovery.label(group), {})[process] = partitions
    return shared


def compact(partitions: list[str]) -> str:
    """``clinomic.a:0, clinomic.a:2, clinomic.b:1`` → ``a[0,2] b[1]``; ``-`` for none."""
    by_topic: dict[str, list[int]] = {}
    for entry in partitions:
        topic, number = entry.rsplit(":", 1)
        by_topic.setdefault(topic.removeprefix("clinomic."), []).append(int(number))
    return " ".join(f"{t}[{','.join(map(str, sorted(n)))}]" for t, n in sorted(by_topic.items())) or "-"


def sharing_table(shared: dict[str, dict[str, list[str]]]) -> str:
    width = max((len(g) for g in shared), default=14)
    rows = [f"{'consumer group':<{width}}  {'process':<12}  partitions held"]
    for group, processes in sorted(shared.items()):
        rows += [f"{group:<{width}}  {p:<12}  {compact(parts)}" for p, parts in sorted(processes.items())]
    return "\n".join(rows)


@dataclass
class Phase:
    """What one phase's clients saw, what the database held afterwards, and the CPU each process used."""

    name: str
    gateways: list[str]  # the gateway processes the load spread its requests over
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (gateway process, status) → count
    tally: chaos.Outcome | None = None
    cores: dict[str, tuple[float, float]] = field(default_factory=dict)  # process → (busy, waiting for a core)
    machine_busy: float = 0.0  # cores of the machine busy meanwhile, whoever used them

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def by_status(self) -> Counter[str]:
        statuses: Counter[str] = Counter()
        for (_, status), n in self.answers.items():
            statuses[status] += n
        return statuses

    def problems(self) -> list[str]:
        """The promises this phase broke: every accepted screening recorded and audited exactly once, and every
        gateway replica answering classify synchronously (200) at least sometimes."""
        found = []
        if self.tally is None:
            return ["not counted"]
        if self.tally.lost:
            found.append(f"{self.tally.lost} accepted screening(s) never recorded")
        if self.tally.duplicates:
            found.append(f"{self.tally.duplicates} duplicate record(s) or ledger entr(ies)")
        if self.tally.audited != self.tally.accepted:
            found.append(f"{self.tally.accepted - self.tally.audited} accepted screening(s) not fully audited")
        found += [f"{g} answered no classify synchronously" for g in self.gateways if not self.answers[(g, "200")]]
        return found


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def phase_table(phases: list[Phase]) -> str:
    head = (f"{'phase':<26}{'req/s':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'200':>7}{'202':>6}{'other':>6}"
            f"{'accepted':>9}{'recorded':>9}{'dupl.':>6}{'lost':>5}{'audited':>8}")
    rows = [head]
    for p in phases:
        statuses = p.by_status()
        other = sum(n for s, n in statuses.items() if s not in ("200", "202"))
        t = p.tally
        counts = (f"{t.accepted:>9}{t.recorded:>9}{t.duplicates:>6}{t.lost:>5}{t.audited:>8}" if t else
                  f"{'-':>9}{'-':>9}{'-':>6}{'-':>5}{'-':>8}")
        rows.append(f"{p.name:<26}{p.throughput:>7.1f}{_ms(quantile(p.latencies_ms, 0.5)):>8}"
                    f"{_ms(quantile(p.latencies_ms, 0.95)):>8}{_ms(quantile(p.latencies_ms, 0.99)):>8}"
                    f"{statuses['200']:>7}{statuses['202']:>6}{other:>6}{counts}")
    return "\n".join(rows)


def cpu_report(phase: Phase) -> str:
    ours = sum(busy for busy, _ in phase.cores.values())
    each = ", ".join(f"{name} {busy:.2f}/{waiting:.2f}" for name, (busy, waiting) in phase.cores.items())
    return (f"cores busy/waiting for a core: {each}; these processes {ours:.2f}, the whole machine "
            f"{phase.machine_busy:.2f} of {os.cpu_count()} (the rest: PostgreSQL and whatever else runs here)")


def per_gateway(phase: Phase) -> str:
    gateways = sorted({g for g, _ in phase.answers})
    return "; ".join(f"{g}: " + ", ".join(f"{s}×{n}" for (h, s), n in sorted(phase.answers.items()) if h == g)
                     for g in gateways)


# -- measuring ------------------------------------------------------------------------------------------------


def machine_cpu() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def scheduling(processes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per process, over all its threads: ns run on a core and ns spent runnable waiting for one (schedstat)."""
    found = {}
    for name, pid in processes.items():
        ran = waited = 0
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):  # a thread that has just ended
                    fields = (task / "schedstat").read_text().split()
                    ran, waited = ran + int(fields[0]), waited + int(fields[1])
        except OSError:
            continue
        found[name] = (ran, waited)
    return found


async def login(gateway_url: str) -> dict[str, str]:
    async with aiohttp.ClientSession(gateway_url) as http, http.post(
            "/api/auth/login", json={"username": "lab_demo", "password": stack.DEMO_PASSWORD}) as answer:
        answer.raise_for_status()
        return {"Authorization": f"Bearer {(await answer.json())['access_token']}"}


async def patients(gateway_url: str, count: int) -> list[tuple[str, str]]:
    """(external id, sex) of ``count`` new consented patients, shared by both phases."""
    headers = await login(gateway_url)
    async with aiohttp.ClientSession(gateway_url) as http:
        return await bench.consented_patients(http, headers, count)


async def load(phase: Phase, gateways: dict[str, str], pool: list[tuple[str, str]], clients: int,
               processes: dict[str, int]) -> set[str]:
    """Closed-loop classify from ``clients`` clients for the phase's seconds (after a 2 s warm-up), each request to
    the next gateway replica in turn; the ids of every screening accepted (warm-up included)."""
    headers = await login(next(iter(gateways.values())))
    rotation = itertools.cycle(gateways.items())
    accepted: set[str] = set()
    answers: Counter[tuple[str, str]] = Counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(rng: random.Random) -> str:
            name, url = next(rotation)
            external_id, sex = rng.choice(pool)
            body = {"patient": {"external_id": external_id, "name": bench.BENCH_PATIENT_NAME},
                    "cbc": bench.cbc_variant(rng) | {"sex": sex}}
            async with http.post(f"{url}/api/screening/classify", json=body, headers=headers) as response:
                content = await response.read()
            if response.status in (200, 202):
                accepted.add(json.loads(content)["id"])
            answers[(name, str(response.status))] += 1
            return str(response.status)

        await bench.drive(2.0, clients, one)
        answers.clear()
        sched_before, machine_before = scheduling(processes), machine_cpu()
        phase.latencies_ms, _ = await bench.drive(phase.seconds, clients, one)
        sched_after, machine_after = scheduling(processes), machine_cpu()
    phase.answers = answers
    phase.cores = cores(sched_before, sched_after, phase.seconds)
    phase.machine_busy = busy_cores(machine_before, machine_after, os.cpu_count() or 1)
    return accepted


async def count(database_url: str, accepted: set[str], timeout: float) -> chaos.Outcome:
    """Wait (up to ``timeout`` s) until every accepted screening is recorded and its three events are in the
    ledger, then count rows and ledger entries per id."""
    engine = create_async_engine(database_url, pool_pre_ping=True, pool_size=2)
    seen = chaos.Observed(accepted=accepted)
    try:
        schema = await chaos.tenant_schema(engine)
        deadline = time.monotonic() + timeout
        while True:
            await chaos.count_into(seen, engine, schema, None)
            if chaos.settled(seen) or time.monotonic() > deadline:
                return chaos.outcome("", seen)
            await asyncio.sleep(1.0)
    finally:
        await engine.dispose()


def run_phase(platform: stack.Platform, name: str, pool: list[tuple[str, str]], *, clients: int, seconds: float,
              settle_timeout: float) -> Phase:
    gateways = {key: url for key, url in platform.urls.items() if key.split("-")[0] == "gateway"}
    phase = Phase(name, list(gateways), seconds)
    processes = bench.platform_processes(platform) | {"load generator": os.getpid()}
    accepted = asyncio.run(load(phase, gateways, pool, clients, processes))
    phase.tally = asyncio.run(count(platform.env["DATABASE_URL"], accepted, settle_timeout))
    return phase


def main(*, replicas: int, partitions: int, clients: int, seconds: float, state_dir: Path,
         settle_timeout: float = 300.0, echo: Callable[[str], None] = print) -> bool:
    """Start a platform of its own with topics of ``partitions`` partitions, measure phase (a), add the replicas,
    measure phase (b), print everything; whether every promise held."""
    from tqdm import tqdm

    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    steps = tqdm(total=5, unit="step", dynamic_ncols=True)
    steps.set_description("starting the platform")
    with stack.platform(state_dir, ports=ports, ephemeral=True,
                        extra_env={"DEBUG": "false", "KAFKA_TOPIC_PARTITIONS": str(partitions)}) as platform:
        recovery.until_settled(platform.logs, timeout=120.0)
        steps.update()
        steps.set_description("consented patients")
        pool = asyncio.run(patients(platform.gateway_url, 4 * clients))
        steps.update()
        steps.set_description("phase (a): one replica each")
        single = run_phase(platform, "(a) 1 replica each", pool, clients=clients, seconds=seconds,
                           settle_timeout=settle_timeout)
        steps.update()
        steps.set_description(f"starting {replicas - 1} more of {', '.join(SCALED)}")
        for name in SCALED:
            for number in range(2, replicas + 1):
                platform.start_replica(name, number)
        recovery.until_settled(platform.logs, timeout=120.0)
        steps.update()
        steps.set_description(f"phase (b): {replicas} replicas each")
        scaled = run_phase(platform, f"(b) {replicas} replicas each", pool, clients=clients, seconds=seconds,
                           settle_timeout=settle_timeout)
        steps.update()
        steps.close()
        held = {key: held_partitions(path.read_text(errors="replace").splitlines())
                for key, path in platform.logs.items() if key.split("-")[0] in SCALED and path.exists()}
        echo(f"platform: {platform.infra}; topics of {partitions} partitions; {clients} clients, {seconds:.0f} s "
             f"per phase; {os.cpu_count()} cores")
    phases = [single, scaled]
    echo("\n" + phase_table(phases))
    for phase in phases:
        echo(f"\n{phase.name}: answers per gateway replica: {per_gateway(phase)}")
        echo(f"  {cpu_report(phase)}")
    if single.throughput:
        echo(f"\nthroughput (b)/(a) = {scaled.throughput / single.throughput:.2f}")
    echo("\npartitions held at the end of phase (b):\n" + sharing_table(sharing(held)))
    broken = [f"{p.name}: {problem}" for p in phases for problem in p.problems()]
    echo("\n" + ("every promise held" if not broken else "BROKEN: " + "; ".join(broken)))
    return not broken
