"""Inclusion and consistency proofs from the stored Merkle nodes: a few rows per proof, one round trip.

The proofs are RFC 9162 ones (``PATH`` and ``PROOF``) over a chain's tree, whose leaf ``i`` is the entry hash
of ``seq = i + 1``. Check them with ``audit.merkle.verify_inclusion(entry_hash, seq - 1, tree_size, proof,
root)`` and ``verify_consistency(first, second, first_root, second_root, proof)``, against a root taken from
a signed tree head, and recompute the entry hash from the entry's fields yourself
(``audit.ledger.compute_entry_hash``): the stored ``entry_hash`` is only what the database says.

A screening's proof (:func:`screening`) adds, for a row of a bulk chunk, the row's Merkle path up to the root
its chunk entry commits to (``audit.domain``), so that any screening is provable on its own.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from audit import domain, store
from audit.merkle import (
    assemble_proof,
    consistency_proof_plan,
    fold_range,
    inclusion_proof_plan,
    leaf_hash,
    range_nodes,
)
from audit.verifier import SCREENING_PROOF_FORMAT, entry_to_json


class ProofError(ValueError):
    """The proof cannot be given: ``status`` says how to answer (404 or 422), the message why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _size(conn: AsyncConnection, chain_id: str) -> int:
    size = await store.chain_size(conn, chain_id)
    if size == 0:
        raise ProofError(404, "the chain has no entries")
    return size


async def _fetch(
    conn: AsyncConnection, chain_id: str, *plans: list[list[tuple[int, int]]]
) -> dict[Any, bytes]:
    wanted = {node for plan in plans for element in plan for node in element}
    found = await store.nodes(conn, chain_id, wanted)
    if len(found) != len(wanted):
        missing = sorted(wanted - set(found))[:3]
        raise ProofError(404, f"stored Merkle nodes are missing (e.g. {missing}); run GET /api/audit/verify")
    return found


async def inclusion(
    conn: AsyncConnection, chain_id: str, seq: int, tree_size: int | None = None
) -> dict[str, Any]:
    """Entry ``seq`` with its inclusion proof in the tree of ``tree_size`` entries (default: the newest
    signed tree head that covers it, else the whole chain) and that tree's root and signed head."""
    size, latest = await store.size_and_latest_head(conn, chain_id)
    if size == 0:
        raise ProofError(404, "the chain has no entries")
    entry = await store.entry(conn, chain_id, seq)
    if entry is None:
        raise ProofError(404, f"no entry {seq}")
    head = latest if latest is not None and latest["tree_size"] == tree_size else None
    if tree_size is None:
        if latest is not None and seq <= latest["tree_size"] <= size:
            head = latest
            tree_size = head["tree_size"]
        else:
            tree_size = size
    if not seq <= tree_size <= size:
        raise ProofError(422, f"tree_size must be between {seq} and {size}")
    proof_plan = inclusion_proof_plan(seq - 1, tree_size)
    root_plan = [range_nodes(0, tree_size)]
    found = await _fetch(conn, chain_id, proof_plan, root_plan)
    if head is None:
        head = await store.tree_head_at(conn, chain_id, tree_size)
    return {
        "chain_id": chain_id,
        "seq": seq,
        "leaf_index": seq - 1,
        "tree_size": tree_size,
        "entry": entry_to_json(entry),
        "leaf_hash": leaf_hash(entry.entry_hash).hex(),
        "proof": [h.hex() for h in assemble_proof(proof_plan, found)],
        "root_hash": fold_range([found[n] for n in root_plan[0]]).hex(),
        "tree_head": head,
    }


async def consistency(
    conn: AsyncConnection, chain_id: str, first: int, second: int | None = None
) -> dict[str, Any]:
    """PROOF(first, second): the tree of ``first`` entries is a prefix of the tree of ``second``."""
    size = await _size(conn, chain_id)
    second = size if second is None else second
    if not 1 <= first <= second <= size:
        raise ProofError(422, f"need 1 <= first <= second <= {size}")
    plan = consistency_proof_plan(first, second)
    first_plan, second_plan = [range_nodes(0, first)], [range_nodes(0, second)]
    found = await _fetch(conn, chain_id, plan, first_plan, second_plan)
    heads = await store.tree_heads_at(conn, chain_id, (first, second))
    return {
        "chain_id": chain_id,
        "first": first,
        "second": second,
        "first_root": fold_range([found[n] for n in first_plan[0]]).hex(),
        "second_root": fold_range([found[n] for n in second_plan[0]]).hex(),
        "proof": [h.hex() for h in assemble_proof(plan, found)],
        "first_tree_head": heads.get(first),
        "second_tree_head": heads.get(second),
    }


SINGLE_RECORDED = "ScreeningRecorded"


def _recording(entry: Any, screening_id: str) -> tuple[str, dict[str, Any]] | None:
    """How ``entry`` records the screening: ``("entry", {})`` for its own ``ScreeningRecorded``,
    ``("chunk_row", {index, rows, root})`` for a row of a recorded chunk's entry, None when it only mentions
    it (the requested and classified chunks list the screening too, but say nothing of its recording)."""
    try:
        content = json.loads(entry.content)
        payload = content["payload"]
    except (ValueError, KeyError, TypeError):
        return None
    if entry.event_type == SINGLE_RECORDED and payload.get("screening_id") == screening_id:
        return "entry", {}
    if domain.chunk_kind(entry.event_type, content) == domain.RECORDED_CHUNK:
        rows, root = domain.listed_rows(payload)
        for index, (_, sid, _) in enumerate(rows):
            if sid == screening_id:
                return "chunk_row", {"index": index, "rows": rows, "root": root}
    return None


async def screening(conn: AsyncConnection, chain_id: str, screening_id: uuid.UUID) -> dict[str, Any]:
    """The proof that screening ``screening_id`` was recorded: the entry that records it with its inclusion
    in the chain up to a signed tree head (as :func:`inclusion`), and for a bulk row its digest and Merkle
    path to the root its chunk entry commits to. 404 for a screening this chain does not record (another
    organisation's included)."""
    sid = str(screening_id)
    mentions = await store.entries(
        conn, chain_id, filters=store.Filters(entity=sid), limit=500, descending=False
    )
    for entry in mentions:
        try:
            found = _recording(entry, sid)
        except domain.ChunkError as exc:
            raise ProofError(409, f"entry {entry.seq} is not a well-formed chunk entry: {exc}") from None
        if found is None:
            continue
        kind, where = found
        answer = await inclusion(conn, chain_id, entry.seq)
        row: dict[str, Any] | None = None
        if kind == "chunk_row":
            index, rows = where["index"], where["rows"]
            number, _, digest = rows[index]
            row = {
                "index": index,
                "row": number,
                "screening_id": sid,
                "sha256": digest.hex(),
                "rows": len(rows),
                "path": [h.hex() for h in domain.row_path(rows, index)],
                "rows_root": where["root"].hex(),
            }
        head = {"format": SCREENING_PROOF_FORMAT, "version": 1, "screening_id": sid, "kind": kind, "row": row}
        return head | answer
    raise ProofError(404, f"no recorded screening {sid}")
