"""HTTP routes of the audit service: read an organisation's ledger and prove it has not been altered."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from audit import store
from audit.ledger import PLATFORM_CHAIN_ID, LedgerEntry, chain_id_for_tenant, verify_chain
from shared.tokens import Principal, Role
from shared.web import require_roles

router = APIRouter(prefix="/api/audit", tags=["audit"])
Reader = Annotated[Principal, Depends(require_roles(Role.ORG_ADMIN, Role.AUDITOR, Role.PLATFORM_ADMIN))]


def chain_of(principal: Principal) -> str:
    """Organisation staff read their organisation's chain; the platform admin reads the platform chain."""
    return PLATFORM_CHAIN_ID if principal.role is Role.PLATFORM_ADMIN else chain_id_for_tenant(principal.org_id)


class Entry(BaseModel):
    seq: int
    event_id: str
    event_type: str
    actor: dict[str, Any]
    occurred_at: str
    content: dict[str, Any]
    prev_hash: str
    entry_hash: str
    key_id: str
    hmac: str

    @classmethod
    def of(cls, e: LedgerEntry) -> Entry:
        return cls(seq=e.seq, event_id=e.event_id, event_type=e.event_type, actor=e.actor,
                   occurred_at=e.occurred_at, content=json.loads(e.content), prev_hash=e.prev_hash.hex(),
                   entry_hash=e.entry_hash.hex(), key_id=e.key_id, hmac=e.hmac.hex())


class EntryPage(BaseModel):
    chain_id: str
    items: list[Entry]
    next_cursor: int | None


class VerifyReport(BaseModel):
    chain_id: str
    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str | None


@router.get("", response_model=EntryPage)
async def list_entries(
    request: Request, principal: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before_seq: Annotated[int | None, Query(ge=1, description="Cursor: entries older than this seq")] = None,
    event_type: str | None = None,
) -> EntryPage:
    chain_id = chain_of(principal)
    async with request.app.state.engine.begin() as conn:
        rows = await store.entries(conn, chain_id, after_seq=before_seq or 2**62, limit=limit,
                                   event_type=event_type, descending=True)
    return EntryPage(chain_id=chain_id, items=[Entry.of(r) for r in rows],
                     next_cursor=rows[-1].seq if len(rows) == limit else None)


@router.get("/verify", response_model=VerifyReport)
async def verify(request: Request, principal: Reader) -> VerifyReport:
    """Recompute every hash, link and HMAC of the caller's chain, page by page."""
    chain_id = chain_of(principal)
    keys = request.app.state.hmac_keys
    prev, expected, checked = None, 1, 0
    async with request.app.state.engine.begin() as conn:
        page: list[LedgerEntry] = []
        async for entry in store.stream_entries(conn, chain_id):
            page.append(entry)
            if len(page) == 20_000:
                result = verify_chain(page, keys, start_prev_hash=prev, expected_first_seq=expected,
                                      chain_id=chain_id)
                checked += result.checked
                if not result.ok:
                    return VerifyReport(chain_id=chain_id, ok=False, checked=checked,
                                        first_broken_seq=result.first_broken_seq, reason=result.reason)
                prev, expected, page = result.last_hash, (result.last_seq or 0) + 1, []
        result = verify_chain(page, keys, start_prev_hash=prev, expected_first_seq=expected, chain_id=chain_id)
    checked += result.checked
    return VerifyReport(chain_id=chain_id, ok=result.ok, checked=checked,
                        first_broken_seq=result.first_broken_seq, reason=result.reason)
