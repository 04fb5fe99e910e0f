"""Subscriber: every event of every ``clinomic.*`` topic, appended exactly once to its organisation's chain."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import ValidationError

from audit import domain, store
from audit.ledger import PLATFORM_CHAIN_ID, LedgerEntry, chain_id_for_tenant, seal
from shared.events import ALL_TOPICS_PATTERN, Envelope
from shared.kafka import at_least_once
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
RawEnvelope = Envelope[dict[str, Any]]


def _item(raw: bytes, topic: str) -> dict[str, Any]:
    """What to seal for one message: an envelope as is, or the digest of something unreadable."""
    try:
        envelope = RawEnvelope.model_validate_json(raw)
    except ValidationError:
        digest = domain.unreadable_event(raw, topic)
        return {"chain_id": PLATFORM_CHAIN_ID, "event_id": uuid.uuid5(uuid.NAMESPACE_OID, digest["sha256"]),
                "event_type": "UnreadableMessage", "actor": {"role": "unknown"}, "tenant_id": None,
                "occurred_at": None, "content": digest}
    data = envelope.model_dump(mode="json")
    return {"chain_id": chain_id_for_tenant(envelope.tenant_id), "event_id": envelope.event_id,
            "event_type": envelope.event_type, "actor": data["actor"], "tenant_id": envelope.tenant_id,
            "occurred_at": envelope.occurred_at, "content": domain.ledger_content(data)}


class Appender:
    """Appends a batch in one transaction: skip known event ids, lock the chain heads, seal, insert."""

    def __init__(self, engine: Any, key_id: str, key: bytes) -> None:
        self.engine = engine
        self.key_id = key_id
        self.key = key

    async def append(self, items: list[dict[str, Any]]) -> int:
        unique = {i["event_id"]: i for i in items}
        async with self.engine.begin() as conn:
            known = await store.known_event_ids(conn, list(unique))
            fresh = [i for eid, i in unique.items() if eid not in known]
            if not fresh:
                return 0
            by_chain: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for item in fresh:
                by_chain[item["chain_id"]].append(item)
            heads = await store.lock_heads(conn, sorted(by_chain))
            sealed: list[LedgerEntry] = []
            for chain_id, chain_items in by_chain.items():
                seq, prev = heads[chain_id]
                for item in chain_items:
                    seq += 1
                    entry = seal(chain_id, seq, prev, event_id=item["event_id"], event_type=item["event_type"],
                                 actor=item["actor"], tenant_id=item["tenant_id"],
                                 occurred_at=item["occurred_at"] or datetime.now(UTC), content=item["content"],
                                 key_id=self.key_id, key=self.key)
                    sealed.append(entry)
                    prev = entry.entry_hash
            await store.append(conn, sealed)
            return len(sealed)


def register(broker: KafkaBroker, settings: CommonSettings, appender: Appender, batch_size: int) -> None:
    @broker.subscriber(pattern=ALL_TOPICS_PATTERN, batch=True, max_records=batch_size, batch_timeout_ms=5,
                       **at_least_once(settings, "audit-ledger"))
    async def append_to_ledger(messages: list[bytes], message: KafkaMessage) -> None:
        topics = [m.topic for m in message.raw_message] if isinstance(message.raw_message, tuple | list) \
            else [""] * len(messages)
        await appender.append([_item(raw, topic) for raw, topic in zip(messages, topics, strict=True)])
