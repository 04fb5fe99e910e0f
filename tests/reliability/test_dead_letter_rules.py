"""Poison messages are retried a bounded number of times and then dead-lettered; outages are not poison.

The wrapper is exercised directly with stand-in records and a broker that records what is published, the way
FastStream calls it: once per delivery, the delivery redelivered whenever the wrapper raises.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared import deadletter
from shared.deadletter import DEAD_LETTER_TOPIC, Part, RetryPolicy, guarded, is_transient, reason_of

POLICY = RetryPolicy(attempts=3, first_backoff=0.001, max_backoff=0.001)


@dataclass
class Record:
    offset: int
    value: bytes = b"{}"
    topic: str = "clinomic.screening.classified"
    partition: int = 0
    key: bytes | None = b"k"
    headers: tuple[tuple[str, bytes], ...] = (("event_type", b"ScreeningClassified"),)


@dataclass
class Published:
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, body: bytes, *, topic: str, key: bytes | None, headers: dict[str, str],
                      correlation_id: str | None = None) -> None:
        self.sent.append({"body": body, "topic": topic, "key": key, "headers": headers})


@dataclass
class Message:
    raw_message: Any


async def deliver_until_settled(handler: Any, body: Any, message: Message, limit: int = 20) -> int:
    """Deliver as the subscriber does (again after every raise); how many deliveries it took."""
    for delivery in range(1, limit + 1):
        try:
            await handler(body, message)
            return delivery
        except Exception:
            continue
    raise AssertionError(f"still failing after {limit} deliveries")


class SqlState(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


async def test_a_message_a_handler_keeps_failing_on_is_dead_lettered_with_its_bytes_and_origin() -> None:
    broker = Published()

    async def handler(raw: bytes) -> None:
        raise KeyError("assessment")

    record = Record(offset=41, value=b'{"event_id": "x"}')
    wrapped = guarded(broker, handler, group="screening-recorder", batch=False, policy=POLICY)  # type: ignore[arg-type]
    assert await deliver_until_settled(wrapped, record.value, Message(record)) == POLICY.attempts
    [letter] = broker.sent
    assert letter["topic"] == DEAD_LETTER_TOPIC and letter["body"] == record.value and letter["key"] == b"k"
    headers = letter["headers"]
    assert headers["event_type"] == "ScreeningClassified"  # the original headers travel with it
    assert (headers[deadletter.TOPIC], headers[deadletter.PARTITION], headers[deadletter.OFFSET]) == (
        "clinomic.screening.classified", "0", "41")
    assert headers[deadletter.GROUP] == "screening-recorder" and headers[deadletter.ATTEMPTS] == "3"
    assert headers[deadletter.REASON].startswith("KeyError")


async def test_only_the_poison_message_of_a_batch_is_dead_lettered_and_the_rest_is_handled() -> None:
    broker = Published()
    handled: list[bytes] = []

    async def handler(messages: list[bytes], message: Any) -> None:
        if b"poison" in messages:
            raise ValueError("unknown event version")
        handled.extend(messages)

    records = (Record(1, b"a"), Record(2, b"poison"), Record(3, b"c"))
    wrapped = guarded(broker, handler, group="audit-ledger", batch=True, policy=POLICY)  # type: ignore[arg-type]
    await deliver_until_settled(wrapped, [r.value for r in records], Message(records))
    assert [letter["body"] for letter in broker.sent] == [b"poison"]
    assert set(handled) == {b"a", b"c"}  # handled (perhaps more than once: consumers are idempotent)


async def test_a_handler_retried_on_one_message_alone_is_handed_that_record() -> None:
    seen: list[Any] = []

    async def handler(messages: list[bytes], message: Any) -> None:
        seen.append(message)
        if len(messages) > 1:
            raise ValueError("a bad one in there")

    records = (Record(1), Record(2))
    wrapped = guarded(Published(), handler, group="g", batch=True, policy=POLICY)  # type: ignore[arg-type]
    await deliver_until_settled(wrapped, [b"1", b"2"], Message(records))
    assert [part.raw_message for part in seen[1:]] == [(records[0],), (records[1],)]
    assert all(isinstance(part, Part) for part in seen[1:])


async def test_an_unavailable_dependency_is_retried_without_limit_and_never_dead_lettered() -> None:
    broker = Published()
    calls = 0

    async def handler(raw: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls <= 10:
            raise ConnectionRefusedError("database away")

    wrapped = guarded(broker, handler, group="g", batch=False, policy=POLICY)  # type: ignore[arg-type]
    assert await deliver_until_settled(wrapped, b"x", Message(Record(7))) == 11
    assert broker.sent == []


async def test_a_message_that_succeeds_before_its_last_attempt_is_not_dead_lettered() -> None:
    broker = Published()
    calls = 0

    async def handler(raw: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls < POLICY.attempts:
            raise RuntimeError("flaky")

    wrapped = guarded(broker, handler, group="g", batch=False, policy=POLICY)  # type: ignore[arg-type]
    await deliver_until_settled(wrapped, b"x", Message(Record(8)))
    assert broker.sent == []


async def test_a_dead_letter_the_ledger_cannot_record_is_skipped_never_dead_lettered_again() -> None:
    broker = Published()

    async def handler(messages: list[bytes], message: Any) -> None:
        raise ValueError("cannot record")

    record = Record(3, topic=DEAD_LETTER_TOPIC)
    wrapped = guarded(broker, handler, group="audit-ledger", batch=True, policy=POLICY)  # type: ignore[arg-type]
    await deliver_until_settled(wrapped, [record.value], Message((record,)))
    assert broker.sent == []


@pytest.mark.parametrize("exc", [
    ConnectionResetError(), TimeoutError(), asyncio.TimeoutError(),
    DBAPIError("SELECT 1", {}, SqlState("08006")),  # connection failure
    DBAPIError("INSERT", {}, SqlState("40P01")),  # deadlock
    DBAPIError("INSERT", {}, SqlState("57P01")),  # admin shutdown
])
def test_errors_of_an_unavailable_dependency_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bad"), KeyError("x"), TypeError(),
    IntegrityError("INSERT", {}, SqlState("23502")),  # not-null violation
    DBAPIError("INSERT", {}, SqlState("22021")),  # invalid byte sequence (a NUL in text)
])
def test_errors_of_the_message_or_the_handler_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_a_transient_error_wrapped_in_another_is_still_transient() -> None:
    try:
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError as inner:
            raise RuntimeError("publish failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_a_dead_letter_reason_names_fields_never_their_values() -> None:
    class Patient(BaseModel):
        external_id: int

    with pytest.raises(ValidationError) as caught:
        Patient.model_validate({"external_id": "Jane Example"})
    reason = reason_of(caught.value)
    assert "external_id" in reason and "Jane" not in reason
