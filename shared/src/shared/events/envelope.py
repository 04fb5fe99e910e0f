"""The one envelope every event travels in; payloads are versioned per event type."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

P = TypeVar("P")


class Actor(BaseModel):
    """Who caused the event: a user id and role, never a name."""

    model_config = ConfigDict(frozen=True)

    user_id: uuid.UUID | None = None
    role: str
    service: str | None = None


class Envelope(BaseModel, Generic[P]):
    """Metadata shared by all events. ``event_id`` is the idempotency key for every consumer."""

    model_config = ConfigDict(frozen=True)

    event_id: uuid.UUID
    event_type: str
    event_version: int = Field(ge=1)
    occurred_at: datetime
    tenant_id: uuid.UUID | None
    actor: Actor
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    payload: P


RawEnvelope = Envelope[dict[str, Any]]


def event_kind(raw: bytes, headers: Iterable[tuple[str, bytes]]) -> tuple[str, int]:
    """An event's type and version, from the headers every platform publish carries (so a consumer skips an
    event without parsing it), else from the envelope. Raises ``ValueError`` for an unreadable one."""
    found = dict(headers)
    if "event_type" in found and "event_version" in found:
        return found["event_type"].decode(), int(found["event_version"])
    head = RawEnvelope.model_validate_json(raw)
    return head.event_type, head.event_version


def new_envelope(
    payload: BaseModel,
    *,
    event_type: str,
    event_version: int,
    tenant_id: uuid.UUID | None,
    actor: Actor,
    correlation_id: uuid.UUID | None = None,
    causation: Envelope[Any] | None = None,
    event_id: uuid.UUID | None = None,
) -> Envelope[Any]:
    """Wrap a payload; a caused event inherits the correlation id of its cause.

    Pass a deterministic ``event_id`` when the event may be re-emitted (after a crash or redelivery),
    so that downstream consumers see the same id and ignore the copy.
    """
    if causation is not None:
        correlation_id = causation.correlation_id
    return Envelope[type(payload)](  # type: ignore[misc]
        event_id=event_id or uuid.uuid4(),
        event_type=event_type,
        event_version=event_version,
        occurred_at=datetime.now(UTC),
        tenant_id=tenant_id,
        actor=actor,
        correlation_id=correlation_id or uuid.uuid4(),
        causation_id=causation.event_id if causation is not None else None,
        payload=payload,
    )


def derived_event_id(cause_id: uuid.UUID, event_type: str) -> uuid.UUID:
    """The id of the event a handler emits for a given cause: stable across redeliveries."""
    return uuid.uuid5(cause_id, event_type)
