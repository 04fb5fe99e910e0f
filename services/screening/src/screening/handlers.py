"""Event subscribers: provision tenants, record classified screenings, announce them as recorded.

Recording is idempotent by screening id: a redelivered or re-published classification finds the stored row
and re-announces it with the same event id, so a crash between commit and publish loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from screening import batch, record_store, store
from shared.db import in_schema
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events import identity as id_ev
from shared.events import screening as ev
from shared.events.batch import BATCH_FETCH_MAX_WAIT_MS
from shared.events.envelope import derived_event_id
from shared.kafka import at_least_once, publish, subscribe
from shared.memory import gc_paused
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
SERVICE_ACTOR = Actor(role="service", service="screening")

ClassifiedEnvelope = Envelope[ev.ScreeningClassifiedV1]
RejectedEnvelope = Envelope[ev.ScreeningRejectedV1]
OrgEnvelope = Envelope[id_ev.OrganizationCreatedV1]
UserEnvelope = Envelope[id_ev.UserCreatedV1]
#: Identity events that change the staff directory (by type name: read from the payload as plain JSON).
ROLE_CHANGED, USER_DEACTIVATED = "RoleChanged", "UserDeactivated"
STAFF_CHANGES = (ROLE_CHANGED, USER_DEACTIVATED)


def to_row(envelope: Envelope[Any], now: datetime) -> store.NewScreening:
    """The stored form of a classification or a rejection."""
    body = envelope.payload
    request: ev.ScreeningRequestedV1 = body.request
    assessment = getattr(body, "assessment", None)
    return store.NewScreening(
        id=request.screening_id,
        patient_external_id=request.patient.external_id,
        patient_name_ciphertext=request.patient.name_ciphertext,
        status="classified" if assessment else "rejected",
        cbc=request.cbc.model_dump(mode="json"),
        assessment=assessment.model_dump(mode="json") if assessment else None,
        rejection_reason=getattr(body, "reason", None),
        label=assessment.label.value if assessment else None,
        risk_class=int(assessment.risk_class) if assessment else None,
        model_version=assessment.model.version if assessment else None,
        requested_by=envelope.actor.user_id,
        correlation_id=envelope.correlation_id,
        requested_at=request.requested_at,
        recorded_at=now,
        patient_id=request.patient.patient_id,
        consent_id=request.consent_id,
        collected_at=request.collected_at,
    )


def recorded_event(row: store.NewScreening, cause: Envelope[Any], tenant: Any) -> Envelope[Any]:
    """The screening as stored (``batch.recorded_before``: what ``/api/screenings/{id}/recorded`` rebuilds)."""
    return new_envelope(
        batch.recorded_before(row), event_type=ev.SCREENING_RECORDED[0], event_version=ev.SCREENING_RECORDED[1],
        tenant_id=tenant, actor=SERVICE_ACTOR, causation=cause,
        event_id=derived_event_id(row.id, ev.SCREENING_RECORDED[0]),
    )


def _decode(raw: bytes) -> Envelope[Any] | None:
    try:
        head = Envelope[dict[str, Any]].model_validate_json(raw)
        model = {ev.SCREENING_CLASSIFIED[0]: ClassifiedEnvelope, ev.SCREENING_REJECTED[0]: RejectedEnvelope}
        return model[head.event_type].model_validate_json(raw) if head.event_type in model else None
    except ValidationError:
        log.error("unreadable event on %s dropped to the audit trail only", Topic.SCREENING_CLASSIFIED)
        return None


def register(broker: KafkaBroker, settings: CommonSettings, registry: store.TenantRegistry,
             batch_size: int) -> Callable[[], None]:
    """Subscribe the recorders and the tenant list; returns the heads-up for the classify recorder (an admitted
    classify will reach it shortly, so it stops resting: ``shared.kafka.Tempo``)."""
    recorder = at_least_once(settings, "screening-recorder")

    @subscribe(broker, Topic.SCREENING_CLASSIFIED, batch=True, max_records=batch_size, batch_timeout_ms=5,
               **recorder)
    async def record_screenings(messages: list[bytes]) -> None:
        by_tenant: dict[Any, list[Envelope[Any]]] = defaultdict(list)
        for raw in messages:
            envelope = _decode(raw)
            if envelope is not None and envelope.tenant_id is not None:
                by_tenant[envelope.tenant_id].append(envelope)
        outgoing: list[Envelope[Any]] = []
        now = datetime.now(UTC)
        for tenant, envelopes in by_tenant.items():
            schema = await registry.provision(tenant)
            causes = {e.payload.request.screening_id: e for e in envelopes}
            async with in_schema(registry.engine, schema) as conn:
                stored = await store.record(conn, [to_row(e, now) for e in causes.values()])
            outgoing += [recorded_event(row, causes[row.id], tenant) for row in stored]
        await asyncio.gather(*(publish(broker, Topic.SCREENING_RECORDED, e, key=str(e.payload.screening_id))
                               for e in outgoing))

    @subscribe(broker, Topic.SCREENING_BATCH_CLASSIFIED, **at_least_once(
        settings, "screening-batch-recorder", fetch_max_wait_ms=BATCH_FETCH_MAX_WAIT_MS))
    async def record_screening_batch(raw: bytes) -> None:
        """A classified chunk stored in one transaction, then announced by one chunk event (see ``screening.batch``)."""
        with gc_paused():  # a chunk is tens of thousands of objects, none of them cyclic garbage
            envelope = batch.decode_classified(raw)
        if envelope is None:
            return
        chunk_recorded = await batch.record_chunk(registry, envelope)
        await publish(broker, Topic.SCREENING_BATCH_RECORDED, chunk_recorded, key=str(envelope.payload.job_id))

    @subscribe(broker, Topic.IDENTITY, **at_least_once(settings, "screening-tenants", background=True))
    async def provision_tenant(raw: bytes) -> None:
        """``OrganizationCreated`` provisions the tenant's schema; ``UserCreated``, ``RoleChanged`` and
        ``UserDeactivated`` keep the tenant's staff directory (user ids and roles: doctor records link only
        to active doctor users) current."""
        try:
            head = Envelope[dict[str, Any]].model_validate_json(raw)
            if head.event_type == id_ev.ORGANIZATION_CREATED[0]:
                await registry.provision(OrgEnvelope.model_validate_json(raw).payload.organization_id)
            elif head.event_type == id_ev.USER_CREATED[0] and head.tenant_id is not None:
                user = UserEnvelope.model_validate_json(raw).payload
                schema = await registry.provision(head.tenant_id)
                async with in_schema(registry.engine, schema) as conn:
                    await record_store.upsert_staff(conn, user.user_id, user.role)
            elif head.event_type in STAFF_CHANGES and head.tenant_id is not None:
                user_id = uuid.UUID(str(head.payload["user_id"]))
                schema = await registry.provision(head.tenant_id)
                async with in_schema(registry.engine, schema) as conn:
                    if head.event_type == ROLE_CHANGED:
                        await record_store.upsert_staff(conn, user_id, str(head.payload["new_role"]))
                    else:
                        await record_store.remove_staff(conn, user_id)
        except (ValidationError, KeyError, ValueError):
            log.error("unreadable event on %s skipped (the audit ledger keeps its digest)", Topic.IDENTITY)

    return recorder["tempo"].brisk
