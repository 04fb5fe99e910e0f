"""Live counts of screenings per risk class and label, kept from the de-identified analytics stream.

A runnable example of a downstream analytics consumer (see docs/event-stream.md). It subscribes to
``clinomic.analytics.screenings``, counts each event once (delivery is at least once, so a repeated
``event_id`` is dropped) and every screening in it (a single screening's event holds one, a bulk chunk's
event one per row), skips event types and versions it does not know with a warning, and prints the counts
after every event it counts::

    uv run python examples/live_counts.py --bootstrap 127.0.0.1:9092 --from-beginning
    uv run python examples/live_counts.py --bootstrap 127.0.0.1:9092 --json --tenant <organisation id>
    KAFKA_SASL_PASSWORD=... uv run python examples/live_counts.py --bootstrap kafka:9093 \
        --security-protocol SASL_SSL --sasl-mechanism SCRAM-SHA-512 --sasl-username analytics --ssl-cafile ca.crt

It needs aiokafka and the standard library only: a consumer does not import the platform's code, it reads
the documented JSON (docs/asyncapi.json). The counts live in memory; with ``--group`` the consumer resumes
after its committed offsets, so a restarted one counts only what arrives after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context

TOPIC = "clinomic.analytics.screenings"
#: The event types and versions this consumer understands; others are skipped, never guessed at.
KNOWN = {"ScreeningRecordedDeidentified": frozenset({1}), "ScreeningBatchRecordedDeidentified": frozenset({1})}


@dataclass
class LiveCounts:
    """Screenings counted once each, per status, risk class and label."""

    seen: set[str] = field(default_factory=set)
    screenings: int = 0
    per_status: Counter[str] = field(default_factory=Counter)
    per_risk_class: Counter[str] = field(default_factory=Counter)
    per_label: Counter[str] = field(default_factory=Counter)

    def add(self, envelope: dict[str, Any]) -> bool:
        """Count an event's screenings; False when its event id was counted already (a redelivery)."""
        if envelope["event_id"] in self.seen:
            return False
        self.seen.add(envelope["event_id"])
        payload = envelope["payload"]
        chunk = envelope["event_type"] == "ScreeningBatchRecordedDeidentified"
        for screening in payload["screenings"] if chunk else [payload]:
            self.screenings += 1
            self.per_status[screening["status"]] += 1
            if screening["risk_class"] is not None:
                self.per_risk_class[str(screening["risk_class"])] += 1
            if screening["label"] is not None:
                self.per_label[screening["label"]] += 1
        return True

    def as_json(self) -> str:
        return json.dumps({"screenings": self.screenings, "per_status": dict(sorted(self.per_status.items())),
                           "per_risk_class": dict(sorted(self.per_risk_class.items())),
                           "per_label": dict(sorted(self.per_label.items()))})

    def as_text(self) -> str:
        classes = " ".join(f"{c}:{n}" for c, n in sorted(self.per_risk_class.items()))
        labels = " ".join(f"{label}:{n}" for label, n in sorted(self.per_label.items()))
        return f"screenings {self.screenings} | risk class {classes or '-'} | label {labels or '-'}"


def security_options(args: argparse.Namespace) -> dict[str, Any]:
    """TLS and SASL of the consumer, from the same settings the platform's services take (docs/deployment.md);
    with TLS the broker's certificate and host name are verified."""
    options: dict[str, Any] = {"security_protocol": args.security_protocol}
    if args.security_protocol.endswith("SSL"):
        options["ssl_context"] = create_ssl_context(cafile=args.ssl_cafile)
    if args.security_protocol.startswith("SASL_"):
        if not (args.sasl_mechanism and args.sasl_username and args.sasl_password):
            raise SystemExit(f"{args.security_protocol} needs --sasl-mechanism, --sasl-username and "
                             "KAFKA_SASL_PASSWORD (or --sasl-password)")
        options |= {"sasl_mechanism": args.sasl_mechanism, "sasl_plain_username": args.sasl_username,
                    "sasl_plain_password": args.sasl_password}
    return options


def consumer_for(args: argparse.Namespace) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        TOPIC, bootstrap_servers=args.bootstrap, group_id=args.group,
        enable_auto_commit=args.group is not None,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        fetch_max_wait_ms=5,  # the bundled broker answers a fetch only when this wait is over
        **security_options(args),
    )


async def follow(args: argparse.Namespace) -> None:
    consumer = consumer_for(args)
    counts, warned = LiveCounts(), set[tuple[Any, Any]]()
    await consumer.start()
    print(f"following {TOPIC} on {args.bootstrap}", file=sys.stderr, flush=True)
    try:
        async for message in consumer:
            envelope = json.loads(message.value)
            kind = (envelope.get("event_type"), envelope.get("event_version"))
            if kind[1] not in KNOWN.get(kind[0], ()):
                if kind not in warned:
                    warned.add(kind)
                    print(f"skipping {kind[0]} version {kind[1]}: this consumer knows "
                          + ", ".join(f"{t} versions {sorted(v)}" for t, v in KNOWN.items()),
                          file=sys.stderr, flush=True)
                continue
            if args.tenant and envelope["tenant_id"] != args.tenant:
                continue
            if counts.add(envelope):
                print(counts.as_json() if args.json else counts.as_text(), flush=True)
    finally:
        await consumer.stop()


def arguments() -> argparse.ArgumentParser:
    """The options; the connection's default to the platform's own variables (``KAFKA_*``)."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--group", help="consumer group (commits offsets); default: none, nothing committed")
    parser.add_argument("--from-beginning", action="store_true",
                        help="count the topic's whole history, not only what arrives from now on")
    parser.add_argument("--tenant", help="count only this organisation's screenings (its id)")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object per line")
    parser.add_argument("--security-protocol", default=env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
                        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                        help="as KAFKA_SECURITY_PROTOCOL (its default)")
    parser.add_argument("--sasl-mechanism", default=env("KAFKA_SASL_MECHANISM"),
                        choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                        help="default: KAFKA_SASL_MECHANISM")
    parser.add_argument("--sasl-username", default=env("KAFKA_SASL_USERNAME"),
                        help="default: KAFKA_SASL_USERNAME")
    parser.add_argument("--sasl-password", default=env("KAFKA_SASL_PASSWORD"),
                        help="default: KAFKA_SASL_PASSWORD (preferred: a command line is visible to others)")
    parser.add_argument("--ssl-cafile", default=env("KAFKA_SSL_CAFILE"),
                        help="the brokers' CA bundle (PEM); default: KAFKA_SSL_CAFILE, else the system's")
    return parser


def main() -> None:
    try:
        asyncio.run(follow(arguments().parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
