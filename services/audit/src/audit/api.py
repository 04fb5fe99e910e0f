"""HTTP routes of the audit service: read an organisation's ledger and prove it has not been altered.

Who reads which chain comes from the verified token only: organisation admins and auditors read their
organisation's chain, the platform admin reads the platform chain (events without an organisation). No
parameter names a chain. The public key that verifies tree heads is public.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from shared.text import Text
from shared.tokens import Principal, Role
from shared.web import require_roles

from audit import checker, proofs, store
from audit.ledger import PLATFORM_CHAIN_ID, LedgerEntry, chain_id_for_tenant, normalise_timestamp
from audit.merkle import public_key_id
from audit.treeheads import head_json
from audit.verifier import entry_line, export_header

router = APIRouter(prefix="/api/audit", tags=["audit"])
Reader = Annotated[Principal, Depends(require_roles(Role.ORG_ADMIN, Role.AUDITOR, Role.PLATFORM_ADMIN))]
#: Screenings belong to organisations: only their own compliance staff (admins, auditors) prove them.
OrgReader = Annotated[Principal, Depends(require_roles(Role.ORG_ADMIN, Role.AUDITOR))]
Seq = Annotated[int, Query(ge=1, le=2**62)]
SeqPath = Annotated[int, Path(ge=1, le=2**62)]


def chain_of(principal: Principal) -> str:
    """Organisation staff read their organisation's chain; the platform admin reads the platform chain."""
    if principal.role is Role.PLATFORM_ADMIN:
        return PLATFORM_CHAIN_ID
    if principal.org_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "no organisation: no audit chain to read")
    return chain_id_for_tenant(principal.org_id)


class Entry(BaseModel):
    seq: int
    event_id: str
    event_type: str
    actor: dict[str, Any]
    tenant_id: str | None
    occurred_at: str
    content: Any
    content_b64: str | None = None  # only for a damaged entry whose content is not JSON
    prev_hash: str
    entry_hash: str
    key_id: str
    hmac: str

    @classmethod
    def of(cls, e: LedgerEntry) -> Entry:
        try:
            content, raw = json.loads(e.content), None
        except ValueError:
            content, raw = None, base64.b64encode(e.content).decode()
        return cls(
            seq=e.seq,
            event_id=e.event_id,
            event_type=e.event_type,
            actor=e.actor,
            tenant_id=e.tenant_id,
            occurred_at=e.occurred_at,
            content=content,
            content_b64=raw,
            prev_hash=e.prev_hash.hex(),
            entry_hash=e.entry_hash.hex(),
            key_id=e.key_id,
            hmac=e.hmac.hex(),
        )


class EntryPage(BaseModel):
    chain_id: str
    items: list[Entry]
    next_cursor: str | None


class VerifyReport(BaseModel):
    chain_id: str
    ok: bool
    first_seq: int
    last_seq: int
    checked: int
    first_broken_seq: int | None
    reason: str | None
    detail: str | None
    hmac_checked: bool
    chunk_entries: int
    merkle_nodes_checked: int
    tree_heads_checked: int
    external_tree_heads: int | None
    problems: list[str]
    warnings: list[str]
    seconds: float


def _time(value: datetime | None, name: str) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, f"{name} needs a time zone, e.g. 2025-06-01T12:00:00Z"
        )
    return normalise_timestamp(value)


@router.get("", response_model=EntryPage)
async def list_entries(
    request: Request,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,19}$", description="next_cursor of the previous page")
    ] = None,
    order: Literal["desc", "asc"] = "desc",
    since: Annotated[datetime | None, Query(description="occurred at or after (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="occurred before (RFC 3339)")] = None,
    actor: Annotated[
        Text | None, Query(max_length=128, description="a user id, or a service or role name")
    ] = None,
    event_type: Annotated[Text | None, Query(max_length=128)] = None,
    entity: Annotated[Text | None, Query(max_length=128, description="an id anywhere in the event")] = None,
) -> EntryPage:
    """A page of the caller's chain, newest first unless ``order=asc``; filters combine with AND."""
    chain_id = chain_of(principal)
    actor_user: uuid.UUID | None = None
    actor_name: str | None = None
    if actor is not None:
        try:
            actor_user = uuid.UUID(actor)
        except ValueError:
            actor_name = actor
    filters = store.Filters(
        since=_time(since, "since"),
        until=_time(until, "until"),
        actor_user=actor_user,
        actor_name=actor_name,
        event_type=event_type,
        entity=entity,
    )
    position = int(cursor) if cursor is not None else None
    descending = order == "desc"
    async with request.app.state.engine.connect() as conn:
        rows = await store.entries(
            conn,
            chain_id,
            filters=filters,
            limit=limit,
            descending=descending,
            before=position if descending else None,
            after=position if not descending else None,
        )
    return EntryPage(
        chain_id=chain_id,
        items=[Entry.of(r) for r in rows],
        next_cursor=str(rows[-1].seq) if len(rows) == limit else None,
    )


@router.get("/verify", response_model=VerifyReport)
async def verify(
    request: Request, principal: Reader, from_seq: Seq = 1, to_seq: Seq | None = None
) -> VerifyReport:
    """Recompute the caller's chain (or ``from_seq..to_seq``): entry hashes, links and HMACs, the stored
    Merkle nodes, and every signed tree head (stored and external); report the first broken entry and why."""
    state = request.app.state
    report = await checker.check_chain(
        state.engine,
        chain_of(principal),
        hmac_keys=state.hmac_keys,
        public_keys=state.public_keys,
        head_log=state.head_log,
        first=from_seq,
        last=to_seq,
        pool=state.verifier_pool,
    )
    return VerifyReport(**report.to_dict())


@router.get("/entries/{seq}", response_model=Entry)
async def get_entry(request: Request, principal: Reader, seq: SeqPath) -> Entry:
    async with request.app.state.engine.connect() as conn:
        entry = await store.entry(conn, chain_of(principal), seq)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no entry {seq}")
    return Entry.of(entry)


@router.get("/entries/{seq}/proof")
async def inclusion_proof(
    request: Request, principal: Reader, seq: SeqPath, tree_size: Seq | None = None
) -> dict[str, Any]:
    """RFC 9162 inclusion proof of entry ``seq`` (leaf ``seq - 1``) in the tree of ``tree_size`` entries: by
    default the newest signed tree head that covers it (returned as ``tree_head``), else the whole chain."""
    async with request.app.state.engine.connect() as conn:
        try:
            return await proofs.inclusion(conn, chain_of(principal), seq, tree_size)
        except proofs.ProofError as exc:
            raise HTTPException(exc.status, str(exc)) from None


@router.get("/screenings/{screening_id}/proof")
async def screening_proof(request: Request, principal: OrgReader, screening_id: uuid.UUID) -> dict[str, Any]:
    """The proof that a screening of the caller's organisation was recorded, for ``clinomic-audit-verify
    verify-proof``: the entry recording it with its inclusion proof up to the newest signed tree head covering
    it, and, for a row of a bulk chunk, the row's digest and Merkle path to the root the chunk entry commits
    to.
    Another organisation's screening is 404, like an unknown one."""
    async with request.app.state.engine.connect() as conn:
        try:
            return await proofs.screening(conn, chain_of(principal), screening_id)
        except proofs.ProofError as exc:
            raise HTTPException(exc.status, str(exc)) from None


@router.get("/consistency")
async def consistency_proof(
    request: Request, principal: Reader, first: Seq, second: Seq | None = None
) -> dict[str, Any]:
    """RFC 9162 consistency proof that the tree of ``first`` entries is a prefix of the tree of ``second``
    (default: the whole chain), with both roots and the signed heads at those sizes, if any."""
    async with request.app.state.engine.connect() as conn:
        try:
            return await proofs.consistency(conn, chain_of(principal), first, second)
        except proofs.ProofError as exc:
            raise HTTPException(exc.status, str(exc)) from None


@router.get("/tree-heads", response_model=None)
async def tree_heads(
    request: Request,
    principal: Reader,
    format: Literal["json", "jsonl"] = "json",
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> Any:
    """The caller's chain's signed tree heads, oldest first (``format=jsonl``: the verifier's file format)."""
    chain_id = chain_of(principal)
    async with request.app.state.engine.connect() as conn:
        heads = await store.tree_heads(conn, chain_id, limit=limit, newest_first=limit is not None)
    heads.sort(key=lambda h: (h["tree_size"], h["timestamp"]))
    if format == "jsonl":
        return PlainTextResponse(
            "".join(head_json(h) + "\n" for h in heads), media_type="application/x-ndjson"
        )
    return {"chain_id": chain_id, "items": heads}


def _pem(key: Any) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@router.get("/public-key")
async def public_keys(request: Request) -> dict[str, Any]:
    """The Ed25519 keys that sign tree heads: the current one first, then retired ones still valid for old
    heads. Public: anyone may fetch them."""
    keys = request.app.state.public_keys
    return {
        "algorithm": "Ed25519",
        "keys": [
            {"key_id": public_key_id(k), "current": i == 0, "public_key_pem": _pem(k)}
            for i, k in enumerate(keys)
        ],
    }


@router.get("/public-key.pem", response_class=PlainTextResponse)
async def public_key_pem(request: Request) -> PlainTextResponse:
    """The current tree-head public key as PEM, ready for ``clinomic-audit-verify --public-key``."""
    return PlainTextResponse(_pem(request.app.state.public_keys[0]), media_type="application/x-pem-file")


@router.get("/export")
async def export(request: Request, principal: Reader) -> StreamingResponse:
    """The caller's whole chain in the export format the standalone verifier reads (JSON Lines)."""
    chain_id = chain_of(principal)
    engine = request.app.state.engine

    async def lines() -> AsyncIterator[str]:
        yield export_header(chain_id)
        async with engine.connect() as conn:
            size = await store.chain_size(conn, chain_id)
            async for rows in store.row_pages(conn, chain_id, 1, size, page=5_000):
                yield "".join(entry_line(store.entry_of(chain_id, r)) for r in rows)

    filename = chain_id.replace(":", "_") + ".ledger.jsonl"
    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )
