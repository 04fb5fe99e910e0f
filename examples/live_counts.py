"""Live counts of screenings per risk class and label, kept from the de-identified analytics stream.

A runnable example of a downstream analytics consumer (see docs/event-stream.md). It subscribes to
``clinomic.analytics.screenings``, counts each event once (delivery is at least once, so a repeated
``event_id`` is dropped), skips event types and versions it does not know with a warning, and prints the
counts after every screening it counts::

    uv run python examples/live_counts.py --bootstrap 127.0.0.1:9092 --from-beginning
    uv run python examples/live_counts.py --bootstrap 127.0.0.1:9092 --json --tenant <organisation id>

It needs aiokafka and the standard library only: a consumer does not import the platform's code, it reads
the documented JSON (docs/asyncapi.json). The counts live in memory; with ``--group`` the consumer resumes
after its committed offsets, so a restarted one counts only what arrives after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer

TOPIC = "clinomic.analytics.screenings"
EVENT_TYPE = "ScreeningRecordedDeidentified"
#: The versions of the event this consumer understands; others are skipped, never guessed at.
KNOWN_VERSIONS = frozenset({1})


@dataclass
class LiveCounts:
    """Screenings counted once each, per status, risk class and label."""

    seen: set[str] = field(default_factory=set)
    per_status: Counter[str] = field(default_factory=Counter)
    per_risk_class: Counter[str] = field(default_factory=Counter)
    per_label: Counter[str] = field(default_factory=Counter)

    def add(self, envelope: dict[str, Any]) -> bool:
        """Count a screening; False when its event id was counted already (a redelivery)."""
        if envelope["event_id"] in self.seen:
            return False
        self.seen.add(envelope["event_id"])
        screening = envelope["payload"]
        self.per_status[screening["status"]] += 1
        if screening["risk_class"] is not None:
            self.per_risk_class[str(screening["risk_class"])] += 1
        if screening["label"] is not None:
            self.per_label[screening["label"]] += 1
        return True

    def as_json(self) -> str:
        return json.dumps({"screenings": len(self.seen), "per_status": dict(sorted(self.per_status.items())),
                           "per_risk_class": dict(sorted(self.per_risk_class.items())),
                           "per_label": dict(sorted(self.per_label.items()))})

    def as_text(self) -> str:
        classes = " ".join(f"{c}:{n}" for c, n in sorted(self.per_risk_class.items()))
        labels = " ".join(f"{label}:{n}" for label, n in sorted(self.per_label.items()))
        return f"screenings {len(self.seen)} | risk class {classes or '-'} | label {labels or '-'}"


async def follow(args: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=args.bootstrap, group_id=args.group,
        enable_auto_commit=args.group is not None,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        fetch_max_wait_ms=5,  # the bundled broker answers a fetch only when this wait is over
    )
    counts, warned = LiveCounts(), set[tuple[Any, Any]]()
    await consumer.start()
    print(f"following {TOPIC} on {args.bootstrap}", file=sys.stderr, flush=True)
    try:
        async for message in consumer:
            envelope = json.loads(message.value)
            kind = (envelope.get("event_type"), envelope.get("event_version"))
            if kind[0] != EVENT_TYPE or kind[1] not in KNOWN_VERSIONS:
                if kind not in warned:
                    warned.add(kind)
                    print(f"skipping {kind[0]} version {kind[1]}: this consumer knows {EVENT_TYPE} versions "
                          f"{sorted(KNOWN_VERSIONS)}", file=sys.stderr, flush=True)
                continue
            if args.tenant and envelope["tenant_id"] != args.tenant:
                continue
            if counts.add(envelope):
                print(counts.as_json() if args.json else counts.as_text(), flush=True)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--group", help="consumer group (commits offsets); default: none, nothing committed")
    parser.add_argument("--from-beginning", action="store_true",
                        help="count the topic's whole history, not only what arrives from now on")
    parser.add_argument("--tenant", help="count only this organisation's screenings (its id)")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object per line")
    try:
        asyncio.run(follow(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
