"""The de-identified analytics stream: each recorded screening, re-published without what names its patient.

A subscriber of ``clinomic.screening.recorded`` reads the stored screening's facts (never the patients table,
so no name or external id is at hand) and publishes ``ScreeningRecordedDeidentified`` on
``clinomic.analytics.screenings`` (see ``shared.events.analytics`` and docs/event-stream.md). The event id
is derived from the ``ScreeningRecorded`` event's, itself derived from the screening id, so a redelivery or
a re-announcement publishes the same event again, which consumers drop by id.

The pure part (pseudonym, age band, the mapping) comes first; the subscriber after it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections import defaultdict
from datetime import UTC
from typing import Any

from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from screening import store
from screening.settings import ScreeningSettings
from shared.db import in_schema
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events import analytics as an
from shared.events import screening as ev
from shared.events.envelope import derived_event_id
from shared.kafka import at_least_once, publish_many, subscribe

log = logging.getLogger(__name__)
SERVICE_ACTOR = Actor(role="service", service="screening")
RecordedEnvelope = Envelope[ev.ScreeningRecordedV1]
#: Ages from this one up share one band, so the oldest patients do not stand out.
OLDEST_BAND = 90

# -- pure ------------------------------------------------------------------------------------------------


def patient_key(secret: bytes, tenant: uuid.UUID, patient_id: uuid.UUID) -> str:
    """HMAC-SHA256 of (organisation, patient record id): stable in one organisation, unrelated across them.

    Both ids are 16 bytes, so the message is unambiguous; the key is truncated to 128 bits.
    """
    message = b"clinomic-analytics-patient|" + tenant.bytes + patient_id.bytes
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:an.PATIENT_KEY_HEX_DIGITS]


def age_band(age: float) -> str:
    """Five-year band of an adult's age: 18-19 (the model is adult-only), 20-24, ..., 85-89, then 90+."""
    if age >= OLDEST_BAND:
        return f"{OLDEST_BAND}+"
    low = int(age // 5 * 5)
    return f"{max(low, 18)}-{low + 4}"


def deidentified(facts: store.RecordedFacts, tenant: uuid.UUID,
                 secret: bytes) -> an.ScreeningRecordedDeidentifiedV1:
    """The analytics form of a stored screening: patient pseudonymised, age banded, times cut to the day."""
    cbc = ev.CompleteBloodCount.model_validate(facts.cbc)
    assessment = ev.Assessment.model_validate(facts.assessment) if facts.assessment else None
    return an.ScreeningRecordedDeidentifiedV1(
        screening_id=facts.id,
        patient_key=patient_key(secret, tenant, facts.patient_id),
        status=facts.status,  # type: ignore[arg-type]
        label=assessment.label if assessment else None,
        risk_class=assessment.risk_class if assessment else None,
        probabilities=assessment.probabilities if assessment else None,
        model=assessment.model if assessment else None,
        age_band=age_band(cbc.age),
        sex=cbc.sex,
        cbc=an.BloodCount.model_validate(cbc.model_dump(exclude={"age", "sex"})),
        recorded_on=facts.recorded_at.astimezone(UTC).date(),
        collected_on=facts.collected_at.astimezone(UTC).date() if facts.collected_at else None,
        lab_id=facts.lab_id,
        doctor_id=facts.doctor_id,
    )


def analytics_event(payload: an.ScreeningRecordedDeidentifiedV1, cause: Envelope[Any]) -> Envelope[Any]:
    kind, version = an.SCREENING_RECORDED_DEIDENTIFIED
    return new_envelope(payload, event_type=kind, event_version=version, tenant_id=cause.tenant_id,
                        actor=SERVICE_ACTOR, causation=cause, event_id=derived_event_id(cause.event_id, kind))


# -- subscriber ------------------------------------------------------------------------------------------


def _decode(raw: bytes) -> Envelope[Any] | None:
    """A ``ScreeningRecorded`` v1 of a tenant, else None (other versions are not this subscriber's)."""
    try:
        head = Envelope[dict[str, Any]].model_validate_json(raw)
        if (head.event_type, head.event_version) != ev.SCREENING_RECORDED or head.tenant_id is None:
            return None
        return RecordedEnvelope.model_validate_json(raw)
    except ValidationError:
        log.error("unreadable event on %s left out of the analytics stream", Topic.SCREENING_RECORDED)
        return None


def register(broker: KafkaBroker, settings: ScreeningSettings, registry: store.TenantRegistry) -> None:
    secret = settings.pseudonym_key()

    @subscribe(broker, Topic.SCREENING_RECORDED, batch=True, max_records=settings.record_batch_size,
               batch_timeout_ms=5, **at_least_once(settings, "screening-analytics-stream"))
    async def publish_deidentified(messages: list[bytes]) -> None:
        by_tenant: dict[uuid.UUID, dict[uuid.UUID, Envelope[Any]]] = defaultdict(dict)
        for envelope in filter(None, map(_decode, messages)):
            by_tenant[envelope.tenant_id][envelope.payload.screening_id] = envelope
        outgoing: list[Envelope[Any]] = []
        for tenant, causes in by_tenant.items():
            async with in_schema(registry.engine, await registry.ensure(tenant)) as conn:
                stored = await store.recorded_facts(conn, list(causes))
            if len(stored) < len(causes):
                log.error("%d recorded screenings not found in their tenant; left out of the analytics "
                          "stream", len(causes) - len(stored))
            for facts in stored:
                try:
                    outgoing.append(analytics_event(deidentified(facts, tenant, secret), causes[facts.id]))
                except ValidationError:
                    log.error("a stored screening no longer passes the contract; left out of the stream")
        await publish_many(broker, Topic.ANALYTICS_SCREENINGS, outgoing, key=lambda e: e.payload.patient_key)
