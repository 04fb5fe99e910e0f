"""Poison messages: bounded retries, then the dead-letter topic; and the operator's view of that topic.

Under at-least-once delivery a handler that raises has its message redelivered, so a message it can never
process (an unknown schema version, corrupt bytes, a handler bug) would block its partition forever. Every
at-least-once subscriber is therefore wrapped by :func:`guarded` (``shared.kafka.subscribe`` does it):

- an error of a dependency (database, broker, network: :func:`is_transient`) is retried without limit, as
  before: dead-lettering would only move an outage into the dead-letter topic;
- any other error counts as one failed attempt of that message (topic, partition, offset) in this process;
  a failing batch is split and each message handled alone, so only the poison one is counted; after
  :attr:`RetryPolicy.attempts` failures the message goes to ``clinomic.deadletter`` with its original
  bytes, key and headers, plus headers naming its topic, partition, offset, consumer group, the reason and
  the attempts; the offset is then committed and the partition moves on.

See ``docs/reliability.md`` (design, why the ledger records dead letters, operator commands).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from shared.metrics import DEAD_LETTERS
from shared.observability import redact
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

DEAD_LETTER_TOPIC = "clinomic.deadletter"
#: Headers added to a dead letter; every other header is the original message's own.
PREFIX = "dead-letter-"
TOPIC, PARTITION, OFFSET, GROUP, REASON, ATTEMPTS, AT = (
    f"{PREFIX}{name}" for name in ("topic", "partition", "offset", "group", "reason", "attempts", "at")
)
#: Header of a replayed message: the dead letter (partition:offset) it came from.
REPLAYED_FROM = "replayed-from-dead-letter"
#: SQLSTATE classes of a database that is away or busy, not of a bad message: connection exception,
#: transaction rollback (deadlock, serialisation), insufficient resources, operator intervention, system error.
TRANSIENT_SQL_CLASSES = {"08", "40", "53", "57", "58"}
#: Broker errors caused by the message itself; every other broker error means the broker is away or busy.
MESSAGE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)



@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff: float = 0.2
    max_backoff: float = 5.0

    def backoff(self, failures: int) -> float:
        return min(self.max_backoff, self.first_backoff * 2 ** max(failures - 1, 0))


def _sqlstate(exc: DBAPIError) -> str | None:
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says a dependency is away or busy (retry without limit) rather than the message is bad."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError | TimeoutError):
            return True
        if isinstance(current, KafkaError):
            return not isinstance(current, MESSAGE_ERRORS)
        if isinstance(current, DBAPIError):
            if current.statement is None:  # raised while connecting: the server is away or refusing connections
                return True
            state = _sqlstate(current)
            if state is not None:
                return state[:2] in TRANSIENT_SQL_CLASSES or state == "55P03"
            return current.connection_invalidated or isinstance(current, OperationalError | InterfaceError)
        current = current.__cause__ or current.__context__
    return False


def reason_of(exc: BaseException) -> str:
    """Why a message failed, without values: field paths for a validation error, else the redacted message."""
    if isinstance(exc, ValidationError):
        fields = sorted({".".join(map(str, e["loc"])) or "(root)" for e in exc.errors()})
        return f"ValidationError: {', '.join(fields)}"[:500]
    return f"{type(exc).__name__}: {redact(str(exc))}"[:500]


def reason_class(reason: str) -> str:
    """The exception class a :func:`reason_of` names: a bounded metric label, unlike the reason itself."""
    return reason.split(":", 1)[0].strip() or "unknown"


@dataclass(frozen=True)
class Part:
    """The ``message`` a wrapped handler receives when it is retried on one message of its batch alone."""

    raw_message: tuple[Any, ...]


def _key(record: Any) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


async def dead_letter(broker: KafkaBroker, raw: bytes, record: Any, *, group: str, reason: str,
                      attempts: int) -> None:
    """Publish ``raw`` (the original bytes) to the dead-letter topic with where it came from and why."""
    headers = {name: value.decode(errors="replace") for name, value in (record.headers or ())}
    headers |= {TOPIC: record.topic, PARTITION: str(record.partition), OFFSET: str(record.offset), GROUP: group,
                REASON: reason, ATTEMPTS: str(attempts), AT: datetime.now(UTC).isoformat()}
    # FastStream adds a correlation id header of its own unless given one: keep the original's.
    await broker.publish(raw, topic=DEAD_LETTER_TOPIC, key=record.key, headers=headers,
                         correlation_id=headers.get("correlation_id"))
    DEAD_LETTERS.labels(group, record.topic, reason_class(reason)).inc()
    log.error("dead-lettered %s[%d]@%d for consumer group %s after %d attempts: %s",
              record.topic, record.partition, record.offset, group, attempts, reason)


def guarded(broker: KafkaBroker, handler: Callable[..., Awaitable[Any]], *, group: str, batch: bool,
            policy: RetryPolicy | None = None) -> Callable[..., Awaitable[None]]:
    """``handler`` with bounded retries of poison messages and a dead letter after the last one.

    A handler that declares a ``message`` parameter receives the delivery's message, or a :class:`Part`
    (``raw_message``: the one record) while one message of a failed batch is retried alone.
    """
    policy = policy or RetryPolicy()
    wants_message = "message" in inspect.signature(handler).parameters
    failures: dict[tuple[str, int, int], int] = {}

    async def call(body: Any, message: Any) -> None:
        await (handler(body, message) if wants_message else handler(body))

    async def settle(raw: bytes, record: Any, exc: Exception) -> bool:
        """Count a failure of one message; dead-letter it after the last attempt. True when it is settled."""
        if is_transient(exc):
            raise exc
        failed = failures.get(_key(record), 0) + 1
        if failed < policy.attempts:
            failures[_key(record)] = failed
            log.warning("%s[%d]@%d failed for consumer group %s (attempt %d of %d): %s", record.topic,
                        record.partition, record.offset, group, failed, policy.attempts, reason_of(exc))
            return False
        failures.pop(_key(record), None)
        if record.topic == DEAD_LETTER_TOPIC:  # never a dead letter of a dead letter: that could loop
            log.error("dead letter %d@%d skipped by consumer group %s: %s", record.partition, record.offset,
                      group, reason_of(exc))
            return True
        await dead_letter(broker, raw, record, group=group, reason=reason_of(exc), attempts=failed)
        return True

    async def guarded_handler(body: Any, message: KafkaMessage) -> None:
        records: Sequence[Any] = message.raw_message if batch else (message.raw_message,)
        try:
            await call(body, message)
        except Exception as exc:
            if is_transient(exc):
                log.warning("consumer group %s: a dependency failed (%s); the messages will be redelivered",
                            group, reason_of(exc))
                await asyncio.sleep(policy.first_backoff)
                raise
            pending = await (isolate(body, records) if batch else _single(body, records[0], exc))
            if pending:
                await asyncio.sleep(policy.backoff(pending))
                raise
        else:
            for record in records if failures else ():
                failures.pop(_key(record), None)

    async def _single(raw: bytes, record: Any, exc: Exception) -> int:
        return 0 if await settle(raw, record, exc) else failures[_key(record)]

    async def isolate(body: list[bytes], records: Sequence[Any]) -> int:
        """Handle each message of a failed batch alone; the most failures of one still pending (0: none)."""
        pending = 0
        for raw, record in zip(body, records, strict=True):
            try:
                await call([raw], Part((record,)))
            except Exception as exc:
                if not await settle(raw, record, exc):
                    pending = max(pending, failures[_key(record)])
            else:
                failures.pop(_key(record), None)
        return pending

    guarded_handler.__name__ = getattr(handler, "__name__", "handler")
    guarded_handler.__qualname__ = getattr(handler, "__qualname__", guarded_handler.__name__)
    guarded_handler.__doc__ = handler.__doc__
    return guarded_handler


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter topic: where it sits there, where it came from, and the original."""

    partition: int
    offset: int
    topic: str
    source_partition: int
    source_offset: int
    group: str
    reason: str
    attempts: int
    at: str
    key: bytes | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)  # the original message's own

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


def as_dead_letter(record: Any) -> DeadLetter:
    headers = {name: value.decode(errors="replace") for name, value in (record.headers or ())}
    return DeadLetter(
        partition=record.partition, offset=record.offset, topic=headers.get(TOPIC, "?"),
        source_partition=int(headers.get(PARTITION, -1)), source_offset=int(headers.get(OFFSET, -1)),
        group=headers.get(GROUP, "?"), reason=headers.get(REASON, ""), attempts=int(headers.get(ATTEMPTS, 0)),
        at=headers.get(AT, ""), key=record.key, value=record.value,
        headers={k: v for k, v in headers.items() if not k.startswith(PREFIX)},
    )


def security_options(settings: CommonSettings | None) -> dict[str, Any]:
    """The TLS/SASL options of the operator's clients below: the services' own (``shared.kafka.client_options``),
    from ``settings`` or, by default, the environment (``KAFKA_SECURITY_PROTOCOL`` and its companions)."""
    from shared.kafka import client_options  # shared.kafka imports this module: imported when first needed

    return client_options(settings or CommonSettings())


def dead_letter_reader(bootstrap_servers: str, *, settings: CommonSettings | None = None,
                       timeout: float = 10.0) -> AIOKafkaConsumer:
    """A consumer without a group (it commits nothing) that connects as the services do."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=5,
                            request_timeout_ms=int(timeout * 1000), **security_options(settings))


def replay_producer(bootstrap_servers: str, *, settings: CommonSettings | None = None) -> AIOKafkaProducer:
    """A producer with the services' acknowledgement (``acks=all``) and connection security."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=False,
                            **security_options(settings))


async def read_dead_letters(bootstrap_servers: str, *, settings: CommonSettings | None = None,
                            timeout: float = 10.0) -> list[DeadLetter]:
    """Every message of the dead-letter topic, oldest first (read without a consumer group: commits nothing)."""
    consumer = dead_letter_reader(bootstrap_servers, settings=settings, timeout=timeout)
    await consumer.start()
    try:
        if DEAD_LETTER_TOPIC not in await consumer.topics():
            return []
        partitions = [TopicPartition(DEAD_LETTER_TOPIC, p)
                      for p in sorted(consumer.partitions_for_topic(DEAD_LETTER_TOPIC) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[DeadLetter] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not read {DEAD_LETTER_TOPIC} to its end within {timeout} s")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                letters += [as_dead_letter(r) for r in records]
        return sorted(letters, key=lambda letter: (letter.at, letter.partition, letter.offset))
    finally:
        await consumer.stop()


async def replay(bootstrap_servers: str, letters: Sequence[DeadLetter], *,
                 settings: CommonSettings | None = None) -> int:
    """Publish each letter's original bytes to its original topic again (consumers ignore duplicates, so a
    group that had processed it is unaffected); returns how many were sent."""
    producer = replay_producer(bootstrap_servers, settings=settings)
    await producer.start()
    try:
        for letter in letters:
            headers = [(k, v.encode()) for k, v in letter.headers.items()] + [(REPLAYED_FROM, letter.ref.encode())]
            await producer.send_and_wait(letter.topic, letter.value, key=letter.key, headers=headers)
    finally:
        await producer.stop()
    return len(letters)
