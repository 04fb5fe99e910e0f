"""Accepting a screening: record the command durably, publish it, await the outcome.

A screening is *accepted* once its command is committed to the intake table; from then on the redelivery
loop re-publishes it until the screening service reports it recorded, whatever happens to the broker.
The command names the patient by external id and by the record id the admission check resolved; the
patient's name is not in it (the screening service stored it, encrypted, when it admitted the request).
A command accepted with an ``Idempotency-Key`` is found again by that key: a retry gets the first outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import store
from gateway.outcomes import Outcomes
from shared.crypto import PhiCipher
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events import screening as ev
from shared.kafka import encode, publish
from shared.tokens import Principal

log = logging.getLogger(__name__)


class KeyReused(Exception):
    """The ``Idempotency-Key`` was used for a different request (patient or CBC) by this organisation."""


@dataclass(frozen=True)
class Answer:
    screening_id: uuid.UUID
    outcome: dict[str, Any] | None  # the ScreeningRecorded payload (JSON); None while not recorded
    recorded: bool
    replayed: bool = False


def fingerprint(external_id: str, cbc: ev.CompleteBloodCount, collected_at: datetime | None = None) -> str:
    """What an idempotent retry must repeat: the patient's external id, the CBC and the collection time (no
    PHI). Without a collection time the fingerprint is the one made before it existed (keys stay valid)."""
    request: dict[str, Any] = {"external_id": external_id, "cbc": cbc.model_dump(mode="json")}
    if collected_at is not None:
        request["collected_at"] = collected_at.astimezone(UTC).isoformat()
    canonical = json.dumps(request, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Intake:
    def __init__(self, engine: AsyncEngine, broker: KafkaBroker, cipher: PhiCipher, outcomes: Outcomes) -> None:
        self.engine = engine
        self.broker = broker
        self.cipher = cipher
        self.outcomes = outcomes

    def command(self, principal: Principal, tenant: uuid.UUID, external_id: str, cbc: ev.CompleteBloodCount, *,
                patient_id: uuid.UUID | None = None, consent_id: uuid.UUID | None = None,
                expected_prevalence: float | None = None,
                collected_at: datetime | None = None) -> Envelope[Any]:
        payload = ev.ScreeningRequestedV1(
            screening_id=uuid.uuid4(),
            patient=ev.PatientReference(external_id=external_id, patient_id=patient_id),
            cbc=cbc,
            requested_at=datetime.now(UTC),
            consent_id=consent_id,
            expected_prevalence=expected_prevalence,
            collected_at=collected_at,
        )
        return new_envelope(payload, event_type=ev.SCREENING_REQUESTED[0], event_version=ev.SCREENING_REQUESTED[1],
                            tenant_id=tenant, actor=Actor(user_id=principal.user_id, role=principal.role))

    async def submit(self, command: Envelope[Any], wait_seconds: float, *, idempotency_key: str | None = None,
                     request_fingerprint: str | None = None) -> Answer:
        """Accept, publish and wait (``outcome`` None: accepted, not recorded within ``wait_seconds``).

        With a key this organisation already used, nothing is accepted: the first screening is answered.
        """
        screening_id = command.payload.screening_id
        async with self.engine.begin() as conn:
            inserted = await store.accept(conn, screening_id, command.tenant_id, encode(command),
                                          idempotency_key=idempotency_key, fingerprint=request_fingerprint)
        if not inserted:
            assert idempotency_key is not None
            replay = await self.replay(command.tenant_id, idempotency_key, request_fingerprint, wait_seconds)
            assert replay is not None
            return replay
        outcome = self.outcomes.expect(screening_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        try:
            if not await self._publish_before(command, deadline):
                return Answer(screening_id, None, False)
            recorded = await asyncio.wait_for(outcome, max(0.0, deadline - loop.time()))
            return Answer(screening_id, recorded.model_dump(mode="json"), True)
        except TimeoutError:
            return Answer(screening_id, None, False)
        finally:
            self.outcomes.forget(screening_id, outcome)

    async def _publish_before(self, command: Envelope[Any], deadline: float) -> bool:
        """Publish, trying again while the request may still wait; False if it never went out in time.

        A broker that has just restarted or moved a partition refuses a few produce requests at once (the
        bundled broker answers an unknown error for a moment after its restart): one failed attempt must not
        turn an answer the client could still get in time into a 202. A command not published here is safe
        in the intake, and the redeliverer sends it; a duplicate from a retry is ignored downstream.
        """
        loop = asyncio.get_running_loop()
        screening_id = command.payload.screening_id
        pause = 0.05
        while True:
            try:
                await asyncio.wait_for(publish(self.broker, Topic.SCREENING_REQUESTED, command,
                                               key=str(screening_id)), max(0.0, deadline - loop.time()))
                return True
            except Exception as error:
                if loop.time() + pause >= deadline:
                    log.warning("broker unavailable (%s); screening %s will be redelivered",
                                type(error).__name__, screening_id)
                    return False
                await asyncio.sleep(pause)
                pause = min(2 * pause, 1.0)

    async def replay(self, tenant: uuid.UUID, key: str, request_fingerprint: str | None,
                     wait_seconds: float) -> Answer | None:
        """The screening first accepted under ``key`` (waiting for its outcome a while), or None if none was."""
        async with self.engine.begin() as conn:
            keyed = await store.by_idempotency_key(conn, tenant, key)
        if keyed is None:
            return None
        if keyed.fingerprint != request_fingerprint:
            raise KeyReused
        if keyed.recorded_at is not None:
            return Answer(keyed.screening_id, keyed.outcome, True, replayed=True)
        outcome = self.outcomes.expect(keyed.screening_id)
        try:
            async with self.engine.begin() as conn:  # it may have been recorded before we started waiting
                again = await store.by_idempotency_key(conn, tenant, key)
            if again is not None and again.recorded_at is not None:
                return Answer(again.screening_id, again.outcome, True, replayed=True)
            recorded = await asyncio.wait_for(outcome, wait_seconds)
            return Answer(keyed.screening_id, recorded.model_dump(mode="json"), True, replayed=True)
        except TimeoutError:
            return Answer(keyed.screening_id, None, False, replayed=True)
        finally:
            self.outcomes.forget(keyed.screening_id, outcome)

    async def redeliver_forever(self, older_than_seconds: float, interval_seconds: float = 2.0) -> None:
        """Re-publish accepted commands that have not been recorded; consumers ignore the duplicates."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                async with self.engine.begin() as conn:
                    commands = await store.claim_unrecorded(conn, older_than_seconds)
                for raw in commands:
                    envelope = Envelope[ev.ScreeningRequestedV1].model_validate_json(raw)
                    await publish(self.broker, Topic.SCREENING_REQUESTED, envelope,
                                  key=str(envelope.payload.screening_id))
                if commands:
                    log.info("redelivered %d unrecorded screening commands", len(commands))
            except Exception:
                log.warning("redelivery pass failed; retrying", exc_info=True)
