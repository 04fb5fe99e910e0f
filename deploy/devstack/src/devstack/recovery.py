"""How fast every consumer group is back after a broker restart, read from the services' logs.

Each subscriber logs ``consumer group G assigned [...]`` on every assignment (``shared.kafka.ResumeWithinLog``).
A group is back when its last assignment since the restart covers every topic it held before the restart that
exists again; its recovery time is that assignment's time minus the moment the broker answered again. The
broker-restart test asserts on these figures and ``clinomic recovery`` prints them for repeated restarts.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

ASSIGNED = re.compile(r"^consumer group (\S+) assigned (\[.*\])$")
#: uvicorn's first line of a service process: assignments before it belong to an earlier (killed) process.
STARTED = re.compile(r"^Started server process")


@dataclass(frozen=True)
class Assignment:
    at: datetime
    service: str
    group: str
    topics: frozenset[str]


def assignments(logs: dict[str, Path]) -> list[Assignment]:
    """Every assignment logged by the current process of each service, oldest first."""
    found: list[Assignment] = []
    for service, path in logs.items():
        mine: list[Assignment] = []
        for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
            try:
                record = json.loads(line)
                message = record["message"]
            except (ValueError, TypeError, KeyError):
                continue
            if STARTED.match(message):
                mine = []
            elif match := ASSIGNED.match(message):
                topics = frozenset(p.rsplit(":", 1)[0] for p in json.loads(match[2]))
                mine.append(Assignment(datetime.fromisoformat(record["time"]), service, match[1], topics))
        found += mine
    return sorted(found, key=lambda a: a.at)


def recovery_seconds(logs: dict[str, Path], since: datetime, existing: set[str]) -> dict[str, float | None]:
    """For each group assigned before ``since``: seconds from ``since`` to its last assignment after it, when that
    assignment covers the group's earlier topics that exist again (``existing``); None when it is not back."""
    before: dict[str, frozenset[str]] = {}
    after: dict[str, Assignment] = {}
    for assignment in assignments(logs):
        if assignment.at < since:
            if assignment.topics:
                before[assignment.group] = assignment.topics
        else:
            after[assignment.group] = assignment
    result: dict[str, float | None] = {}
    for group, topics in before.items():
        last = after.get(group)
        back = last is not None and (topics & existing) <= last.topics
        result[group] = round((last.at - since).total_seconds(), 1) if back and last else None
    return result


def label(group: str) -> str:
    """A group's name without the per-process suffix of :func:`shared.kafka.every_event_from_now`."""
    return re.sub(r"-[0-9a-f]{32}$", "-<process>", group)


def table(times: dict[str, float | None]) -> str:
    width = max((len(label(g)) for g in times), default=5)
    rows = [f"{'consumer group':<{width}}  back after (s)"]
    rows += [f"{label(g):<{width}}  {'NOT BACK' if t is None else f'{t:.1f}'}" for g, t in sorted(times.items())]
    return "\n".join(rows)


async def topics_on(bootstrap_servers: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def until_back(logs: dict[str, Path], since: datetime, bootstrap_servers: str, *, timeout: float,
                     settle: float = 3.0) -> dict[str, float | None]:
    """Wait (up to ``timeout`` s) until every group is back and none was reassigned for ``settle`` s; the times."""
    deadline = time.monotonic() + timeout
    while True:
        times = recovery_seconds(logs, since, await topics_on(bootstrap_servers))
        quiet = (datetime.now(UTC) - since).total_seconds() - max((t or 0.0 for t in times.values()), default=0.0)
        if (times and all(t is not None for t in times.values()) and quiet >= settle) or time.monotonic() > deadline:
            return times
        await asyncio.sleep(0.5)


def until_settled(logs: dict[str, Path], *, timeout: float, settle: float = 3.0) -> None:
    """Wait until the groups have been assigned and none was reassigned for ``settle`` s (after a start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = assignments(logs)
        if found and (datetime.now(UTC) - found[-1].at).total_seconds() >= settle:
            return
        time.sleep(0.5)


def summary(rounds: list[dict[str, float | None]]) -> str:
    """Per group across restarts: min, median, max seconds (a group never back counts as missing)."""
    groups = sorted({label(g) for times in rounds for g in times})
    rows = [f"{'consumer group':<34} {'min':>5} {'median':>7} {'max':>5} {'not back':>9}"]
    for name in groups:
        values = [t for times in rounds for g, t in times.items() if label(g) == name]
        seen = [t for t in values if t is not None]
        rows.append(f"{name:<34} {min(seen, default=0):>5.1f} {statistics.median(seen) if seen else 0:>7.1f} "
                    f"{max(seen, default=0):>5.1f} {len(values) - len(seen):>9}")
    return "\n".join(rows)


def restart_rounds(state_dir: Path, *, restarts: int, outage: float, timeout: float,
                   echo: Callable[[str], None]) -> list[dict[str, float | None]]:
    """Start a platform on the bundled broker, restart the broker ``restarts`` times (down for ``outage`` s),
    and time every consumer group's return each time."""
    from devstack import infra, stack
    from shared.kafka import ensure_topics
    from shared.settings import CommonSettings

    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    rounds: list[dict[str, float | None]] = []
    with stack.platform(state_dir, ports=ports, ephemeral=True, extra_env={"DEBUG": "false"}) as platform:
        broker = platform.bundled_broker
        if broker is None:
            raise SystemExit("clinomic recovery restarts the bundled broker: unset KAFKA_BOOTSTRAP_SERVERS")
        partitions = int(platform.env["KAFKA_TOPIC_PARTITIONS"])
        polled = CommonSettings.model_validate({k.lower(): v for k, v in platform.env.items()})
        echo(f"consumers poll every {polled.kafka_fetch_max_wait_ms} ms on the classify path (every "
             f"{polled.kafka_idle_fetch_max_wait_ms} ms when quiet), every "
             f"{polled.kafka_background_fetch_max_wait_ms} ms off it")
        until_settled(platform.logs, timeout=timeout)
        for n in range(1, restarts + 1):
            broker.stop()
            time.sleep(outage)
            broker.start()
            since = datetime.now(UTC)
            asyncio.run(ensure_topics(broker.bootstrap_servers, partitions=partitions))
            times = asyncio.run(until_back(platform.logs, since, broker.bootstrap_servers, timeout=timeout))
            rounds.append(times)
            echo(f"\nrestart {n} of {restarts} (broker down {outage:.0f} s):\n{table(times)}")
    return rounds
