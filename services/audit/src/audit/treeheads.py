"""Signed tree heads: the publisher that signs each chain's Merkle root on a schedule, and the append-only
directory of JSON Lines files where every head is also written, outside the database.

The publisher never signs what it has not checked itself. It keeps, per chain, the Merkle frontier of the
last head it signed (restored at start from the newest signed head, whose root it must reproduce from the
stored nodes). For a new head it reads only the entries appended since, verifies their hashes, links and
HMACs, extends the frontier from the *recomputed* hashes, and compares the new root with the one the stored
Merkle nodes give. Any disagreement means someone changed the ledger behind the service's back: the head is
not signed, the chain is reported once in the log, and verification (``GET /api/audit/verify``) says where.
So a new head is consistent with the previous one by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncEngine

from audit import store
from audit.ledger import genesis_hash, verify_rows
from audit.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    fold_range,
    leaf_hash,
    range_nodes,
    sign_tree_head,
    verify_tree_head,
)

log = logging.getLogger(__name__)


def head_json(head: dict[str, Any]) -> str:
    """One head as one line of JSON (keys sorted, no spaces): how it is stored and written out."""
    return json.dumps(head, sort_keys=True, separators=(",", ":"))


def file_name(chain_id: str) -> str:
    """``tenant:<uuid>`` → ``tenant_<uuid>.jsonl``; ``platform`` → ``platform.jsonl``."""
    safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in chain_id)
    return f"{safe}.jsonl"


class TreeHeadLog:
    """The directory of append-only JSON Lines files (one per chain) where every signed head also goes.

    It is meant to live where the database's administrators cannot rewrite it: a volume of its own, a
    WORM-mounted bucket, a host synced elsewhere. ``None`` disables it (heads then live only in the database
    and in the hands of whoever fetched them).
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def path(self, chain_id: str) -> Path | None:
        return self.directory / file_name(chain_id) if self.directory is not None else None

    def append(self, chain_id: str, line: str) -> None:
        """Append one head and make it durable before it is stored anywhere else."""
        path = self.path(chain_id)
        if path is None:
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, chain_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """The heads of a chain and a note for each line that is not a head."""
        path = self.path(chain_id)
        if path is None or not path.exists():
            return [], []
        heads: list[dict[str, Any]] = []
        problems: list[str] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                head = json.loads(line)
                if not isinstance(head, dict):
                    raise ValueError("not an object")
                heads.append(head)
            except ValueError:
                problems.append(f"external tree-head log line {number} is not a JSON object")
        return heads, problems

    def newest(self, chain_id: str, tail_bytes: int = 16_384) -> list[dict[str, Any]]:
        """The last heads of a chain (those in its last ``tail_bytes``), oldest first, without reading the
        whole file: what :meth:`Publisher.publish` compares with the database before each new head."""
        path = self.path(chain_id)
        if path is None or not path.exists():
            return []
        with path.open("rb") as file:
            start = max(0, file.seek(0, os.SEEK_END) - tail_bytes)
            file.seek(start)
            lines = file.read().decode("utf-8", errors="replace").splitlines()
        heads = []
        for line in lines[1:] if start else lines:  # a tail's first line may be cut
            with contextlib.suppress(ValueError):
                head = json.loads(line)
                if isinstance(head, dict):
                    heads.append(head)
        return heads


@dataclass
class _Signed:
    """What the publisher knows of a chain: the frontier at the last size it signed, and that entry's hash."""

    size: int
    frontier: MerkleFrontier
    last_hash: bytes | None
    timestamp_ms: int


class Publisher:
    """Signs the head of every chain that grew (or whose newest head is older than ``max_age``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        signing_key: Ed25519PrivateKey,
        public_keys: Sequence[Ed25519PublicKey],
        hmac_keys: dict[str, bytes],
        head_log: TreeHeadLog,
        *,
        interval: float = 60.0,
        max_age: float = 86_400.0,
        page: int = store.PAGE_ROWS,
    ) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self.public_keys = list(public_keys)
        self.hmac_keys = hmac_keys
        self.head_log = head_log
        self.interval = interval
        self.max_age_ms = int(max_age * 1000)
        self.page = page
        self._signed: dict[str, _Signed] = {}
        self._refused: dict[str, tuple[int, str]] = {}
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Publish due heads every ``interval`` seconds until cancelled; never lets an error stop the loop."""
        while True:
            try:
                await self.publish_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tree-head publication failed; retrying in %.0f s", self.interval)
            await asyncio.sleep(self.interval)

    async def publish_due(self) -> list[dict[str, Any]]:
        now = _now_ms()
        async with self.engine.connect() as conn:
            states = await store.chain_states(conn)
        published = []
        for state in states:
            if state.size == 0:
                continue
            grew = state.head_size is None or state.size > state.head_size
            stale = state.head_timestamp_ms is not None and now - state.head_timestamp_ms >= self.max_age_ms
            if grew or stale:
                head = await self.publish(state.chain_id)
                if head is not None:
                    published.append(head)
        return published

    async def publish(self, chain_id: str) -> dict[str, Any] | None:
        """Check the chain's new entries, then sign, write out and store its head; None when refused."""
        async with self._lock, self.engine.connect() as conn:
            size = await store.chain_size(conn, chain_id)
            if size == 0:
                return None
            refused = self._refused.get(chain_id)
            if refused is not None and refused[0] == size:
                return None  # reported already; nothing changed since
            await self._store_written_out(conn, chain_id)
            signed = self._signed.get(chain_id) or await self._resume(conn, chain_id)
            problem, extended = await self._extend(conn, chain_id, signed, size)
            if problem is None:
                problem = await self._check_stored_root(conn, chain_id, extended)
            if problem is not None:
                self._refused[chain_id] = (size, problem)
                log.error("audit chain %s: tree head at size %d NOT signed: %s", chain_id, size, problem)
                return None
            self._refused.pop(chain_id, None)
            head = sign_tree_head(
                size,
                extended.frontier.root(),
                max(_now_ms(), signed.timestamp_ms + 1),
                self.signing_key,
                chain_id=chain_id,
            )
            line = head_json(head)
            await asyncio.to_thread(self.head_log.append, chain_id, line)  # outside the database first
            await store.insert_tree_head(conn, head, line)
            await conn.commit()
            extended.timestamp_ms = head["timestamp"]
            self._signed[chain_id] = extended
            return head

    async def _store_written_out(self, conn: Any, chain_id: str) -> None:
        """Store the heads that were written out but never reached the database.

        A head goes to the external log first and to the database right after; the database may fail in
        between (an outage, a failover) or the process may die there. Such a head would then look removed from
        the database (the verifier: "in the external log but missing from the database") once a newer head is
        stored. So before signing, a head of the log's tail that is newer than the database's newest, correctly
        signed and for this chain, is stored first. An older one missing from the database is left for
        verification to report: that is what a removal looks like."""
        if not self.head_log.enabled:
            return
        written = await asyncio.to_thread(self.head_log.newest, chain_id)
        if not written:
            return
        stored = await store.tree_heads(conn, chain_id, limit=len(written), newest_first=True)
        newest_stored = max((h["timestamp"] for h in stored), default=-1)
        missing = [
            head for head in written
            if isinstance(head.get("timestamp"), int) and head["timestamp"] > newest_stored
            and head.get("chain_id") == chain_id and any(verify_tree_head(head, k) for k in self.public_keys)
        ]
        for head in missing:
            log.warning("audit chain %s: tree head at size %s was written out but not stored; storing it now",
                        chain_id, head.get("tree_size"))
            await store.insert_tree_head(conn, head, head_json(head))
        if missing:
            await conn.commit()
            self._signed.pop(chain_id, None)  # resume from the newest stored head

    def refused(self) -> dict[str, tuple[int, str]]:
        """Chains whose head was refused, with the size and the reason (for verification reports)."""
        return dict(self._refused)

    async def _resume(self, conn: Any, chain_id: str) -> _Signed:
        """The state at the newest signed head, if the stored nodes reproduce its root; else at genesis."""
        for head in await store.tree_heads(conn, chain_id, limit=5, newest_first=True):
            if not any(verify_tree_head(head, key) for key in self.public_keys):
                log.error(
                    "audit chain %s: stored tree head at size %s has a bad signature",
                    chain_id,
                    head.get("tree_size"),
                )
                continue
            size = head["tree_size"]
            if size == 0:
                break
            needed = MerkleFrontier.nodes_needed(size)
            found = await store.nodes(conn, chain_id, needed)
            entry = await store.entry(conn, chain_id, size)
            if entry is not None and all(n in found for n in needed):
                frontier = MerkleFrontier(size, [found[n] for n in needed])
                if frontier.root().hex() == head["root_hash"]:
                    return _Signed(size, frontier, entry.entry_hash, head["timestamp"])
            log.warning(
                "audit chain %s: the stored tree does not reproduce the head at size %d; "
                "re-checking the chain from its first entry",
                chain_id,
                size,
            )
            break
        return _Signed(0, MerkleFrontier(), None, 0)

    async def _extend(
        self, conn: Any, chain_id: str, signed: _Signed, size: int
    ) -> tuple[str | None, _Signed]:
        if size < signed.size:
            return f"the chain has {size} entries but a head was signed at {signed.size}", signed
        frontier = signed.frontier.copy()
        prev = signed.last_hash if signed.size else genesis_hash(chain_id)
        expected = signed.size + 1
        on_hash = _leaf_appender(frontier)
        async for rows in store.row_pages(conn, chain_id, expected, size, page=self.page):
            result = await asyncio.to_thread(
                verify_rows,
                rows,
                self.hmac_keys,
                start_prev_hash=prev,
                expected_first_seq=expected,
                chain_id=chain_id,
                on_hash=on_hash,
            )
            if not result.ok:
                return f"entry {result.first_broken_seq}: {result.reason}", signed
            prev, expected = result.last_hash, (result.last_seq or 0) + 1
        if frontier.size != size:
            return f"entries {frontier.size + 1}..{size} are missing", signed
        return None, _Signed(size, frontier, prev, signed.timestamp_ms)

    async def _check_stored_root(self, conn: Any, chain_id: str, signed: _Signed) -> str | None:
        needed = range_nodes(0, signed.size)
        found = await store.nodes(conn, chain_id, needed)
        if not all(n in found for n in needed):
            return "stored Merkle nodes are missing"
        if fold_range([found[n] for n in needed]) != signed.frontier.root():
            return "the stored Merkle nodes do not give the root recomputed from the entries"
        return None


def _leaf_appender(frontier: MerkleFrontier):  # type: ignore[no-untyped-def]
    append = frontier.append_leaf_hash

    def on_hash(entry_hash: bytes) -> None:
        append(leaf_hash(entry_hash))

    return on_hash


def _now_ms() -> int:
    return int(time.time() * 1000)


async def stop(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["EMPTY_ROOT", "Publisher", "TreeHeadLog", "file_name", "head_json", "stop"]
