"""What the ledger keeps of an event: the envelope, minus anything that may not live forever.

A chunk of a bulk upload (``ScreeningBatchRequested`` v1, ``ScreeningBatchClassified`` v1,
``ScreeningBatchRecorded`` v2) is kept as a *commitment*: each row's number, screening id and digest, in
order, and the Merkle root over them, so that one entry stands for a chunk and each of its rows can still be
proved on its own (``docs/audit-ledger.md``, Chunk entries).
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from audit.ledger import canonical_json
from audit.merkle import MerkleTree, leaf_hash, verify_inclusion

#: Fields whose value is replaced by its digest: ciphertexts of PHI must stay erasable by key rotation, and an
#: append-only ledger can never be re-encrypted.
DIGESTED_FIELDS = frozenset({"name_ciphertext"})


def ledger_content(value: Any) -> Any:
    """The event as the ledger stores it: identical, except each PHI ciphertext becomes its SHA-256."""
    if isinstance(value, dict):
        return {
            k: (
                {"sha256": hashlib.sha256(str(v).encode()).hexdigest()}
                if k in DIGESTED_FIELDS and v
                else ledger_content(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [ledger_content(v) for v in value]
    return value


def may_hold_digested_fields(raw: bytes) -> bool:
    """False only when the message certainly has no field that :func:`ledger_content` digests: none of their
    names occurs in it, and no ``\\u`` escape could spell one (so the walk can be skipped)."""
    return b"\\u" in raw or any(name.encode() in raw for name in DIGESTED_FIELDS)


def unreadable_event(raw: bytes, topic: str) -> dict[str, Any]:
    """A message on a platform topic that is not an envelope is still recorded, as its digest."""
    return {"topic": topic, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}


#: In canonical JSON (compact, every quote inside a string escaped), a key named ``id``/``*_id`` with an
#: identifier-like string value, and a key named ``*_ids`` with a list of such strings.
_REF = rb"[A-Za-z0-9\-_.:@/+]{1,128}"
_ID_FIELD = re.compile(rb'"([A-Za-z0-9_]*id)":"(' + _REF + rb')"')
_IDS_FIELD = re.compile(rb'"[A-Za-z0-9_]*_ids":\[((?:"' + _REF + rb'",?)+)\]')
_LISTED = re.compile(rb'"(' + _REF + rb')"')
_MAX_REFS = 64
#: The chain already is the tenant: indexing it would only make one huge posting list.
_UNINDEXED_KEYS = frozenset({b"tenant_id"})


def entity_refs(content: bytes) -> list[str]:
    """The identifiers an event mentions, for the ledger's entity filter: every string under a key named
    ``id``, ``*_id`` or ``*_ids`` at any depth (screening, patient, user, correlation ids...), except the
    tenant. Values are kept only when they look like identifiers (at most 128 of ``[A-Za-z0-9-_.:@/+]``), so
    nothing free-text is indexed. ``content`` is the entry's canonical JSON, scanned as bytes; the content,
    not this list, is what the hashes cover."""
    found: dict[str, None] = {}
    for key, value in _ID_FIELD.findall(content):
        if (key == b"id" or key.endswith(b"_id")) and key not in _UNINDEXED_KEYS:
            found[value.decode()] = None
    for listed in _IDS_FIELD.findall(content):
        for value in _LISTED.findall(listed):
            found[value.decode()] = None
    return list(found)[:_MAX_REFS]


# -- chunk entries: one ledger entry per chunk of a bulk upload, every row provable on its own ---------------

#: (event type, version) of the bulk chunk events (``shared.events.batch``) the ledger keeps as commitments.
REQUESTED_CHUNK = ("ScreeningBatchRequested", 1)
CLASSIFIED_CHUNK = ("ScreeningBatchClassified", 1)
RECORDED_CHUNK = ("ScreeningBatchRecorded", 2)
#: Domain separation of a row's leaf data: a row leaf can never pass for a chain leaf (an entry hash).
ROW_LEAF_DOMAIN = b"clinomic-audit/chunk-row/v1\0"
_ROW_LEAF = struct.Struct(">Q16s32s")


class ChunkError(ValueError):
    """A chunk commitment (or a payload meant to become one) does not have the expected shape."""


def row_digest(digested: Any) -> bytes:
    """SHA-256 of the canonical JSON of what a row commits to (:func:`digested_part`), as published."""
    return hashlib.sha256(canonical_json(digested)).digest()


def row_leaf(row: int, screening_id: str | uuid.UUID, digest: bytes) -> bytes:
    """The RFC 9162 leaf hash of one row: SHA-256(0x00 ‖ domain ‖ u64 row ‖ uuid(16) ‖ digest(32)).

    Row number and screening id are in the leaf, so a path alone proves *which* row of the upload it is."""
    sid = screening_id if isinstance(screening_id, uuid.UUID) else uuid.UUID(screening_id)
    if len(digest) != 32:
        raise ChunkError("a row digest is 32 bytes")
    if isinstance(row, bool) or not isinstance(row, int) or not 1 <= row < 2**64:
        raise ChunkError(f"row number {row!r} is not a positive integer")
    return leaf_hash(ROW_LEAF_DOMAIN + _ROW_LEAF.pack(row, sid.bytes, digest))


Listed = tuple[int, str, bytes]  # (row, screening id, digest) as a chunk entry lists it


def chunk_tree(rows: Sequence[Listed]) -> MerkleTree:
    return MerkleTree.from_leaf_hashes(b"".join(row_leaf(r, s, d) for r, s, d in rows))


def chunk_root(rows: Sequence[Listed]) -> bytes:
    """The Merkle root over the rows' leaves, in the order listed."""
    if not rows:
        raise ChunkError("a chunk has at least one row")
    return chunk_tree(rows).root()


def row_path(rows: Sequence[Listed], index: int) -> list[bytes]:
    """The inclusion path of row ``index`` (0-based position in the list) up to :func:`chunk_root`."""
    return chunk_tree(rows).inclusion_proof(index)


def verify_row(row: Listed, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """True when ``path`` leads from this row's leaf at ``index`` of ``size`` rows to ``root``."""
    try:
        leaf = row_leaf(*row)
    except (ValueError, TypeError, AttributeError):
        return False
    return verify_inclusion(leaf, index, size, path, root, is_hash=True)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ChunkError(f"a row without its {what}")
    return value


def digested_part(kind: tuple[str, int], item: Any) -> tuple[Any, Any, Mapping[str, Any]]:
    """One element of a chunk's ``rows``: its upload row number, its screening id and the object its digest
    covers. A recorded row commits to its ``screening`` (what ``GET /api/screenings/{id}/recorded`` rebuilds);
    a requested row (a ``BatchRow``) and a classified row (a ``ClassifiedRow``: the request, the assessment
    and the rejection reason) to the whole element, whose number and screening id are the request's."""
    element = _mapping(item, "content")
    if kind == RECORDED_CHUNK:
        screening = _mapping(element.get("screening"), "screening")
        return element.get("row"), screening.get("screening_id"), screening
    request = element if kind == REQUESTED_CHUNK else _mapping(element.get("request"), "request")
    return request.get("row"), request.get("screening_id"), element


def chunk_commitment(kind: tuple[str, int], payload: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A chunk payload of ``kind`` (one of :data:`CHUNK_KINDS`) as the ledger keeps it, and its screening ids.

    Every field but ``rows`` stays; ``rows`` becomes ``[{row, screening_id, sha256}]`` in the published
    order and ``rows_root`` the Merkle root over them. The rows themselves are not kept (the tenant's records
    hold them; the ledger proves them). Raises :class:`ChunkError` when the payload is not such a chunk."""
    rows = payload.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ChunkError("no rows")
    listed: list[Listed] = []
    for item in rows:
        row, sid, digested = digested_part(kind, item)
        if isinstance(row, bool) or not isinstance(row, int) or not isinstance(sid, str):
            raise ChunkError("a row without its number or screening id")
        try:
            listed.append((row, str(uuid.UUID(sid)), row_digest(digested)))
        except ValueError as exc:
            raise ChunkError(f"row {row}: {exc}") from None
    kept = {k: v for k, v in payload.items() if k != "rows"}
    kept["rows"] = [{"row": r, "screening_id": s, "sha256": d.hex()} for r, s, d in listed]
    kept["rows_root"] = chunk_root(listed).hex()
    return kept, [s for _, s, _ in listed]


#: The chunk events kept as commitments, and their event types (a cheap first test for a stored entry).
CHUNK_KINDS = frozenset({REQUESTED_CHUNK, CLASSIFIED_CHUNK, RECORDED_CHUNK})
CHUNK_EVENT_TYPES = frozenset(event_type for event_type, _ in CHUNK_KINDS)


def chunk_kind(event_type: str, content: Mapping[str, Any]) -> tuple[str, int] | None:
    """Which chunk event an entry's content (the envelope as kept) commits to; None when it is no commitment
    (another event, or a chunk kept whole: sealed before its kind was committed to, or not of chunk shape)."""
    kind = (event_type, content.get("event_version"))
    payload = content.get("payload")
    if kind in CHUNK_KINDS and isinstance(payload, Mapping) and "rows_root" in payload:
        return kind
    return None


def listed_rows(payload: Mapping[str, Any]) -> tuple[list[Listed], bytes]:
    """The rows a chunk entry lists and the root it commits to; :class:`ChunkError` when malformed."""
    try:
        rows = [(r["row"], r["screening_id"], bytes.fromhex(r["sha256"])) for r in payload["rows"]]
        root = bytes.fromhex(payload["rows_root"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ChunkError(f"malformed chunk commitment: {exc}") from None
    if not rows or any(len(d) != 32 for _, _, d in rows) or len(root) != 32:
        raise ChunkError("malformed chunk commitment: a digest or the root is not 32 bytes")
    return rows, root


def chunk_root_problem(payload: Mapping[str, Any]) -> str | None:
    """None when the listed digests hash to the committed root, else why not."""
    try:
        rows, root = listed_rows(payload)
        if chunk_root(rows) != root:
            return "chunk root mismatch (the listed row digests do not hash to rows_root)"
    except (ValueError, TypeError, AttributeError) as exc:
        return str(exc)
    return None
