"""Accepting a screening: encrypt the name, record the command durably, publish it, await the outcome.

A screening is *accepted* once its command is committed to the intake table; from then on the redelivery
loop re-publishes it until the screening service reports it recorded, whatever happens to the broker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
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


class Intake:
    def __init__(self, engine: AsyncEngine, broker: KafkaBroker, cipher: PhiCipher, outcomes: Outcomes) -> None:
        self.engine = engine
        self.broker = broker
        self.cipher = cipher
        self.outcomes = outcomes

    def command(self, principal: Principal, tenant: uuid.UUID, external_id: str, name: str | None,
                cbc: ev.CompleteBloodCount) -> Envelope[Any]:
        payload = ev.ScreeningRequestedV1(
            screening_id=uuid.uuid4(),
            patient=ev.PatientReference(external_id=external_id,
                                        name_ciphertext=self.cipher.encrypt(name) if name else None),
            cbc=cbc,
            requested_at=datetime.now(UTC),
        )
        return new_envelope(payload, event_type=ev.SCREENING_REQUESTED[0], event_version=ev.SCREENING_REQUESTED[1],
                            tenant_id=tenant, actor=Actor(user_id=principal.user_id, role=principal.role))

    async def submit(self, command: Envelope[Any], wait_seconds: float) -> ev.ScreeningRecordedV1 | None:
        """Accept, publish and wait; ``None`` means accepted but not recorded within ``wait_seconds``."""
        screening_id = command.payload.screening_id
        async with self.engine.begin() as conn:
            await store.accept(conn, screening_id, command.tenant_id, encode(command))
        outcome = self.outcomes.expect(screening_id)
        try:
            await asyncio.wait_for(
                publish(self.broker, Topic.SCREENING_REQUESTED, command, key=str(screening_id)), wait_seconds
            )
        except Exception:  # the broker is down: the command is safe in the intake, the redeliverer resends it
            log.warning("broker unavailable; screening %s will be redelivered", screening_id)
            self.outcomes.forget(screening_id)
            return None
        try:
            return await asyncio.wait_for(outcome, wait_seconds)
        except TimeoutError:
            return None
        finally:
            self.outcomes.forget(screening_id)

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
