"""Subscriber: assess every requested screening, micro-batching the requests that arrive together."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from inference.model import B12Model
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events import screening as ev
from shared.events.envelope import derived_event_id
from shared.kafka import at_least_once, publish
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
SERVICE_ACTOR = Actor(role="service", service="inference")
RequestEnvelope = Envelope[ev.ScreeningRequestedV1]


def classified(model: B12Model, requests: list[RequestEnvelope]) -> list[Envelope[Any]]:
    """One CatBoost call per stage for the whole batch; each result keeps the id and cause of its request."""
    features = np.array([r.payload.cbc.as_features() for r in requests], dtype=np.float64)
    assessments = model.assess(features)
    return [
        new_envelope(
            ev.ScreeningClassifiedV1(request=r.payload, assessment=a),
            event_type=ev.SCREENING_CLASSIFIED[0], event_version=ev.SCREENING_CLASSIFIED[1],
            tenant_id=r.tenant_id, actor=SERVICE_ACTOR, causation=r,
            event_id=derived_event_id(r.event_id, ev.SCREENING_CLASSIFIED[0]),
        )
        for r, a in zip(requests, assessments, strict=True)
    ]


def register(broker: KafkaBroker, settings: CommonSettings, model: B12Model, batch_size: int) -> None:
    @broker.subscriber(Topic.SCREENING_REQUESTED, batch=True, max_records=batch_size, batch_timeout_ms=5,
                       **at_least_once(settings, "inference"))
    async def assess_screenings(messages: list[bytes]) -> None:
        requests = []
        for raw in messages:
            try:
                requests.append(RequestEnvelope.model_validate_json(raw))
            except ValidationError as exc:
                # The gateway validates every CBC; an unreadable command is a contract breach. It stays in the
                # audit ledger (which reads every topic) and is logged by field only, never by value.
                log.error("unreadable screening command skipped: %s",
                          [".".join(map(str, e["loc"])) for e in exc.errors()])
        if not requests:
            return
        outgoing = await asyncio.to_thread(classified, model, requests) if len(requests) > 32 \
            else classified(model, requests)
        await asyncio.gather(*(publish(broker, Topic.SCREENING_CLASSIFIED, e,
                                       key=str(e.payload.request.screening_id)) for e in outgoing))
