"""The exported-ledger format and a standalone verifier for it (no service, no database).

Export format: JSON Lines, UTF-8, one JSON object per line.

* Line 1, the header::

    {"format": "clinomic-audit-ledger", "version": 1, "chain_id": "tenant:…", "first_seq": 1,
     "start_prev_hash": "<hex>"}

  ``start_prev_hash`` is the ``prev_hash`` of the first exported entry: the chain's genesis hash for a
  complete export (``first_seq`` 1). A partial export (``first_seq`` > 1) can be chain-checked but not held
  against tree heads, which cover the chain from its first entry.
* Every further line, one entry in sequence order::

    {"seq": 1, "event_id": "…", "event_type": "…", "actor": {…}, "tenant_id": "…" | null,
     "occurred_at": "…", "content": "<the canonical JSON, as a JSON string>",
     "prev_hash": "<hex>", "entry_hash": "<hex>", "key_id": "…", "hmac": "<hex>"}

  ``content`` holds the exact content bytes decoded as UTF-8 (the JSON string round-trips them exactly).
  Content that is not valid UTF-8 (only a damaged entry) is written as ``"content_b64"`` (standard base64)
  instead, so the export stays byte-exact either way.

Tree heads file: JSON Lines of signed tree heads (:func:`audit.merkle.sign_tree_head` output), or one JSON
array of them. HMAC keys file: a JSON object mapping key id to the key in standard base64.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit import domain
from audit.ledger import (
    LedgerEntry,
    Verification,
    canonical_json,
    compute_entry_hash,
    genesis_hash,
    seal,
    verify_chain,
)
from audit.merkle import (
    MerkleTree,
    load_public_key,
    public_key_id,
    sign_tree_head,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "SCREENING_PROOF_FORMAT",
    "ScreeningProofCheck",
    "TreeHeadCheck",
    "VerifierReport",
    "benchmark",
    "entry_from_json",
    "entry_line",
    "entry_to_json",
    "export_header",
    "export_ledger",
    "export_lines",
    "load_tree_heads",
    "parse_hmac_keys",
    "read_export",
    "verify_export",
    "verify_screening_proof",
]

EXPORT_FORMAT = "clinomic-audit-ledger"
EXPORT_VERSION = 1

# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


def entry_to_json(entry: LedgerEntry) -> dict[str, Any]:
    """An entry as one export line's object (chain id omitted: the header carries it)."""
    obj: dict[str, Any] = {
        "seq": entry.seq,
        "event_id": entry.event_id,
        "event_type": entry.event_type,
        "actor": entry.actor,
        "tenant_id": entry.tenant_id,
        "occurred_at": entry.occurred_at,
    }
    try:
        obj["content"] = entry.content.decode("utf-8")
    except UnicodeDecodeError:  # not canonical JSON (a damaged row): keep the exact bytes anyway
        obj["content_b64"] = base64.b64encode(entry.content).decode("ascii")
    obj["prev_hash"] = entry.prev_hash.hex()
    obj["entry_hash"] = entry.entry_hash.hex()
    obj["key_id"] = entry.key_id
    obj["hmac"] = entry.hmac.hex()
    return obj


def entry_from_json(obj: Mapping[str, Any], chain_id: str) -> LedgerEntry:
    """Read an export line's object back; raises ValueError on a malformed one."""
    try:
        actor = obj["actor"]
        if not isinstance(actor, dict):
            raise ValueError("actor is not an object")
        seq = obj["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("seq is not an integer")
        tenant_id = obj["tenant_id"]
        for name in ("event_id", "event_type", "occurred_at", "key_id"):
            if not isinstance(obj[name], str):
                raise ValueError(f"{name} is not a string")
        if tenant_id is not None and not isinstance(tenant_id, str):
            raise ValueError("tenant_id is not a string or null")
        return LedgerEntry(
            chain_id=chain_id,
            seq=seq,
            event_id=obj["event_id"],
            event_type=obj["event_type"],
            actor=actor,
            tenant_id=tenant_id,
            occurred_at=obj["occurred_at"],
            content=_content(obj),
            prev_hash=bytes.fromhex(obj["prev_hash"]),
            entry_hash=bytes.fromhex(obj["entry_hash"]),
            key_id=obj["key_id"],
            hmac=bytes.fromhex(obj["hmac"]),
        )
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, binascii.Error) as exc:
        raise ValueError(str(exc)) from None


def _content(obj: Mapping[str, Any]) -> bytes:
    text = obj.get("content")
    if text is not None:
        if not isinstance(text, str):
            raise ValueError("content is not a string")
        return text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return base64.b64decode(obj["content_b64"], validate=True)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def export_header(chain_id: str, *, first_seq: int = 1, start_prev_hash: bytes | None = None) -> str:
    """The export's first line (with its newline)."""
    return next(export_lines((), chain_id=chain_id, first_seq=first_seq, start_prev_hash=start_prev_hash))


def entry_line(entry: LedgerEntry) -> str:
    """One entry as one export line (with its newline)."""
    return _dumps(entry_to_json(entry)) + "\n"


def export_lines(
    entries: Iterable[LedgerEntry],
    *,
    chain_id: str,
    first_seq: int = 1,
    start_prev_hash: bytes | None = None,
) -> Iterator[str]:
    """The export as lines (each ending in a newline), header first; for streaming from a service."""
    if start_prev_hash is None:
        if first_seq != 1:
            raise ValueError("a partial export needs start_prev_hash")
        start_prev_hash = genesis_hash(chain_id)
    header = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "chain_id": chain_id,
        "first_seq": first_seq,
        "start_prev_hash": start_prev_hash.hex(),
    }
    yield _dumps(header) + "\n"
    for entry in entries:
        if entry.chain_id != chain_id:
            raise ValueError(f"entry {entry.seq} belongs to chain {entry.chain_id!r}, not {chain_id!r}")
        yield _dumps(entry_to_json(entry)) + "\n"


def export_ledger(
    entries: Iterable[LedgerEntry],
    out: str | os.PathLike[str] | IO[str],
    *,
    chain_id: str,
    first_seq: int = 1,
    start_prev_hash: bytes | None = None,
) -> int:
    """Write the export to a path or text stream; return the number of entries written."""
    lines = export_lines(entries, chain_id=chain_id, first_seq=first_seq, start_prev_hash=start_prev_hash)
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w", encoding="utf-8", newline="\n") as handle:
            return _write_lines(lines, handle)
    return _write_lines(lines, out)


def _write_lines(lines: Iterator[str], handle: IO[str]) -> int:
    count = -1
    batch: list[str] = []
    for count, line in enumerate(lines):  # noqa: B007
        batch.append(line)
        if len(batch) >= 4096:
            handle.write("".join(batch))
            batch.clear()
    handle.write("".join(batch))
    return max(count, 0)


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


class ExportFormatError(ValueError):
    """The file is not an export this verifier reads (bad header, not JSON Lines)."""


@dataclass
class _Malformed:
    """Stands in for an unreadable line so that verify_chain reports it where it is."""

    line: int
    problem: str

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"line {self.line}: {self.problem}")


def read_export(handle: IO[str]) -> tuple[dict[str, Any], Iterator[LedgerEntry | _Malformed]]:
    """Parse the header; return it and a lazy iterator over the entries (unreadable lines as markers)."""
    first = handle.readline()
    if not first:
        raise ExportFormatError("empty file: no header line")
    try:
        header = json.loads(first)
    except ValueError as exc:
        raise ExportFormatError(f"header line is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"not a {EXPORT_FORMAT} file")
    if header.get("version") != EXPORT_VERSION:
        raise ExportFormatError(f"unsupported export version {header.get('version')!r}")
    chain_id = header.get("chain_id")
    first_seq = header.get("first_seq", 1)
    if not isinstance(chain_id, str) or not chain_id:
        raise ExportFormatError("header has no chain_id")
    if isinstance(first_seq, bool) or not isinstance(first_seq, int) or first_seq < 1:
        raise ExportFormatError("header first_seq must be a positive integer")
    try:
        start = header.get("start_prev_hash")
        header["start_prev_hash_bytes"] = bytes.fromhex(start) if start is not None else None
    except (TypeError, ValueError):
        raise ExportFormatError("header start_prev_hash is not hex") from None

    def entries() -> Iterator[LedgerEntry | _Malformed]:
        loads = json.loads
        for number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            try:
                obj = loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("line is not a JSON object")
                yield entry_from_json(obj, chain_id)
            except ValueError as exc:
                yield _Malformed(number, str(exc))

    return header, entries()


def load_tree_heads(text: str) -> list[dict[str, Any]]:
    """Signed tree heads from a JSON array or JSON Lines."""
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        heads = json.loads(stripped)
    else:
        heads = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    if not all(isinstance(h, dict) for h in heads):
        raise ValueError("every tree head must be a JSON object")
    return heads


def parse_hmac_keys(text: str) -> dict[str, bytes]:
    """``{"key id": "<base64 key>", …}`` → ``{key id: key bytes}``."""
    data = json.loads(text)
    if not isinstance(data, dict) or not data:
        raise ValueError("HMAC keys file must be a non-empty JSON object")
    keys: dict[str, bytes] = {}
    for key_id, encoded in data.items():
        if not isinstance(encoded, str):
            raise ValueError(f"key {key_id!r} is not a base64 string")
        try:
            keys[key_id] = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError(f"key {key_id!r} is not valid base64") from None
        if not keys[key_id]:
            raise ValueError(f"key {key_id!r} is empty")
    return keys


# --------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------


@dataclass
class TreeHeadCheck:
    """One signed tree head held against the ledger. ``status`` is ``"ok"`` or what is wrong."""

    tree_size: int | None
    timestamp: int | None
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class VerifierReport:
    """What :func:`verify_export` found. ``ok`` only when the chain and every tree head check out."""

    chain_id: str
    entries: int
    chain: Verification
    tree_size: int
    root_hash: str | None
    tree_heads: list[TreeHeadCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    suspect_range: tuple[int, int] | None = None
    #: Chunk entries whose rows_root was recomputed from their listed row digests.
    chunk_entries: int = 0

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems and all(h.ok for h in self.tree_heads)

    @property
    def first_broken_seq(self) -> int | None:
        """The first entry known to be wrong: the chain's first break, else the start of the range of
        entries that a failing tree head says were changed."""
        if not self.chain.ok:
            return self.chain.first_broken_seq
        if self.suspect_range is not None:
            return self.suspect_range[0]
        return None

    def to_dict(self) -> dict[str, Any]:
        chain = asdict(self.chain)
        chain["last_hash"] = self.chain.last_hash.hex() if self.chain.last_hash else None
        return {
            "ok": self.ok,
            "chain_id": self.chain_id,
            "entries": self.entries,
            "first_broken_seq": self.first_broken_seq,
            "chain": chain,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "tree_heads": [asdict(h) | {"ok": h.ok} for h in self.tree_heads],
            "suspect_range": list(self.suspect_range) if self.suspect_range else None,
            "chunk_entries": self.chunk_entries,
            "problems": self.problems,
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        lines = [f"chain {self.chain_id}: {self.entries} entries read"]
        c = self.chain
        hmac_note = "with HMAC" if c.hmac_checked else "without HMAC (no key given)"
        if c.ok:
            lines.append(f"chain: OK, {c.checked} entries verified {hmac_note}")
        else:
            lines.append(
                f"chain: BROKEN at seq {c.first_broken_seq}: {c.reason} ({c.detail}); "
                f"{c.checked} entries verified before it, {hmac_note}"
            )
        if self.root_hash is not None:
            lines.append(f"merkle: {self.tree_size} leaves, root {self.root_hash}")
        if self.chunk_entries:
            lines.append(f"chunk entries: {self.chunk_entries} roots recomputed from their listed digests")
        for h in self.tree_heads:
            status = "OK" if h.ok else f"FAILED: {h.status}"
            extra = f" ({h.detail})" if h.detail else ""
            lines.append(f"tree head size={h.tree_size} ts={h.timestamp}: {status}{extra}")
        if self.suspect_range is not None:
            lo, hi = self.suspect_range
            lines.append(f"the ledger differs from what was signed within entries {lo}..{hi}")
        lines.extend(f"problem: {p}" for p in self.problems)
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append(
            "RESULT: OK" if self.ok else f"RESULT: FAILED (first broken entry: {self.first_broken_seq})"
        )
        return "\n".join(lines)


def _public_keys(public_keys: Sequence[Ed25519PublicKey | bytes]) -> dict[str, Ed25519PublicKey]:
    loaded = [load_public_key(k) for k in public_keys]
    return {public_key_id(k): k for k in loaded}


def check_tree_heads(
    heads: Sequence[Mapping[str, Any]],
    tree: MerkleTree | None,
    *,
    chain_id: str,
    entries: int,
    public_keys: Mapping[str, Ed25519PublicKey],
    tree_note: str = "",
) -> tuple[list[TreeHeadCheck], tuple[int, int] | None]:
    """Check each head's signature, chain id and root against ``tree`` (which covers seq 1..tree.size).

    Returns the checks and, if some head's root does not match, the range of entries (1-based, inclusive)
    that must contain the change: after the largest smaller head that matched, up to the failing head.
    """
    checks: list[TreeHeadCheck] = []
    matched_sizes: list[int] = []
    failed_sizes: list[int] = []
    missing_from: int | None = None
    for head in heads:
        size = head.get("tree_size") if isinstance(head, Mapping) else None
        ts = head.get("timestamp") if isinstance(head, Mapping) else None
        size_i = size if isinstance(size, int) and not isinstance(size, bool) else None
        ts_i = ts if isinstance(ts, int) and not isinstance(ts, bool) else None

        def add(status: str, detail: str = "", size_i: int | None = size_i, ts_i: int | None = ts_i) -> None:
            checks.append(TreeHeadCheck(size_i, ts_i, status, detail))

        candidates = list(public_keys.values())
        hinted = public_keys.get(head.get("key_id")) if isinstance(head.get("key_id"), str) else None
        if hinted is not None:
            candidates = [hinted]
        if not candidates:
            add("no public key", "no Ed25519 public key was given")
            continue
        if not any(verify_tree_head(head, key) for key in candidates):
            add("bad signature", "the signature does not verify under the given public key(s)")
            continue
        assert size_i is not None  # a verified head has an int size
        if head.get("chain_id") is not None and head.get("chain_id") != chain_id:
            add("chain id mismatch", f"signed for chain {head.get('chain_id')!r}")
            continue
        if head.get("chain_id") is None:
            detail = "head is not bound to a chain id"
        else:
            detail = ""
        if tree is None:
            add("not checkable", tree_note or "no Merkle tree could be built from this export")
            continue
        if size_i > tree.size:
            if size_i > entries:
                add(
                    "beyond end of ledger",
                    f"signed at {size_i} entries but the export has {entries}: "
                    "entries are missing at the end",
                )
                missing_from = entries + 1
                failed_sizes.append(size_i)
            else:
                add("not checkable", f"the export is unreadable after entry {tree.size}")
            continue
        if tree.root(size_i).hex() != str(head.get("root_hash", "")).lower():
            add("root mismatch", f"the first {size_i} entries do not hash to the signed root")
            failed_sizes.append(size_i)
            continue
        matched_sizes.append(size_i)
        add("ok", detail)
    suspect: tuple[int, int] | None = None
    if failed_sizes:
        first_fail = min(failed_sizes)
        below = [s for s in matched_sizes if s < first_fail]
        lo = (max(below) if below else 0) + 1
        if missing_from is not None and first_fail > entries:
            lo = max(lo, missing_from)  # the only failing heads lie past the end: those entries are gone
        suspect = (lo, first_fail)
    return checks, suspect


def verify_export(
    source: str | os.PathLike[str] | IO[str],
    *,
    tree_heads: Sequence[Mapping[str, Any]] = (),
    public_keys: Sequence[Ed25519PublicKey | bytes] = (),
    hmac_keys: Mapping[str, bytes] | None = None,
    check_content: bool = False,
) -> VerifierReport:
    """Verify an exported ledger on its own: entry hashes and chain links (and HMACs when ``hmac_keys``
    are given), then rebuild the Merkle tree from the recomputed entry hashes and hold every signed tree
    head against it. Streams the file; memory is the tree (64 bytes per entry)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8", newline="\n") as handle:
            return _verify_stream(handle, tree_heads, public_keys, hmac_keys, check_content)
    return _verify_stream(source, tree_heads, public_keys, hmac_keys, check_content)


def _verify_stream(
    handle: IO[str],
    tree_heads: Sequence[Mapping[str, Any]],
    public_keys: Sequence[Ed25519PublicKey | bytes],
    hmac_keys: Mapping[str, bytes] | None,
    check_content: bool,
) -> VerifierReport:
    header, entries = read_export(handle)
    chain_id: str = header["chain_id"]
    first_seq: int = header.get("first_seq", 1)
    start_prev: bytes | None = header["start_prev_hash_bytes"]
    warnings: list[str] = []
    problems: list[str] = []
    if first_seq == 1 and start_prev is not None and start_prev != genesis_hash(chain_id):
        problems.append("header start_prev_hash is not the chain's genesis hash")
    if first_seq == 1:
        start_prev = genesis_hash(chain_id)

    consumed = 0
    chunks = 0

    def counted() -> Iterator[LedgerEntry | _Malformed]:
        nonlocal consumed, chunks
        for item in entries:
            consumed += 1
            if isinstance(item, LedgerEntry) and item.event_type in domain.CHUNK_EVENT_TYPES:
                check = chunk_check(item.event_type, item.content)
                chunks += check.is_chunk
                if check.problem:
                    problems.append(f"entry {item.seq}: {check.problem}")
            yield item

    stream = counted()
    tree: MerkleTree | None = MerkleTree() if first_seq == 1 else None
    result = verify_chain(
        stream,  # type: ignore[arg-type]
        hmac_keys,
        start_prev_hash=start_prev,
        expected_first_seq=first_seq,
        chain_id=chain_id,
        check_content=check_content,
        on_hash=tree.append if tree is not None else None,
    )
    tree_note = (
        "" if tree is not None else "a partial export (first_seq > 1) cannot be held against tree heads"
    )
    # After a break, keep reading: the remaining entries still count, and their recomputed hashes still go
    # into the tree so that every tree head can be checked (the tree stops at the first unreadable entry).
    tree_growing = tree is not None and tree.size == consumed
    for item in stream:
        if not tree_growing or tree is None:
            continue
        if isinstance(item, _Malformed):
            tree_growing = False
            continue
        try:
            tree.append(
                compute_entry_hash(
                    chain_id,
                    item.seq,
                    item.prev_hash,
                    event_id=item.event_id,
                    event_type=item.event_type,
                    actor=item.actor,
                    tenant_id=item.tenant_id,
                    occurred_at=item.occurred_at,
                    content=item.content,
                )
            )
        except (TypeError, ValueError):
            tree_growing = False
    if hmac_keys is None:
        warnings.append("HMACs not checked (no --hmac-key-file): tree heads are the only tamper evidence")
    if not tree_heads:
        warnings.append(
            "no signed tree heads checked: hashes and links alone can be recomputed by whoever edits the file"
        )
    keys = _public_keys(public_keys)
    checks, suspect = check_tree_heads(
        tree_heads,
        tree,
        chain_id=chain_id,
        entries=consumed,
        public_keys=keys,
        tree_note=tree_note,
    )
    return VerifierReport(
        chain_id=chain_id,
        entries=consumed,
        chain=result,
        tree_size=tree.size if tree is not None else 0,
        root_hash=tree.root().hex() if tree is not None else None,
        tree_heads=checks,
        problems=problems,
        warnings=warnings,
        suspect_range=suspect,
        chunk_entries=chunks,
    )


class ChunkCheck(NamedTuple):
    """Whether an entry is a chunk commitment, and what is wrong with it (None: nothing, or not a chunk)."""

    is_chunk: bool
    problem: str | None = None


def chunk_check(event_type: str, content_json: bytes) -> ChunkCheck:
    """An entry (its event type and content bytes) checked as a chunk commitment: its rows_root must be the
    root of its listed row digests. The service's checker runs it too."""
    try:
        content = json.loads(content_json)
    except ValueError:
        return ChunkCheck(False)
    if not isinstance(content, dict) or domain.chunk_kind(event_type, content) is None:
        return ChunkCheck(False)
    return ChunkCheck(True, domain.chunk_root_problem(content["payload"]))


# --------------------------------------------------------------------------------------------------------
# One screening's proof
# --------------------------------------------------------------------------------------------------------

SCREENING_PROOF_FORMAT = "clinomic-audit-screening-proof"


@dataclass
class ScreeningProofCheck:
    """What :func:`verify_screening_proof` found: ``ok``, or the first step that failed and why."""

    screening_id: str | None
    ok: bool
    reason: str | None = None
    detail: str = ""
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"screening {self.screening_id}"]
        lines.extend(f"  ok: {step}" for step in self.steps)
        lines.append("RESULT: OK" if self.ok else f"RESULT: FAILED: {self.reason} ({self.detail})")
        return "\n".join(lines)


class _ProofFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def verify_screening_proof(
    proof: Mapping[str, Any],
    *,
    public_keys: Sequence[Ed25519PublicKey | bytes],
    screening: Mapping[str, Any] | None = None,
) -> ScreeningProofCheck:
    """Check a screening's proof (``GET /api/audit/screenings/{id}/proof``) with nothing but the public key.

    In order: the screening's content, when given, against the digest (a bulk row) or the entry's own payload
    (a single screening); for a bulk row, its digest against the chunk entry's list and its path to the
    entry's ``rows_root``, and that root against the listed digests; the entry's hash, recomputed from its
    fields; its inclusion in the chain's tree; and that tree's signed head. The first failure is reported."""
    sid = proof.get("screening_id") if isinstance(proof, Mapping) else None
    check = ScreeningProofCheck(str(sid) if sid is not None else None, ok=False)
    try:
        _check_screening_proof(proof, public_keys, screening, check.steps)
    except _ProofFailed as failed:
        check.reason, check.detail = failed.reason, failed.detail
        return check
    check.ok = True
    return check


def _field(obj: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name) if isinstance(obj, Mapping) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _ProofFailed("malformed proof", f"{name} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _hashes(values: Any, name: str) -> list[bytes]:
    try:
        out = [bytes.fromhex(v) for v in values]
    except (TypeError, ValueError):
        raise _ProofFailed("malformed proof", f"{name} is not a list of hex hashes") from None
    return out


def _check_screening_proof(
    proof: Mapping[str, Any],
    public_keys: Sequence[Ed25519PublicKey | bytes],
    screening: Mapping[str, Any] | None,
    steps: list[str],
) -> None:
    if not isinstance(proof, Mapping) or proof.get("format") != SCREENING_PROOF_FORMAT:
        raise _ProofFailed("malformed proof", f"not a {SCREENING_PROOF_FORMAT} document")
    sid = _field(proof, "screening_id", str)
    chain_id = _field(proof, "chain_id", str)
    kind = proof.get("kind")
    try:
        entry = entry_from_json(_field(proof, "entry", dict), chain_id)
        content = json.loads(entry.content)
        payload = content["payload"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _ProofFailed("malformed proof", f"the entry cannot be read: {exc}") from None

    # 1. the row: content -> digest -> path -> the root the entry commits to
    if kind == "chunk_row":
        row = _field(proof, "row", dict)
        index, number, size = _field(row, "index", int), _field(row, "row", int), _field(row, "rows", int)
        digest = _hashes([_field(row, "sha256", str)], "row.sha256")[0]
        if screening is not None:
            if screening.get("screening_id") != sid:
                raise _ProofFailed("row content mismatch", "the screening given is another screening")
            if domain.row_digest(screening) != digest:
                raise _ProofFailed("row content mismatch", "the screening's SHA-256 is not the row's digest")
            steps.append("the screening's content hashes to the row's digest")
        if domain.chunk_kind(entry.event_type, content) != domain.RECORDED_CHUNK:
            raise _ProofFailed("not a chunk entry", f"entry {entry.seq} commits to no recorded rows")
        try:
            listed, root = domain.listed_rows(payload)
        except domain.ChunkError as exc:
            raise _ProofFailed("malformed chunk entry", str(exc)) from None
        if not (0 <= index < len(listed)) or listed[index] != (number, sid, digest) or size != len(listed):
            raise _ProofFailed(
                "row digest mismatch", f"entry {entry.seq} does not list row {number} ({sid}) with it"
            )
        path = _hashes(_field(row, "path", list), "row.path")
        if not domain.verify_row((number, sid, digest), index, size, path, root):
            raise _ProofFailed("row path mismatch", "the row's path does not lead to the entry's rows_root")
        steps.append(f"row {number} is leaf {index} of {size} under the chunk root {root.hex()}")
        if domain.chunk_root(listed) != root:
            raise _ProofFailed("chunk root mismatch", "the entry's listed digests do not hash to rows_root")
        steps.append("the chunk root is the root of the digests the entry lists")
    elif kind == "entry":
        if entry.event_type != "ScreeningRecorded" or not isinstance(payload, dict) or payload.get(
            "screening_id"
        ) != sid:
            raise _ProofFailed("not the screening's entry", f"entry {entry.seq} does not record {sid}")
        if screening is not None and domain.row_digest(screening) != domain.row_digest(payload):
            raise _ProofFailed("row content mismatch", "the screening given is not the one the entry holds")
        steps.append(f"entry {entry.seq} records the screening itself")
    else:
        raise _ProofFailed("malformed proof", f"unknown kind {kind!r}")

    # 2. the entry's hash, from its own fields (never the stored entry_hash)
    try:
        entry_hash = compute_entry_hash(
            chain_id, entry.seq, entry.prev_hash, event_id=entry.event_id, event_type=entry.event_type,
            actor=entry.actor, tenant_id=entry.tenant_id, occurred_at=entry.occurred_at,
            content=entry.content,
        )
    except (TypeError, ValueError) as exc:
        raise _ProofFailed("malformed proof", f"the entry cannot be hashed: {exc}") from None
    steps.append(f"entry {entry.seq} hashes to {entry_hash.hex()}")

    # 3. the signed head, then the entry's inclusion in the tree it signs
    head = proof.get("tree_head")
    if not isinstance(head, Mapping):
        raise _ProofFailed("no signed tree head", "no signed head covers the entry yet: ask again later")
    keys = _public_keys(public_keys)
    hinted = keys.get(head.get("key_id")) if isinstance(head.get("key_id"), str) else None
    if not keys or not any(verify_tree_head(head, k) for k in ([hinted] if hinted else keys.values())):
        raise _ProofFailed("bad tree head signature", "the head does not verify under the given key(s)")
    if head.get("chain_id") != chain_id:
        raise _ProofFailed("chain id mismatch", f"the head is signed for {head.get('chain_id')!r}")
    size = head["tree_size"]
    head_root = _hashes([head.get("root_hash", "")], "tree_head.root_hash")[0]
    inclusion = _hashes(_field(proof, "proof", list), "proof")
    if not verify_inclusion(entry_hash, entry.seq - 1, size, inclusion, head_root):
        raise _ProofFailed(
            "entry not included", f"entry {entry.seq} is not in the signed tree of {size} entries"
        )
    steps.append(f"entry {entry.seq} is in the chain's tree of {size} entries")
    steps.append(f"that tree's head is signed for {chain_id} (timestamp {head.get('timestamp')})")


# --------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------


def _bench_content(rng: random.Random, seq: int, tenant: str, actor: dict[str, Any]) -> dict[str, Any]:
    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    return {
        "event_id": uid(),
        "event_type": "screening.result.recorded",
        "event_version": 1,
        "occurred_at": "2025-06-01T12:00:00.000000Z",
        "tenant_id": tenant,
        "actor": actor,
        "correlation_id": uid(),
        "causation_id": uid(),
        "payload": {
            "screening_id": uid(),
            "patient_ref": uid(),
            "b12_pmol_l": round(rng.uniform(80, 600), 1),
            "holotc_pmol_l": round(rng.uniform(10, 120), 1),
            "mma_umol_l": round(rng.uniform(0.1, 1.2), 2),
            "risk_band": rng.choice(["deficient", "borderline", "normal"]),
            "model_version": "b12-risk-2.3.1",
            "seq_hint": seq,
        },
    }


def benchmark(
    entries: int = 1_000_000,
    *,
    proofs: int = 1000,
    chunk: int = 100_000,
    file_check: bool = True,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure sealing, chain verification, tree building, proofs and whole-file verification.

    The chain is generated and verified in chunks of ``chunk`` entries (each chunk continuing from the
    last, as the service would verify incrementally), so memory stays bounded; only the entry hashes
    (32 bytes each) are kept for the tree.
    """
    say = progress or (lambda _msg: None)
    rng = random.Random(seed)
    key = b"bench-hmac-key-0123456789abcdef!"
    keys = {"k1": key}
    tenant = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    chain_id = f"tenant:{tenant}"
    actors = [
        {"role": "clinician", "service": None, "user_id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
        for _ in range(64)
    ]
    signing_key = Ed25519PrivateKey.generate()
    hashes = bytearray()
    seal_time = verify_time = verify_nohmac_time = export_time = 0.0
    content_bytes = 0
    prev = genesis_hash(chain_id)
    tmpdir = tempfile.mkdtemp(prefix="audit-bench-") if file_check else None
    export_path = Path(tmpdir, "ledger.jsonl") if tmpdir else None
    out = open(export_path, "w", encoding="utf-8", newline="\n") if export_path else io.StringIO()  # noqa: SIM115
    try:
        if export_path is not None:
            header_lines = export_lines([], chain_id=chain_id)
            out.write(next(header_lines))
        seq = 1
        while seq <= entries:
            n = min(chunk, entries - seq + 1)
            contents = [
                canonical_json(_bench_content(rng, s, tenant, actors[s % len(actors)]))
                for s in range(seq, seq + n)
            ]
            batch: list[LedgerEntry] = []
            start_prev = prev
            t0 = time.perf_counter()
            for i, content in enumerate(contents):
                s = seq + i
                e = seal(
                    chain_id,
                    s,
                    prev,
                    event_id=f"00000000-0000-4000-8000-{s:012d}",
                    event_type="screening.result.recorded",
                    actor=actors[s % len(actors)],
                    tenant_id=tenant,
                    occurred_at="2025-06-01T12:00:00.000000Z",
                    content=content,
                    key_id="k1",
                    key=key,
                )
                batch.append(e)
                prev = e.entry_hash
            seal_time += time.perf_counter() - t0
            content_bytes += sum(len(c) for c in contents)
            t0 = time.perf_counter()
            result = verify_chain(batch, keys, start_prev_hash=start_prev, expected_first_seq=seq)
            verify_time += time.perf_counter() - t0
            if not result.ok:
                raise AssertionError(f"benchmark chain failed to verify: {result}")
            t0 = time.perf_counter()
            verify_chain(batch, None, start_prev_hash=start_prev, expected_first_seq=seq)
            verify_nohmac_time += time.perf_counter() - t0
            for e in batch:
                hashes += e.entry_hash
            if export_path is not None:
                t0 = time.perf_counter()
                out.write("".join(_dumps(entry_to_json(e)) + "\n" for e in batch))
                export_time += time.perf_counter() - t0
            seq += n
            say(f"sealed and verified {seq - 1}/{entries}")
    finally:
        out.close()

    leaf_data = [bytes(hashes[i : i + 32]) for i in range(0, len(hashes), 32)]
    t0 = time.perf_counter()
    tree = MerkleTree()
    for d in leaf_data:
        tree.append(d)
    append_time = time.perf_counter() - t0
    say("tree built incrementally")
    t0 = time.perf_counter()
    rebuilt = MerkleTree.from_leaf_hashes(tree.levels()[0])
    rebuild_time = time.perf_counter() - t0
    levels = tree.levels()
    t0 = time.perf_counter()
    MerkleTree.from_levels(levels)
    restore_time = time.perf_counter() - t0
    if rebuilt.root() != tree.root():
        raise AssertionError("rebuilt tree differs")
    size = tree.size
    root = tree.root()

    incl_ms: list[float] = []
    incl_verify_ms: list[float] = []
    cons_ms: list[float] = []
    cons_verify_ms: list[float] = []
    if size:
        for _ in range(proofs):
            index = rng.randrange(size)
            t0 = time.perf_counter()
            proof = tree.inclusion_proof(index, size)
            incl_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            if not verify_inclusion(leaf_data[index], index, size, proof, root):
                raise AssertionError("inclusion proof failed")
            incl_verify_ms.append((time.perf_counter() - t0) * 1000)
            old = rng.randrange(1, size + 1)
            t0 = time.perf_counter()
            cproof = tree.consistency_proof(old, size)
            old_root = tree.root(old)
            cons_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            if not verify_consistency(old, size, old_root, root, cproof):
                raise AssertionError("consistency proof failed")
            cons_verify_ms.append((time.perf_counter() - t0) * 1000)
    say("proofs measured")

    heads = []
    t0 = time.perf_counter()
    for s in sorted({size // 4, size // 2, size}):
        heads.append(sign_tree_head(s, tree.root(s), 1_750_000_000_000 + s, signing_key, chain_id=chain_id))
    sign_ms = (time.perf_counter() - t0) * 1000 / max(len(heads), 1)

    figures: dict[str, Any] = {
        "entries": entries,
        "mean_content_bytes": round(content_bytes / max(entries, 1)),
        "seal_entries_per_s": round(entries / seal_time) if seal_time else None,
        "verify_chain_entries_per_s": round(entries / verify_time) if verify_time else None,
        "verify_chain_no_hmac_entries_per_s": round(entries / verify_nohmac_time)
        if verify_nohmac_time
        else None,
        "tree_append_s": round(append_time, 3),
        "tree_rebuild_from_leaf_hashes_s": round(rebuild_time, 3),
        "tree_restore_from_levels_s": round(restore_time, 3),
        "tree_memory_mb": round(sum(len(lv) for lv in levels) / 1e6, 1),
        "inclusion_proof_ms_mean": _mean(incl_ms),
        "inclusion_proof_ms_p99": _p99(incl_ms),
        "inclusion_verify_ms_mean": _mean(incl_verify_ms),
        "consistency_proof_ms_mean": _mean(cons_ms),
        "consistency_proof_ms_p99": _p99(cons_ms),
        "consistency_verify_ms_mean": _mean(cons_verify_ms),
        "tree_head_sign_ms": round(sign_ms, 3),
    }
    if export_path is not None and tmpdir is not None:
        figures["export_entries_per_s"] = round(entries / export_time) if export_time else None
        figures["export_file_mb"] = round(export_path.stat().st_size / 1e6, 1)
        say("verifying the exported file")
        t0 = time.perf_counter()
        report = verify_export(
            export_path, tree_heads=heads, public_keys=[signing_key.public_key()], hmac_keys=keys
        )
        file_time = time.perf_counter() - t0
        if not report.ok:
            raise AssertionError(f"exported file failed to verify:\n{report.summary()}")
        figures["file_verify_entries_per_s"] = round(entries / file_time) if file_time else None
        figures["file_verify_s"] = round(file_time, 2)
        export_path.unlink()
        os.rmdir(tmpdir)
    return figures


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4)
