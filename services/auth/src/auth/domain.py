"""Identity rules without I/O: access-token claims and refresh-token rotation decisions."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


def access_claims(*, user_id: uuid.UUID, org_id: uuid.UUID | None, role: str, mfa: bool, issuer: str,
                  audience: str, now: datetime, ttl: timedelta) -> dict[str, object]:
    return {
        "iss": issuer,
        "aud": audience,
        "sub": str(user_id),
        "org": str(org_id) if org_id else None,
        "role": role,
        "mfa": mfa,
        "jti": str(uuid.uuid4()),
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }


def new_refresh_token() -> str:
    """256 bits from the OS CSPRNG; only its hash is ever stored."""
    return secrets.token_urlsafe(32)


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def username_digest(username: str, key: bytes) -> str:
    """A keyed digest that lets the ledger correlate failed logins without storing what was typed."""
    return hmac.new(key, username.strip().casefold().encode(), hashlib.sha256).hexdigest()[:32]


class RefreshVerdict(StrEnum):
    ROTATE = "rotate"
    REUSED = "reused"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class StoredRefresh:
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


def judge_refresh(stored: StoredRefresh, now: datetime) -> RefreshVerdict:
    """A used token presented again means it was stolen or replayed: the whole family goes (RFC 9700)."""
    if stored.revoked_at is not None:
        return RefreshVerdict.REVOKED
    if stored.used_at is not None:
        return RefreshVerdict.REUSED
    if now >= stored.expires_at:
        return RefreshVerdict.EXPIRED
    return RefreshVerdict.ROTATE
