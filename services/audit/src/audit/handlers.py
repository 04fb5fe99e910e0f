"""Subscriber: every event of every ``clinomic.*`` topic, appended exactly once to its organisation's chain.

The :class:`Appender` is the one code path that writes the ledger (the Kafka handler and the benchmark both
use it). A batch is one transaction: lock the batch's chains (advisory locks, in key order), drop the event
ids the ledger already holds, read each chain's head (its last entry), seal the new entries one after the
other, extend each chain's Merkle tree, insert entries and the Merkle nodes they complete, commit. Two
appenders (replicas, or a redelivery racing the original) serialise on the chain lock, so a chain never forks
and a sequence number is never used twice; the unique event id backs up "exactly once".

The dead-letter topic matches the pattern too: each of its messages is recorded as a ``MessageDeadLettered``
entry (:func:`dead_letter_event`), so the ledger shows which consumer group gave up on which event and why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import Counter
from pydantic import ValidationError
from shared.deadletter import DEAD_LETTER_TOPIC, as_dead_letter
from shared.events import ALL_TOPICS_PATTERN, Envelope
from shared.kafka import at_least_once, subscribe
from shared.settings import CommonSettings
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from audit import domain, store
from audit.ledger import (
    PLATFORM_CHAIN_ID,
    LedgerEntry,
    canonical_json,
    chain_id_for_tenant,
    genesis_hash,
    seal,
)
from audit.merkle import MerkleFrontier, MerkleTree, leaf_hash

log = logging.getLogger(__name__)
RawEnvelope = Envelope[dict[str, Any]]
_ZERO = bytes(32)
#: The ledger's entry type for a message some consumer group dead-lettered (``docs/reliability.md``).
DEAD_LETTERED = "MessageDeadLettered"
#: What the subscriber adds (duplicates of what the ledger holds are received, but not appended).
APPENDED = Counter("clinomic_audit_appended_entries", "Entries appended to the ledger")


@dataclass(frozen=True, slots=True)
class Item:
    """What the ledger keeps of one message, ready to be sealed."""

    chain_id: str
    event_id: uuid.UUID
    event_type: str
    actor: dict[str, Any]
    tenant_id: str | None
    occurred_at: str | datetime
    content: bytes  # canonical JSON
    refs: str  # the event's identifiers, space-separated (see domain.entity_refs)


def item_of(raw: bytes, topic: str) -> Item:
    """An envelope as it was published (PHI ciphertexts digested), or the digest of something unreadable."""
    try:
        envelope = RawEnvelope.model_validate_json(raw)
    except ValidationError:
        digest = domain.unreadable_event(raw, topic)
        return Item(
            PLATFORM_CHAIN_ID,
            uuid.uuid5(uuid.NAMESPACE_OID, digest["sha256"]),
            "UnreadableMessage",
            {"role": "unknown"},
            None,
            datetime.now(UTC),
            canonical_json(digest),
            "",
        )
    screening_ids: list[str] = []
    kind = (envelope.event_type, envelope.event_version)
    if kind in domain.CHUNK_KINDS:
        # The payload is JSON values already: dumping the whole chunk again costs more than committing to it.
        content = envelope.model_dump(mode="json", exclude={"payload"})
        try:
            content["payload"], screening_ids = domain.chunk_commitment(kind, envelope.payload)
        except domain.ChunkError as exc:  # kept whole, like any event: nothing is lost, only not committed
            log.warning("chunk event %s kept whole: %s", envelope.event_id, exc)
            content["payload"] = envelope.payload
    else:
        content = envelope.model_dump(mode="json")
    if domain.may_hold_digested_fields(raw):
        content = domain.ledger_content(content)
    canonical = canonical_json(content)
    # Every screening of a chunk is findable by its id (the proof route looks it up), beyond entity_refs' cap.
    refs = list(dict.fromkeys([*domain.entity_refs(canonical), *screening_ids]))
    return Item(
        chain_id_for_tenant(envelope.tenant_id),
        envelope.event_id,
        envelope.event_type,
        content["actor"],
        str(envelope.tenant_id) if envelope.tenant_id else None,
        envelope.occurred_at,
        canonical,
        " ".join(refs),
    )


def dead_letter_event(record: Any) -> bytes:
    """The ledger's envelope for a message of the dead-letter topic: which event a consumer group gave up on,
    where it was and why, with the original's digest and identifiers (never its bytes: they may carry PHI
    ciphertexts). Its id is derived from the dead-lettering, so a redelivered dead letter is one entry."""
    letter = as_dead_letter(record)
    try:
        original: RawEnvelope | None = RawEnvelope.model_validate_json(letter.value)
    except ValidationError:
        original = None
    digest = hashlib.sha256(letter.value).hexdigest()
    event_id = uuid.uuid5(uuid.NAMESPACE_OID, "|".join(
        ["dead-letter", letter.group, letter.topic, str(letter.source_partition), str(letter.source_offset),
         letter.at, digest]))
    return json.dumps({
        "event_id": str(event_id),
        "event_type": DEAD_LETTERED,
        "event_version": 1,
        "occurred_at": letter.at or datetime.now(UTC).isoformat(),
        "tenant_id": str(original.tenant_id) if original and original.tenant_id else None,
        "actor": {"role": "service", "service": letter.group},
        "correlation_id": str(original.correlation_id if original else event_id),
        "causation_id": str(original.event_id) if original else None,
        "payload": {
            "dead_lettered_event_id": str(original.event_id) if original else None,
            "dead_lettered_event_type": original.event_type if original else None,
            "topic": letter.topic, "partition": letter.source_partition, "offset": letter.source_offset,
            "consumer_group": letter.group, "reason": letter.reason, "attempts": letter.attempts,
            "sha256": digest, "entity_ids": domain.entity_refs(letter.value),
        },
    }).encode()


def _prepared(messages: Sequence[tuple[bytes, str]]) -> list[Item]:
    return [item_of(raw, topic) for raw, topic in messages]


class _Later:
    """Work done once: when the appender has a moment (the database busy storing), else when asked for."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._work = work
        self._done = False
        self._result: Any = None

    def run(self) -> None:
        if not self._done:
            self._result, self._done = self._work(), True

    def result(self) -> Any:
        self.run()
        return self._result


def _retryable(exc: DBAPIError) -> bool:
    """A lost race (the same event id appended by another appender), a deadlock or a serialisation failure."""
    states = {
        getattr(exc.orig, "sqlstate", None),
        getattr(getattr(exc.orig, "__cause__", None), "sqlstate", None),
    }
    return bool(states & {"23505", "40P01", "40001"})


class Appender:
    """Appends batches of items to their chains; safe to run in several processes at once."""

    def __init__(
        self,
        engine: AsyncEngine,
        key_id: str,
        key: bytes,
        *,
        attempts: int = 5,
        max_cached_chains: int = 10_000,
        part_size: int = 250,
    ) -> None:
        self.engine = engine
        self.key_id = key_id
        self.key = key
        self.attempts = attempts
        self.part_size = part_size
        self._frontiers: dict[str, MerkleFrontier] = {}
        self._max_cached = max_cached_chains

    async def append_raw(self, messages: Sequence[tuple[bytes, str]]) -> int:
        """Append raw messages ``(bytes, topic)``: what the subscriber receives.

        A large batch goes in parts of :attr:`part_size`, and the items of each part are prepared (parsed,
        canonicalised) while PostgreSQL stores the part before: the two cost about the same and run on
        different cores. Each part is its own transaction; a failure raises, so the subscriber's batch is
        redelivered and the parts already stored are recognised as duplicates.
        """
        parts = [messages[i : i + self.part_size] for i in range(0, len(messages), self.part_size)]
        added = 0
        items = _prepared(parts[0]) if parts else []
        for following in [*parts[1:], None]:
            later = _Later(lambda part=following: _prepared(part)) if following is not None else None
            added += await self.append(items, meanwhile=later)
            if later is not None:
                items = later.result()
        return added

    async def append(self, items: Sequence[Item], *, meanwhile: _Later | None = None) -> int:
        """Append what the ledger does not hold yet; return how many entries were added.

        ``meanwhile`` is run while the database stores the entries, if there are any to store.
        """
        first_copies: dict[uuid.UUID, Item] = {}
        for item in items:
            first_copies.setdefault(item.event_id, item)
        unique = list(first_copies.values())
        if not unique:
            return 0
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._append(unique, meanwhile)
            except DBAPIError as exc:
                if attempt == self.attempts or not _retryable(exc):
                    raise
                log.info("ledger append lost a race (attempt %d); retrying", attempt)
                await asyncio.sleep(0.02 * attempt)
        raise AssertionError("unreachable")

    async def _append(self, items: list[Item], meanwhile: _Later | None = None) -> int:
        created: dict[str, MerkleFrontier] = {}
        async with self.engine.begin() as conn:
            await store.lock_chains(conn, {i.chain_id for i in items})
            known = await store.known_event_ids(conn, [i.event_id for i in items])
            by_chain: dict[str, list[Item]] = defaultdict(list)
            for item in items:
                if item.event_id not in known:
                    by_chain[item.chain_id].append(item)
            if not by_chain:
                return 0
            heads = await store.heads(conn, list(by_chain))
            sealed: list[LedgerEntry] = []
            refs: list[str] = []
            nodes: list[tuple[str, int, int, bytes]] = []
            for chain_id, chain_items in by_chain.items():
                seq, prev = heads[chain_id]
                frontier = await self._frontier(conn, chain_id, seq)
                prev = prev if prev is not None else genesis_hash(chain_id)
                for item in chain_items:
                    seq += 1
                    entry = seal(
                        chain_id,
                        seq,
                        prev,
                        event_id=item.event_id,
                        event_type=item.event_type,
                        actor=item.actor,
                        tenant_id=item.tenant_id,
                        occurred_at=item.occurred_at,
                        content=item.content,
                        key_id=self.key_id,
                        key=self.key,
                    )
                    sealed.append(entry)
                    refs.append(item.refs)
                    prev = entry.entry_hash
                    for level, idx, node in frontier.append_leaf_hash(leaf_hash(entry.entry_hash)):
                        if level:
                            nodes.append((chain_id, level, idx, node))
                created[chain_id] = frontier
            new_chains = [c for c in by_chain if heads[c][0] == 0]
            if new_chains:
                await store.register_chains(conn, new_chains)
            storing = asyncio.ensure_future(store.insert_entries(conn, sealed, refs))
            try:
                if meanwhile is not None:
                    await asyncio.sleep(0)  # the statement leaves for the database before we compute
                    meanwhile.run()
            finally:
                await storing
            await store.insert_nodes(conn, nodes)
        if len(self._frontiers) + len(created) > self._max_cached:
            self._frontiers.clear()
        self._frontiers.update(created)  # only once committed
        return len(sealed)

    async def _frontier(self, conn: Any, chain_id: str, size: int) -> MerkleFrontier:
        """The chain's Merkle frontier at ``size``: cached, else from the stored nodes, else rebuilt."""
        cached = self._frontiers.get(chain_id)
        if cached is not None and cached.size == size:
            return cached.copy()
        if size == 0:
            return MerkleFrontier()
        needed = MerkleFrontier.nodes_needed(size)
        found = await store.nodes(conn, chain_id, needed)
        if all(n in found for n in needed):
            return MerkleFrontier(size, [found[n] for n in needed])
        # Only after someone removed rows behind the service's back: keep the ledger going (verification
        # reports the damage), with a tree over the stored entry hashes and a zero leaf for each missing one.
        log.error(
            "audit chain %s: Merkle nodes missing at size %d; rebuilding its frontier from the entries",
            chain_id,
            size,
        )
        leaves = bytearray(_ZERO * size)
        for seq, entry_hash in await store.entry_hashes(conn, chain_id, size):
            leaves[(seq - 1) * 32 : seq * 32] = leaf_hash(entry_hash)
        return MerkleFrontier.from_tree(MerkleTree.from_leaf_hashes(bytes(leaves)))


def register(broker: KafkaBroker, settings: CommonSettings, appender: Appender, batch_size: int) -> None:
    @subscribe(
        broker,
        pattern=ALL_TOPICS_PATTERN,
        batch=True,
        max_records=batch_size,
        **at_least_once(settings, "audit-ledger", background=True),
    )
    async def append_to_ledger(messages: list[bytes], message: KafkaMessage) -> None:
        """``message`` is the delivery, or a ``shared.deadletter.Part`` when one message is retried alone."""
        records = message.raw_message
        APPENDED.inc(await appender.append_raw([
            (dead_letter_event(record) if record.topic == DEAD_LETTER_TOPIC else raw, record.topic)
            for raw, record in zip(messages, records, strict=True)
        ]))
