"""Identity use cases: log in, rotate a refresh token, create organisations and users.

Each use case commits its state change, then publishes its event (at-least-once: a crash between the two
loses only an authentication event of a state that is already consistent).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from auth import domain, store
from auth.keys import SigningKey
from auth.settings import AuthSettings
from shared.events import Actor, Topic, new_envelope
from shared.events import identity as ev
from shared.kafka import publish
from shared.tokens import Role

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("clinomic-timing-equaliser")
SERVICE_ACTOR = Actor(role="service", service="auth")


class AuthenticationFailed(Exception):
    """Wrong username or password, or an inactive account: one error for all, so none can be told apart."""


class RefreshRejected(Exception):
    pass


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class IdentityService:
    def __init__(self, settings: AuthSettings, engine: AsyncEngine, broker: KafkaBroker, key: SigningKey) -> None:
        self.settings = settings
        self.engine = engine
        self.broker = broker
        self.key = key
        assert settings.audit_signing_key is not None
        self._digest_key = settings.audit_signing_key.get_secret_value().encode()

    async def _emit(self, payload: BaseModel, kind: tuple[str, int], *, tenant: uuid.UUID | None,
                    actor: Actor, key: str) -> None:
        envelope = new_envelope(payload, event_type=kind[0], event_version=kind[1], tenant_id=tenant, actor=actor)
        await publish(self.broker, Topic.IDENTITY, envelope, key=key)

    def _access_token(self, user: store.User, now: datetime) -> str:
        claims = domain.access_claims(
            user_id=user.id, org_id=user.org_id, role=user.role, mfa=False, issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience, now=now,
            ttl=timedelta(seconds=self.settings.jwt_access_ttl_seconds),
        )
        return jwt.encode(claims, self.key.private_key, algorithm="EdDSA", headers={"kid": self.key.kid})

    async def _issue(self, user: store.User, family_id: uuid.UUID, now: datetime, conn: Any) -> TokenPair:
        refresh = domain.new_refresh_token()
        await store.insert_refresh(
            conn, token_hash=domain.refresh_token_hash(refresh), family_id=family_id, user_id=user.id,
            issued_at=now, expires_at=now + timedelta(days=self.settings.jwt_refresh_ttl_days),
        )
        return TokenPair(self._access_token(user, now), refresh, self.settings.jwt_access_ttl_seconds)

    async def login(self, username: str, password: str, client_ip: str | None) -> TokenPair:
        async with self.engine.begin() as conn:
            user = await store.user_by_username(conn, username)
            ok = _verify(user.password_hash if user else _DUMMY_HASH, password) and user is not None
            if ok and user is not None and user.active:
                if _hasher.check_needs_rehash(user.password_hash):
                    await store.update_password_hash(conn, user.id, _hasher.hash(password))
                pair = await self._issue(user, uuid.uuid4(), datetime.now(UTC), conn)
            else:
                pair = None
        if pair is None or user is None:
            await self._emit(
                ev.LoginFailedV1(username_digest=domain.username_digest(username, self._digest_key),
                                 user_id=user.id if user else None, client_ip=client_ip),
                ev.LOGIN_FAILED, tenant=user.org_id if user else None, actor=SERVICE_ACTOR,
                key=username.casefold(),
            )
            raise AuthenticationFailed
        await self._emit(
            ev.LoginSucceededV1(user_id=user.id, client_ip=client_ip), ev.LOGIN_SUCCEEDED, tenant=user.org_id,
            actor=Actor(user_id=user.id, role=user.role), key=str(user.id),
        )
        return pair

    async def refresh(self, refresh_token: str) -> TokenPair:
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            row = await store.refresh_for_update(conn, domain.refresh_token_hash(refresh_token))
            if row is None:
                raise RefreshRejected("unknown refresh token")
            family_id, user_id, expires_at, used_at, revoked_at = row
            verdict = domain.judge_refresh(domain.StoredRefresh(expires_at, used_at, revoked_at), now)
            if verdict is domain.RefreshVerdict.REUSED:
                await store.revoke_family(conn, family_id, now)
            user = await store.user_by_id(conn, user_id)
            if verdict is not domain.RefreshVerdict.ROTATE or user is None or not user.active:
                raise RefreshRejected(verdict.value)
            await store.mark_refresh_used(conn, domain.refresh_token_hash(refresh_token), now)
            return await self._issue(user, family_id, now, conn)

    async def create_organization(self, name: str, slug: str, actor: Actor) -> uuid.UUID:
        org_id = uuid.uuid4()
        async with self.engine.begin() as conn:
            await store.insert_org(conn, org_id, name, slug)
        await self._emit(ev.OrganizationCreatedV1(organization_id=org_id, slug=slug), ev.ORGANIZATION_CREATED,
                         tenant=org_id, actor=actor, key=str(org_id))
        return org_id

    async def create_user(self, *, org_id: uuid.UUID | None, username: str, password: str, role: Role,
                          actor: Actor) -> uuid.UUID:
        user = store.User(uuid.uuid4(), org_id, username, _hasher.hash(password), role.value, True)
        async with self.engine.begin() as conn:
            await store.insert_user(conn, user)
        await self._emit(ev.UserCreatedV1(user_id=user.id, role=role.value), ev.USER_CREATED, tenant=org_id,
                         actor=actor, key=str(user.id))
        return user.id

    async def user(self, user_id: uuid.UUID) -> store.User | None:
        async with self.engine.begin() as conn:
            return await store.user_by_id(conn, user_id)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
