"""The de-identified analytics stream: each recorded screening, re-published without what names its patient.

A subscriber of ``clinomic.screening.recorded`` reads the stored screening's facts (never the patients table,
so no name or external id is at hand) and publishes ``ScreeningRecordedDeidentified`` on
``clinomic.analytics.screenings`` (see ``shared.events.analytics`` and docs/event-stream.md). The event id
is derived from the ``ScreeningRecorded`` event's, itself derived from the screening id, so a redelivery or
a re-announcement publishes the same event again, which consumers drop by id.

A bulk chunk stays one message: a subscriber of ``clinomic.screening.batch-recorded`` reads the facts of all
the rows of a ``ScreeningBatchRecorded`` v2 in one query and publishes one ``ScreeningBatchRecordedDeidentified``
whose elements are what the single path makes of each screening, its event id derived from the chunk event's.

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

from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import BaseModel, ValidationError

from screening import store
from screening.settings import ScreeningSettings
from shared.db import in_schema
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events import analytics as an
from shared.events import batch as batch_ev
from shared.events import screening as ev
from shared.events.envelope import derived_event_id, event_kind
from shared.kafka import at_least_once, publish, publish_many, subscribe
from shared.memory import gc_paused

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


class _CarriedAssessment(BaseModel):
    """The parts of an assessment the stream carries (``store.ANALYTICS_ASSESSMENT``), checked as in
    ``Assessment``; findings and explanations are not read (a whole assessment is ~2 KB)."""

    label: ev.Label
    risk_class: ev.RiskClass
    probabilities: ev.Probabilities
    model: ev.ModelIdentity


def deidentified(facts: store.RecordedFacts, tenant: uuid.UUID,
                 secret: bytes) -> an.ScreeningRecordedDeidentifiedV1:
    """The analytics form of a stored screening: patient pseudonymised, age banded, times cut to the day.

    The CBC is still checked against the contract (a stored one that no longer passes is left out)."""
    cbc = ev.CompleteBloodCount.model_validate(facts.cbc)
    assessment = _CarriedAssessment.model_validate(facts.assessment) if facts.assessment else None
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


def analytics_event(payload: BaseModel, cause: Envelope[Any],
                    kind: tuple[str, int] = an.SCREENING_RECORDED_DEIDENTIFIED) -> Envelope[Any]:
    """The de-identified event of ``cause``, its id derived from the cause's (a redelivery repeats it)."""
    return new_envelope(payload, event_type=kind[0], event_version=kind[1], tenant_id=cause.tenant_id,
                        actor=SERVICE_ACTOR, causation=cause, event_id=derived_event_id(cause.event_id, kind[0]))


class _RecordedId(BaseModel):
    screening_id: uuid.UUID


class _ChunkRow(BaseModel):
    screening: _RecordedId


class ChunkScreenings(BaseModel):
    """What this stream reads of a ``ScreeningBatchRecorded`` v2: the job and its rows' screening ids, in order.

    The rest (assessments) is never used here; validating it cost 12 ms per 250-row chunk, this view 1 ms
    (measured on the 2-core development machine).
    """

    job_id: uuid.UUID
    rows: list[_ChunkRow]

    def screening_ids(self) -> list[uuid.UUID]:
        return [r.screening.screening_id for r in self.rows]


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


def _decode_chunk(raw: bytes, headers: Any) -> Envelope[ChunkScreenings] | None:
    """A tenant's ``ScreeningBatchRecorded`` v2, else None (v1 chunks' rows came as ``ScreeningRecorded``)."""
    try:
        if event_kind(raw, headers) != batch_ev.SCREENING_BATCH_RECORDED_V2:
            return None
        envelope = Envelope[ChunkScreenings].model_validate_json(raw)
    except ValueError:
        log.error("unreadable event on %s left out of the analytics stream", Topic.SCREENING_BATCH_RECORDED)
        return None
    return envelope if envelope.tenant_id is not None else None


def _deidentify_all(stored: list[store.RecordedFacts], tenant: uuid.UUID,
                    secret: bytes) -> dict[uuid.UUID, an.ScreeningRecordedDeidentifiedV1]:
    """Each stored screening's analytics form, by id; one that no longer passes the contract is left out."""
    out = {}
    for facts in stored:
        try:
            out[facts.id] = deidentified(facts, tenant, secret)
        except ValidationError:
            log.error("a stored screening no longer passes the contract; left out of the stream")
    return out


def _log_missing(count: int) -> None:
    if count > 0:
        log.error("%d recorded screenings not found in their tenant; left out of the analytics stream", count)


def register(broker: KafkaBroker, settings: ScreeningSettings, registry: store.TenantRegistry) -> None:
    secret = settings.pseudonym_key()

    @subscribe(broker, Topic.SCREENING_RECORDED, batch=True, max_records=settings.record_batch_size,
               **at_least_once(settings, "screening-analytics-stream", background=True))
    async def publish_deidentified(messages: list[bytes]) -> None:
        by_tenant: dict[uuid.UUID, dict[uuid.UUID, Envelope[Any]]] = defaultdict(dict)
        for envelope in filter(None, map(_decode, messages)):
            by_tenant[envelope.tenant_id][envelope.payload.screening_id] = envelope
        outgoing: list[Envelope[Any]] = []
        for tenant, causes in by_tenant.items():
            async with in_schema(registry.engine, await registry.ensure(tenant)) as conn:
                stored = await store.recorded_facts(conn, list(causes))
            _log_missing(len(causes) - len(stored))
            outgoing += [analytics_event(payload, causes[screening_id])
                         for screening_id, payload in _deidentify_all(stored, tenant, secret).items()]
        await publish_many(broker, Topic.ANALYTICS_SCREENINGS, outgoing, key=lambda e: e.payload.patient_key)

    @subscribe(broker, Topic.SCREENING_BATCH_RECORDED, **at_least_once(
        settings, "screening-analytics-batch", fetch_max_wait_ms=batch_ev.BATCH_FETCH_MAX_WAIT_MS))
    async def publish_deidentified_chunk(raw: bytes, message: KafkaMessage) -> None:
        """One recorded chunk, one de-identified chunk event keyed by its job id (every row, in row order)."""
        cause = _decode_chunk(raw, message.raw_message.headers)
        if cause is None:
            return
        tenant, ids = cause.tenant_id, cause.payload.screening_ids()
        assert tenant is not None
        async with in_schema(registry.engine, await registry.ensure(tenant)) as conn:
            stored = await store.recorded_facts(conn, ids)
        _log_missing(len(set(ids)) - len(stored))
        with gc_paused():
            made = _deidentify_all(stored, tenant, secret)
        screenings = [made[i] for i in dict.fromkeys(ids) if i in made]
        if not screenings:
            return
        await publish(broker, Topic.ANALYTICS_SCREENINGS,
                      analytics_event(an.ScreeningBatchRecordedDeidentifiedV1(screenings=screenings), cause,
                                      an.SCREENING_BATCH_RECORDED_DEIDENTIFIED),
                      key=str(cause.payload.job_id))
