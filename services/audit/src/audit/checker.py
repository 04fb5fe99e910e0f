"""Verification of a stored chain: what ``GET /api/audit/verify`` and the benchmark run.

Three checks over a range of one chain (the whole chain by default), reported together:

1. **Entries**: recompute every entry hash, check sequence numbers, links and HMACs (``verify_rows``,
   the same checks as the offline verifier) and stop the chain check at the first broken entry; the
   hashes of later entries are still recomputed for the next two checks. Each chunk entry's ``rows_root``
   is recomputed from the row digests it lists (``verifier.chunk_check``, as the offline verifier does):
   the entry hash covers both, so this catches a commitment that was wrong when sealed, or rewritten by
   someone who also recomputed the hashes and HMACs.
2. **Stored Merkle nodes**: rebuild every complete subtree inside the range from the *recomputed* entry
   hashes and compare it with ``merkle_nodes`` (a missing, extra or different node is reported with the
   entries it covers).
3. **Signed tree heads** (when the range starts at entry 1): every head in the database and in the external
   tree-head log must carry a valid Ed25519 signature under one of the service's public keys, and its root
   must be the root of the recomputed tree at its size; a head larger than the chain means entries are
   missing at the end. A head found only in the external log means the database lost it.

The first broken entry is the chain check's when the chain breaks; otherwise the first chunk entry whose
root does not match, or the first entry a bad node covers, or the first entry after the largest head that
still matches, or the first missing entry.

Speed: the first two checks are CPU work in Python (decoding rows, hashing), so a long range is cut into
segments of 2**15 entries aligned on Merkle subtrees and verified by a pool of worker processes, each with
its own database connection, each comparing the stored nodes inside its segment and returning its verdict
and the complete subtrees of its segment (the few nodes above a segment are compared at the end). A segment
after the first starts from the stored hash of the entry before it; since the first failing segment decides
the verdict, that changes nothing: a segment is only trusted as far as every earlier one checked out.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncEngine

from audit import domain, store
from audit.ledger import HASH_SIZE, Verification, compute_entry_hash, verify_rows
from audit.merkle import LEAF_PREFIX, public_key_id, range_nodes, verify_tree_head
from audit.treeheads import TreeHeadLog
from audit.verifier import chunk_check

_ZERO = bytes(HASH_SIZE)
#: The leaf standing for an entry that is missing or unreadable: the leaf of an all-zero hash.
_MISSING_LEAF = hashlib.sha256(LEAF_PREFIX + _ZERO).digest()
_NODE = b"\x01"
#: Entries per parallel segment: a power of two, so that every Merkle node of level <= 16 lies in one segment.
SEGMENT_LEVEL = 15
SEGMENT = 1 << SEGMENT_LEVEL


@dataclass
class ChainReport:
    chain_id: str
    ok: bool
    first_seq: int
    last_seq: int
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    detail: str | None = None
    hmac_checked: bool = True
    chunk_entries: int = 0
    merkle_nodes_checked: int = 0
    tree_heads_checked: int = 0
    external_tree_heads: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Levels:
    """Complete subtrees over leaves [lo, lo + n): ``bases[h]`` is the first node index at level h and
    ``data[h]`` the concatenated hashes (level 0: the leaf hashes)."""

    bases: list[int]
    data: list[bytes]

    @classmethod
    def build(cls, lo: int, leaves: bytes) -> _Levels:
        levels = cls([lo], [leaves])
        levels.grow()
        return levels

    def grow(self) -> None:
        """Add every level above the top one that has at least one complete node."""
        sha = hashlib.sha256
        while True:
            below, base = self.data[-1], self.bases[-1]
            skip = base & 1  # a node pairs an even index with the next one
            view = memoryview(below)[skip * HASH_SIZE :]
            pairs = len(view) // (2 * HASH_SIZE)
            if pairs == 0:
                view.release()
                return
            level = b"".join([sha(_NODE + view[j : j + 64]).digest() for j in range(0, pairs * 64, 64)])
            view.release()
            self.bases.append((base + skip) >> 1)
            self.data.append(level)

    @classmethod
    def join(cls, lo: int, parts: Sequence[list[bytes]], segment_level: int = SEGMENT_LEVEL) -> _Levels:
        """The levels over consecutive segments whose boundaries are multiples of 2**segment_level: every
        node up to that level lies in one segment, so those levels are concatenations; the rest grows."""
        top = min(segment_level, max(len(p) for p in parts) - 1)
        levels = cls(
            [-(-lo >> h) for h in range(top + 1)],
            [b"".join(p[h] for p in parts if h < len(p)) for h in range(top + 1)],
        )
        levels.grow()
        return levels

    def node(self, level: int, idx: int) -> bytes | None:
        if level >= len(self.data):
            return None
        offset = (idx - self.bases[level]) * HASH_SIZE
        if offset < 0 or offset + HASH_SIZE > len(self.data[level]):
            return None
        return self.data[level][offset : offset + HASH_SIZE]


@dataclass
class Segment:
    """The verdict on entries ``first..last``, the complete subtrees over them (level 0: leaf hashes of the
    recomputed entry hashes, by position; the leaf of a zero hash where an entry is missing or unreadable)
    and how they compare with the stored Merkle nodes inside the segment (``node_problem``: see
    :func:`_node_problem`)."""

    first: int
    last: int
    checked: int
    verification: Verification | None
    levels: list[bytes]
    nodes_checked: int = 0
    node_problem: tuple[int, int, int, str] | None = None
    chunk_entries: int = 0
    #: ``(seq, what is wrong)`` of each chunk entry whose listed row digests do not hash to its rows_root.
    chunk_problems: list[tuple[int, str]] = field(default_factory=list)


async def verify_segment(
    pg: Any, chain_id: str, first: int, last: int, hmac_keys: Mapping[str, bytes] | None,
    page: int = store.PAGE_ROWS,
) -> Segment:
    """Check entries first..last (``pg``: an asyncpg connection), and the stored Merkle nodes over them; the
    first link is the stored hash of the entry before ``first`` (the genesis hash for entry 1).

    Each page is checked in a worker thread while the event loop receives the next one: the Python work
    still takes turns (the GIL), but the database produces rows meanwhile instead of waiting for us. The
    stored nodes are aggregated by the database on the same connection right after the last page.
    """
    prev: bytes | None = None
    if first > 1:
        prev = await pg.fetchval(
            "SELECT entry_hash FROM entries WHERE chain_id = $1 AND seq = $2", chain_id, first - 1
        )
    leaves: list[bytes] = []  # leaf hashes of the recomputed entry hashes by position: seq first + i
    state: dict[str, Any] = {"chain": None, "checked": 0, "expected": first, "prev": prev, "chunks": 0}
    chunk_problems: list[tuple[int, str]] = []
    sha, chunk_types = hashlib.sha256, domain.CHUNK_EVENT_TYPES

    def check(rows: list[Any]) -> None:
        for row in [r for r in rows if r[2] in chunk_types]:
            chunk = chunk_check(row[2], row[6])
            state["chunks"] += chunk.is_chunk
            if chunk.problem:
                chunk_problems.append((row[0], chunk.problem))
        chain: Verification | None = state["chain"]
        if chain is None or chain.ok:
            n0 = len(leaves)
            chain = state["chain"] = verify_rows(
                rows,
                hmac_keys,
                chain_id=chain_id,
                start_prev_hash=state["prev"],
                expected_first_seq=state["expected"],
                leaves=leaves,
            )
            state["checked"] += chain.checked
            if chain.ok:
                state["prev"], state["expected"] = chain.last_hash, (chain.last_seq or 0) + 1
                return
            del leaves[n0 + chain.checked :]
            rows = rows[chain.checked :]
        # Only after a break (the slow path): place every further entry by its own seq, so that the Merkle
        # nodes and tree heads are still checked position by position.
        for row in rows:
            pos = row[0] - first if isinstance(row[0], int) else -1
            if pos < len(leaves):
                continue  # a repeated or out-of-order seq
            leaves.extend([_MISSING_LEAF] * (pos - len(leaves)))
            leaves.append(sha(LEAF_PREFIX + _recompute(chain_id, row)).digest())

    async for rows in store.raw_row_pages(pg, chain_id, first, last, page=page):
        await asyncio.to_thread(check, rows)
    chain, checked = state["chain"], state["checked"]
    if (chain is None or chain.ok) and checked < last - first + 1:
        chain = Verification(
            ok=False,
            checked=checked,
            first_broken_seq=first + checked,
            reason="sequence gap",
            detail=f"entry {first + checked} is missing",
            hmac_checked=hmac_keys is not None,
        )
    leaves.extend([_MISSING_LEAF] * (max(0, last - first + 1) - len(leaves)))
    lo, hi = first - 1, max(last, first - 1)
    stored_task = asyncio.ensure_future(store.raw_node_levels(pg, chain_id, _level_ranges(lo, hi, 1)))
    levels = await asyncio.to_thread(_Levels.build, lo, b"".join(leaves))
    nodes_checked, problem = _node_problem(levels, await stored_task, lo, hi, 1)
    return Segment(
        first, last, checked, chain, levels.data, nodes_checked, problem, state["chunks"], chunk_problems
    )


#: In a worker process: one event loop and one connection per database, kept between segments.
_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_connections: dict[str, Any] = {}


async def _worker_connection(dsn: str) -> Any:
    import asyncpg

    pg = _worker_connections.get(dsn)
    if pg is None or pg.is_closed():
        pg = _worker_connections[dsn] = await asyncpg.connect(
            dsn, server_settings={"search_path": store.SCHEMA, "application_name": "clinomic-audit-verify"}
        )
    return pg


def _worker_loop_run(coro: Any) -> Any:
    global _worker_loop
    if _worker_loop is None:
        _worker_loop = asyncio.new_event_loop()
    return _worker_loop.run_until_complete(coro)


def _warm_worker(dsn: str, hold_seconds: float = 0.0) -> int:
    """Import what a segment needs and connect, so that the first verification does not pay for it; then
    stay busy for ``hold_seconds``, so that the other warm-up calls of the same round reach other workers."""
    _worker_loop_run(_worker_connection(dsn))
    time.sleep(hold_seconds)
    return os.getpid()


def _segment_in_worker(
    dsn: str, chain_id: str, first: int, last: int, hmac_keys: Mapping[str, bytes] | None, page: int
) -> Segment:
    """One segment in a worker process, on that process's own connection.

    The cycle collector is off meanwhile: a segment creates hundreds of thousands of row objects, none in
    a reference cycle (reference counting frees them), and the collector kept scanning the pages still
    held (measured on a 1M-entry chain, 2 workers: 188,000-206,000 entries/s with it, 216,000-226,000
    without, and a fresh worker no longer starts slower). The worker runs nothing else meanwhile, and
    collection resumes after the segment.
    """

    async def run() -> Segment:
        pg = await _worker_connection(dsn)
        try:
            return await verify_segment(pg, chain_id, first, last, hmac_keys, page)
        except BaseException:
            _worker_connections.pop(dsn, None)
            await pg.close()
            raise

    gc.disable()
    try:
        return _worker_loop_run(run())
    finally:
        gc.enable()


class VerifierPool:
    """Worker processes for long verifications, started on first use (``workers <= 1``: never)."""

    def __init__(self, dsn: str, workers: int | None = None) -> None:
        from sqlalchemy.engine import make_url

        self.dsn = make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self._pool: Executor | None = None

    def executor(self) -> Executor | None:
        if self.workers <= 1:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self._pool

    async def warm(self, rounds: int = 10) -> int:
        """Start every worker, with its imports and connection, now rather than in the first verification;
        returns how many answered.

        The executor hands a call to whichever worker is free first, so one quick worker can take every
        warm-up call while another stays cold (measured: with 2 workers, both calls often ran in one
        process, and the first verification paid for the other's imports and connection). Each call
        therefore holds its worker a moment, and rounds repeat until every worker has answered.
        """
        pool = self.executor()
        if pool is None:
            return 0
        loop = asyncio.get_running_loop()
        warmed: set[int] = set()
        for _ in range(rounds):
            calls = (loop.run_in_executor(pool, _warm_worker, self.dsn, 0.2) for _ in range(self.workers))
            warmed.update(await asyncio.gather(*calls))
            if len(warmed) >= self.workers:
                break
        return len(warmed)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _segments(first: int, last: int, size: int = SEGMENT) -> list[tuple[int, int]]:
    """first..last cut where the leaf index (seq - 1) is a multiple of ``size``."""
    cuts = []
    start = first
    while start <= last:
        end = min(last, ((start - 1) // size + 1) * size)
        cuts.append((start, end))
        start = end + 1
    return cuts


async def check_chain(
    engine: AsyncEngine,
    chain_id: str,
    *,
    hmac_keys: Mapping[str, bytes] | None,
    public_keys: Sequence[Ed25519PublicKey],
    head_log: TreeHeadLog | None = None,
    first: int = 1,
    last: int | None = None,
    page: int = store.PAGE_ROWS,
    pool: VerifierPool | None = None,
    segment_level: int = SEGMENT_LEVEL,
) -> ChainReport:
    started = time.perf_counter()
    async with engine.connect() as conn:
        size = await store.chain_size(conn, chain_id)
        last = size if last is None else min(last, size)
        whole_tail = last == size
        report = ChainReport(
            chain_id=chain_id,
            ok=True,
            first_seq=first,
            last_seq=last,
            checked=0,
            hmac_checked=hmac_keys is not None,
        )
        if first > 1:
            report.warnings.append(
                f"range starts at {first}: the link to entry {first - 1} is taken as stored"
            )

        lo, hi = first - 1, max(last, first - 1)
        cuts = _segments(first, last, 1 << segment_level)
        executor = pool.executor() if pool is not None and len(cuts) > 1 else None
        if executor is not None:
            loop = asyncio.get_running_loop()
            segments = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        executor,
                        _segment_in_worker,
                        pool.dsn,
                        chain_id,
                        a,
                        b,
                        hmac_keys,  # type: ignore[union-attr]
                        page,
                    )
                    for a, b in cuts
                )
            )
            levels = _Levels.join(lo, [s.levels for s in segments], segment_level)
            # Every node up to the segment level lies in one segment and was compared there; the rest here.
            upper = await store.node_levels(conn, chain_id, _level_ranges(lo, hi, segment_level + 1))
            nodes = [_node_problem(levels, upper, lo, hi, segment_level + 1)]
        elif last >= first:
            segments = [await verify_segment(await store.raw(conn), chain_id, first, last, hmac_keys, page)]
            levels = _Levels([-(-lo >> h) for h in range(len(segments[0].levels))], segments[0].levels)
            nodes = []
        else:
            segments, levels, nodes = [], _Levels.build(lo, b""), []
        for segment in segments:
            report.checked += segment.checked
            if segment.verification is not None and not segment.verification.ok:
                report.ok = False
                report.first_broken_seq = segment.verification.first_broken_seq
                report.reason, report.detail = segment.verification.reason, segment.verification.detail
                break
        _report_chunks(report, segments)
        nodes += [(s.nodes_checked, s.node_problem) for s in segments]
        _report_nodes(report, nodes)
        heads = await store.tree_heads(conn, chain_id)
    external: list[dict[str, Any]] = []
    if head_log is not None and head_log.enabled:
        external, notes = head_log.read(chain_id)
        report.problems.extend(notes)
        report.external_tree_heads = len(external)
    else:
        report.warnings.append("no external tree-head log is configured (AUDIT_TREE_HEAD_DIR)")
    if first == 1:
        # Heads are read after the entries: one signed meanwhile may cover entries appended since. The chain's
        # size read now, after every head, tells those (present, just not checked) from a truncated ledger.
        chain_end = None
        if whole_tail:
            async with engine.connect() as conn:
                chain_end = await store.chain_size(conn, chain_id)
        _check_heads(report, levels, heads, external, public_keys, chain_end=chain_end)
    else:
        report.warnings.append("tree heads cover a chain from its first entry: not checked for this range")
    report.ok = report.ok and not report.problems
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _recompute(chain_id: str, row: Sequence[Any]) -> bytes:
    try:
        actor = row[3]
        return compute_entry_hash(
            chain_id,
            row[0],
            row[7],
            event_id=row[1],
            event_type=row[2],
            actor=actor if isinstance(actor, (bytes, dict)) else _actor(actor),
            tenant_id=row[4],
            occurred_at=row[5],
            content=row[6],
        )
    except (TypeError, ValueError, AttributeError):
        return _ZERO


def _actor(text: str) -> dict[str, Any]:
    return json.loads(text)


def _level_ranges(lo: int, hi: int, min_level: int) -> dict[int, tuple[int, int]]:
    """Per level >= min_level, the index range of the nodes whose subtrees lie entirely within leaves
    [lo, hi)."""
    ranges: dict[int, tuple[int, int]] = {}
    level = min_level
    while (1 << level) <= hi - lo:
        span = 1 << level
        first, end = -(-lo // span), hi // span
        if end > first:
            ranges[level] = (first, end)
        level += 1
    return ranges


def _node_problem(
    levels: _Levels, stored: dict[int, tuple[int, int, bytes]], lo: int, hi: int, min_level: int
) -> tuple[int, tuple[int, int, int, str] | None]:
    """Every complete subtree of level >= min_level within leaves [lo, hi) against the stored one: how many
    were compared, and the problem covering the lowest entry (the lowest level among those) as
    ``(first covered seq, level, index, what is wrong)``, or None."""
    worst: tuple[int, int, int, str] | None = None
    checked = 0
    for level in range(min_level, max(len(levels.data) - 1, max(stored, default=0)) + 1):
        span = 1 << level
        first = -(-lo // span)
        expect = levels.data[level] if level < len(levels.data) else b""
        got_first, _, got = stored.get(level, (first, 0, b""))
        checked += len(expect) // HASH_SIZE
        if got and got_first != first:
            idx, what = (first, "is missing") if expect else (got_first, "is stored but covers no entry")
        elif got == expect:
            continue
        else:
            common = min(len(got), len(expect))
            k = next(
                (
                    i
                    for i in range(0, common, HASH_SIZE)
                    if got[i : i + HASH_SIZE] != expect[i : i + HASH_SIZE]
                ),
                common,
            )
            idx = first + k // HASH_SIZE
            what = (
                "does not match the entries"
                if k < common
                else "is missing"
                if len(got) < len(expect)
                else "is stored but covers no entry"
            )
        candidate = (idx * span + 1, level, idx, what)
        worst = candidate if worst is None else min(worst, candidate)
    return checked, worst


def _report_chunks(report: ChainReport, segments: Sequence[Segment]) -> None:
    """Count the chunk entries checked; each whose root does not match becomes a problem, and the first of
    them the first broken entry when the entries themselves checked out."""
    report.chunk_entries = sum(s.chunk_entries for s in segments)
    problems = sorted(p for s in segments for p in s.chunk_problems)
    report.problems += [f"entry {seq}: {what}" for seq, what in problems]
    if problems and report.first_broken_seq is None:
        report.first_broken_seq, report.reason = problems[0][0], "chunk root mismatch"
        report.detail = f"entry {problems[0][0]}: {problems[0][1]}"


def _report_nodes(report: ChainReport, parts: Sequence[tuple[int, tuple[int, int, int, str] | None]]) -> None:
    """Add the node comparisons of every part to the report; the worst problem becomes one of its
    problems (and the first broken entry when the entries themselves checked out)."""
    report.merkle_nodes_checked = sum(checked for checked, _ in parts)
    problems = [problem for _, problem in parts if problem is not None]
    if not problems:
        return
    _seq, level, idx, what = min(problems)
    span = 1 << level
    report.problems.append(
        f"merkle node (level {level}, index {idx}) {what}; it covers entries "
        f"{idx * span + 1}..{(idx + 1) * span}"
    )
    if report.first_broken_seq is None:
        report.first_broken_seq, report.reason = min(problems)[0], "merkle node mismatch"
        report.detail = report.problems[-1]


def _root(levels: _Levels, size: int) -> bytes | None:
    hashes = [levels.node(level, idx) for level, idx in range_nodes(0, size)]
    if any(h is None for h in hashes):
        return None
    result = hashes[-1]
    sha = hashlib.sha256
    for h in reversed(hashes[:-1]):
        result = sha(_NODE + h + result).digest()  # type: ignore[operator]
    return result


def _check_heads(
    report: ChainReport,
    levels: _Levels,
    stored: list[dict[str, Any]],
    external: list[dict[str, Any]],
    public_keys: Sequence[Ed25519PublicKey],
    chain_end: int | None,
) -> None:
    keys = {public_key_id(k): k for k in public_keys}

    def ident(head: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(str(head.get(k)) for k in ("tree_size", "timestamp", "root_hash", "signature"))

    in_db = {ident(h) for h in stored}
    in_file = {ident(h) for h in external}
    # A head goes to the external log first and to the database right after, one head at a time: an external
    # head no newer than the database's newest one must be in the database too, or someone removed it.
    newest_in_db = max(
        (h.get("timestamp") for h in stored if isinstance(h.get("timestamp"), int)), default=-1
    )
    for head in external:
        ts = head.get("timestamp")
        if ident(head) not in in_db and isinstance(ts, int) and ts <= newest_in_db:
            report.problems.append(
                f"signed tree head at size {head.get('tree_size')} (timestamp {ts}) is in the "
                "external log but missing from the database"
            )
    if external and any(ident(h) not in in_file for h in stored):
        report.warnings.append("some tree heads in the database are not in the external log")

    seen: set[tuple[Any, ...]] = set()
    matched: list[int] = []
    failed: list[int] = []
    missing_from: int | None = None
    for head in stored + external:
        if ident(head) in seen:
            continue
        seen.add(ident(head))
        size = head.get("tree_size")
        hint = keys.get(head.get("key_id")) if isinstance(head.get("key_id"), str) else None
        candidates = [hint] if hint is not None else list(keys.values())
        if not any(verify_tree_head(head, k) for k in candidates):
            report.problems.append(f"tree head at size {size}: bad signature")
            continue
        report.tree_heads_checked += 1
        if head.get("chain_id") != report.chain_id:
            report.problems.append(f"tree head at size {size} is signed for chain {head.get('chain_id')!r}")
            continue
        if size > report.last_seq:
            if chain_end is not None and size > chain_end:
                report.problems.append(
                    f"tree head at size {size}: beyond end of ledger (the chain has "
                    f"{chain_end} entries: entries are missing at the end)"
                )
                failed.append(size)
                missing_from = chain_end + 1 if missing_from is None else min(missing_from, chain_end + 1)
            continue
        root = _root(levels, size) if size else None
        if size and (root is None or root.hex() != head.get("root_hash")):
            report.problems.append(
                f"tree head at size {size}: root mismatch (entries 1..{size} do not hash to the signed root)"
            )
            failed.append(size)
            continue
        matched.append(size)
    if failed and report.first_broken_seq is None:
        first_fail = min(failed)
        below = [s for s in matched if s < first_fail]
        lo = (max(below) if below else 0) + 1
        if missing_from is not None and first_fail >= missing_from:
            lo = max(lo, missing_from)
            report.reason = "beyond end of ledger"
        else:
            report.reason = "tree head root mismatch"
        report.first_broken_seq = lo
        report.detail = f"the ledger differs from what was signed within entries {lo}..{first_fail}"
