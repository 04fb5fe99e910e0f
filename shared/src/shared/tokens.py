"""Access-token verification for every service: EdDSA only, issuer and audience pinned, keys from JWKS.

Besides the signature and claims, a verifier refuses tokens that the auth service has revoked since they
were issued, without asking anyone per request: it keeps a :class:`RevocationSet` in memory, seeded from a
snapshot the auth service serves at ``/internal/revocations`` to callers presenting the service credential
(fetched at start and every minute after) and kept current by the ``UserDeactivated`` and ``SessionsRevoked``
events of ``clinomic.identity`` (:func:`watch_revocations`). See ``docs/identity.md``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import httpx
import jwt
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

    from shared.settings import CommonSettings

log = logging.getLogger(__name__)


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    ORG_ADMIN = "org_admin"
    LAB_TECHNICIAN = "lab_technician"
    DOCTOR = "doctor"
    AUDITOR = "auditor"


class Scope(StrEnum):
    """What a *restricted* access token allows; a token without ``scope`` is a full one.

    Every service refuses restricted tokens (``shared.web.current_principal``); only the auth service's
    enrolment and password routes accept the scope they are for.
    """

    MFA_ENROLMENT = "mfa_enrolment"
    PASSWORD_CHANGE = "password_change"


class InvalidToken(Exception):
    """The token is not one this platform issued, or no longer valid. Callers answer 401."""


ALGORITHMS = ["EdDSA"]
#: Longest access-token lifetime the auth service may be configured with (its settings enforce it).
MAX_ACCESS_TTL_SECONDS = 3600
#: How long a verifier remembers a revocation it learnt from an event: longer than any token lives.
REVOCATION_MEMORY_SECONDS = MAX_ACCESS_TTL_SECONDS + 300
#: Event types of ``clinomic.identity`` that revoke access tokens before they expire.
USER_DEACTIVATED = "UserDeactivated"
SESSIONS_REVOKED = "SessionsRevoked"


@dataclass(frozen=True)
class Principal:
    """The verified caller: whose request it is, in which organisation, with which role."""

    user_id: uuid.UUID
    org_id: uuid.UUID | None
    role: Role
    mfa: bool
    token_id: str
    session_id: str | None = None
    scope: str | None = None

    @property
    def restricted(self) -> bool:
        return self.scope is not None


#: The header carrying the service credential on calls between services (``/internal/...`` routes).
SERVICE_TOKEN_HEADER = "x-service-token"


class ServiceCredential(BaseSettings):
    """``INTERNAL_SERVICE_TOKEN``: the secret every service presents on, and demands for, internal routes.

    Internal routes are refused without it whatever the network (a service's port reachable from a
    neighbour, a mis-set firewall): the address a request comes from proves nothing.
    """

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    internal_service_token: SecretStr | None = Field(None, description="Shared by the platform's services only")

    def check_secrets(self) -> None:
        from shared.settings import signing_key

        signing_key(self.internal_service_token, "INTERNAL_SERVICE_TOKEN")

    def headers(self) -> dict[str, str]:
        token = self.internal_service_token
        return {SERVICE_TOKEN_HEADER: token.get_secret_value()} if token else {}

    def accepts(self, presented: str | None) -> bool:
        token = self.internal_service_token
        if token is None or not presented:
            return False
        return hmac.compare_digest(presented.encode(), token.get_secret_value().encode())


class RevocationSet:
    """Users and sessions whose access tokens must be refused until those tokens have expired anyway.

    Entries only ever get added (a deactivated user is never reactivated, a revoked session never
    revived) and are forgotten once no token they could match is still valid, so the set stays small.
    """

    def __init__(self) -> None:
        self._users: dict[uuid.UUID, float] = {}
        self._sessions: dict[str, float] = {}

    def revoke_user(self, user_id: uuid.UUID, until: float | None = None) -> None:
        self._users[user_id] = max(self._users.get(user_id, 0.0), until or time.time() + REVOCATION_MEMORY_SECONDS)

    def revoke_sessions(self, session_ids: Iterable[str | uuid.UUID], until: float | None = None) -> None:
        horizon = until or time.time() + REVOCATION_MEMORY_SECONDS
        for sid in session_ids:
            self._sessions[str(sid)] = max(self._sessions.get(str(sid), 0.0), horizon)

    def merge(self, snapshot: dict[str, Any]) -> None:
        """Add a snapshot's entries (``{"users": {id: until}, "sessions": {id: until}}``, until in epoch s)."""
        for user_id, until in (snapshot.get("users") or {}).items():
            self.revoke_user(uuid.UUID(str(user_id)), float(until))
        for sid, until in (snapshot.get("sessions") or {}).items():
            self.revoke_sessions([sid], float(until))
        self.prune()

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._users = {k: v for k, v in self._users.items() if v > now}
        self._sessions = {k: v for k, v in self._sessions.items() if v > now}

    def refuses(self, user_id: uuid.UUID, session_id: str | None) -> bool:
        return user_id in self._users or (session_id is not None and session_id in self._sessions)

    def __len__(self) -> int:
        return len(self._users) + len(self._sessions)


SnapshotSource = Callable[[], Awaitable[dict[str, Any]]]


class TokenVerifier:
    """Verifies access tokens against the auth service's JWKS, refetching it when an unknown ``kid`` appears.

    Refuses tokens of revoked users and sessions (see :class:`RevocationSet`). The revocation snapshot
    comes from ``revocations_url`` (by default ``/internal/revocations`` on the JWKS host) or from
    ``use_snapshot_source``; it is fetched by :meth:`refresh` and re-fetched in the background whenever it
    is older than ``resync_interval_s`` (never on the request path).
    """

    def __init__(self, jwks_url: str, *, issuer: str, audience: str, refetch_interval_s: float = 10.0,
                 revocations_url: str | None = None, resync_interval_s: float = 60.0) -> None:
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._refetch_interval_s = refetch_interval_s
        self._lock = asyncio.Lock()
        self.revocations = RevocationSet()
        self._revocations_url = revocations_url or urljoin(jwks_url, "/internal/revocations")
        self._snapshot_source: SnapshotSource | None = None
        self._resync_interval_s = resync_interval_s
        self._synced_at: float | None = None  # None: no snapshot source in use (unit tests, tools)
        self._resync_task: asyncio.Task[None] | None = None
        self._service_headers = ServiceCredential().headers()  # the snapshot is an internal route

    def load_jwks(self, jwks: dict[str, Any]) -> None:
        keys = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                keys[jwk["kid"]] = jwt.PyJWK.from_dict(jwk, algorithm="EdDSA")
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _refresh_keys(self) -> None:
        async with self._lock, httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(self._jwks_url)
            response.raise_for_status()
            self.load_jwks(response.json())

    async def refresh(self) -> None:
        """Fetch the signing keys and the revocation snapshot (at start: fails when either is unavailable)."""
        await self._refresh_keys()
        await self.sync_revocations()

    def use_snapshot_source(self, source: SnapshotSource) -> None:
        """Take revocation snapshots from ``source`` instead of HTTP (the auth service reads its database)."""
        self._snapshot_source = source

    async def _fetch_snapshot(self) -> dict[str, Any]:
        if self._snapshot_source is not None:
            return await self._snapshot_source()
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(self._revocations_url, headers=self._service_headers)
            response.raise_for_status()
            return response.json()

    async def sync_revocations(self) -> None:
        snapshot = await self._fetch_snapshot()
        self.revocations.merge(snapshot)
        self._synced_at = time.monotonic()

    def _resync_if_stale(self, force: bool = False) -> None:
        if self._synced_at is None:
            return
        if not force and time.monotonic() - self._synced_at < self._resync_interval_s:
            return
        if self._resync_task is not None and not self._resync_task.done():
            return
        self._synced_at = time.monotonic()  # one attempt per interval, even when it fails
        self._resync_task = asyncio.get_running_loop().create_task(self._resync_quietly())

    async def _resync_quietly(self) -> None:
        try:
            await self.sync_revocations()
        except Exception:  # the events keep the set current meanwhile; try again next interval
            log.warning("revocation snapshot unavailable; will retry", exc_info=True)

    def resync_soon(self) -> None:
        """Schedule a snapshot fetch now (used when the event subscription (re)starts)."""
        self._resync_if_stale(force=True)

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token has no key id")
        if kid not in self._keys and time.monotonic() - self._fetched_at > self._refetch_interval_s:
            try:
                await self._refresh_keys()
            except httpx.HTTPError as exc:
                raise InvalidToken("signing keys unavailable") from exc
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        principal = self.decode(token, key)
        self._resync_if_stale()
        if self.revocations.refuses(principal.user_id, principal.session_id):
            raise InvalidToken("token revoked")
        return principal

    def decode(self, token: str, key: Any) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["iss", "aud", "sub", "role", "jti", "iat", "exp"]},
                leeway=5,
            )
            scope = claims.get("scope")
            if scope is not None and scope not in set(Scope):
                raise ValueError("unknown scope")
            return Principal(
                user_id=uuid.UUID(claims["sub"]),
                org_id=uuid.UUID(claims["org"]) if claims.get("org") else None,
                role=Role(claims["role"]),
                mfa=bool(claims.get("mfa", False)),
                token_id=str(claims["jti"]),
                session_id=str(claims["sid"]) if claims.get("sid") else None,
                scope=scope,
            )
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise InvalidToken("token rejected") from exc


def apply_revocation_event(revocations: RevocationSet, raw: bytes) -> bool:
    """Update ``revocations`` from one raw identity event; True when it revoked something. Never raises."""
    try:
        event = json.loads(raw)
        kind, payload = event.get("event_type"), event.get("payload") or {}
        if kind == USER_DEACTIVATED:
            revocations.revoke_user(uuid.UUID(str(payload["user_id"])))
            return True
        if kind == SESSIONS_REVOKED:
            revocations.revoke_sessions(str(uuid.UUID(str(s))) for s in payload.get("session_ids") or [])
            return True
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # never raise: no poison message
        log.error("unreadable identity event ignored by the revocation watcher")
    return False


def watch_revocations(broker: KafkaBroker, verifier: TokenVerifier, settings: CommonSettings) -> None:
    """Subscribe this process to the revocation events of ``clinomic.identity`` (call before ``broker.start``).

    Every process must see every revocation, so each reads with a group of its own from the moment it
    starts; whenever its partitions are (re)assigned it re-fetches the snapshot, which closes the gap between
    the snapshot and the first event it reads, at start and after a broker restart.
    """
    from aiokafka.abc import ConsumerRebalanceListener

    from shared.events.topics import Topic
    from shared.kafka import every_event_from_now, subscribe

    class _Resync(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        async def on_partitions_assigned(self, assigned: Any) -> None:
            verifier.resync_soon()

    @subscribe(broker, Topic.IDENTITY, listener=_Resync(),
               **every_event_from_now(settings, "revocations", background=True))
    async def revocation_events(raw: bytes) -> None:
        apply_revocation_event(verifier.revocations, raw)
