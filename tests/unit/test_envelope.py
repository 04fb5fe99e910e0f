"""Envelopes: caused events keep their correlation, and re-emitted events keep their id."""

from __future__ import annotations

import uuid

from pydantic import BaseModel

from shared.events import Actor, new_envelope
from shared.events.envelope import derived_event_id


class Ping(BaseModel):
    n: int


ACTOR = Actor(role="service", service="test")


def test_a_caused_event_inherits_correlation_and_names_its_cause() -> None:
    cause = new_envelope(Ping(n=1), event_type="Ping", event_version=1, tenant_id=None, actor=ACTOR)
    effect = new_envelope(Ping(n=2), event_type="Pong", event_version=1, tenant_id=None, actor=ACTOR, causation=cause)
    assert effect.correlation_id == cause.correlation_id
    assert effect.causation_id == cause.event_id


def test_the_derived_id_of_an_effect_is_the_same_on_every_redelivery() -> None:
    cause = uuid.uuid4()
    assert derived_event_id(cause, "ScreeningClassified") == derived_event_id(cause, "ScreeningClassified")
    assert derived_event_id(cause, "ScreeningClassified") != derived_event_id(cause, "ScreeningRecorded")


def test_an_envelope_round_trips_through_json() -> None:
    envelope = new_envelope(Ping(n=3), event_type="Ping", event_version=1, tenant_id=uuid.uuid4(), actor=ACTOR)
    again = type(envelope).model_validate_json(envelope.model_dump_json())
    assert again == envelope
