"""Identity use cases: log in (password, second factor, forced change, enforced enrolment), rotate and revoke
sessions, enrol and use TOTP MFA, administer organisations and users.

Every use case runs in one transaction that also writes its events to the outbox; after the commit the
events are published and removed from the outbox, and a housekeeping loop re-publishes whatever a crash or
a broker outage left behind. So no state change happens without its event reaching ``clinomic.identity``
(at least once; consumers deduplicate by event id). Failures that must be remembered (a wrong password
counts towards the lockout) are decided inside the transaction and raised only after it has committed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pyotp
import qrcode
from aiokafka.errors import KafkaError
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import InvalidToken as FernetInvalid
from cryptography.fernet import Fernet, MultiFernet
from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from auth import domain, store
from auth.domain import Next
from auth.keys import SigningKeys
from auth.settings import AuthSettings
from shared.events import Actor, Envelope, Topic, new_envelope
from shared.events import identity as ev
from shared.kafka import encode, publish
from shared.tokens import Principal, Role, Scope, TokenVerifier

log = logging.getLogger(__name__)
_hasher = PasswordHasher()
# Verified against when the username is unknown, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("clinomic-timing-equaliser")
SERVICE_ACTOR = Actor(role="service", service="auth")
#: Words a password may not be built on, besides the user's own name.
CONTEXT_WORDS = ("clinomic",)


# -- outcomes and refusals -------------------------------------------------------------------------------------


class IdentityError(Exception):
    """A refusal the API answers with ``status`` and ``detail`` (and ``headers``)."""

    status = 400
    detail = "request refused"

    def __init__(self, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.detail)
        self.detail = detail or type(self).detail
        self.headers = headers or {}


class AuthenticationFailed(IdentityError):
    """Wrong username or password, or an inactive account: one error for all, so none can be told apart."""

    status = 401
    detail = "invalid username or password"


class Locked(IdentityError):
    """Too many consecutive failures for this username (known or not): the same answer for both."""

    status = 429
    detail = "too many failed attempts; try again later"

    def __init__(self, retry_after: int) -> None:
        super().__init__(headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class RefreshRejected(IdentityError):
    status = 401
    detail = "refresh token rejected"


class MfaFailed(IdentityError):
    status = 401
    detail = "invalid or expired code"


class Forbidden(IdentityError):
    status = 403
    detail = "not allowed"


class NotFound(IdentityError):
    status = 404
    detail = "no such user in your organisation"


class Conflict(IdentityError):
    status = 409
    detail = "conflict"


class PolicyViolation(IdentityError):
    """A new password the policy refuses; ``problems`` say why (never echoing it)."""

    status = 422
    detail = "invalid request"

    def __init__(self, field_name: str, problems: list[str]) -> None:
        super().__init__()
        self.field = field_name
        self.problems = problems


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class LoginOutcome:
    """What a verified factor leads to (see :class:`auth.domain.Next`)."""

    status: Next
    access_token: str | None = None
    refresh_token: str | None = None
    expires_in: int | None = None
    mfa_token: str | None = None
    scope: Scope | None = None


@dataclass(frozen=True)
class MfaEnrolment:
    secret: str
    otpauth_uri: str
    qr_code: str


@dataclass(frozen=True)
class MfaStatus:
    enabled: bool
    backup_codes_left: int
    required: bool


# -- the transaction with its events ---------------------------------------------------------------------------


class _Tx:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.events: list[tuple[Topic, str, Envelope[Any]]] = []

    async def emit(self, payload: BaseModel, kind: tuple[str, int], *, tenant: uuid.UUID | None, actor: Actor,
                   key: str, topic: Topic = Topic.IDENTITY) -> None:
        envelope = new_envelope(payload, event_type=kind[0], event_version=kind[1], tenant_id=tenant, actor=actor)
        await store.outbox_add(self.conn, envelope.event_id, str(topic), key, encode(envelope))
        self.events.append((topic, key, envelope))


def _actor(principal: Principal) -> Actor:
    return Actor(user_id=principal.user_id, role=principal.role)


def _user_actor(user: store.User) -> Actor:
    return Actor(user_id=user.id, role=user.role)


class IdentityService:
    def __init__(self, settings: AuthSettings, engine: AsyncEngine, broker: KafkaBroker, keys: SigningKeys,
                 verifier: TokenVerifier | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.broker = broker
        self.keys = keys
        self.verifier = verifier
        assert settings.audit_signing_key is not None
        self._digest_key = settings.audit_signing_key.get_secret_value().encode()
        self._fernet = MultiFernet([Fernet(k) for k in settings.mfa_keys()])
        self._mfa_roles = settings.required_mfa_roles()
        self._lockout = domain.LockoutPolicy(
            threshold=settings.lockout_threshold, base_seconds=settings.lockout_base_seconds,
            max_seconds=settings.lockout_max_seconds, reset_seconds=settings.lockout_reset_seconds,
        )
        self._access_ttl = timedelta(seconds=settings.jwt_access_ttl_seconds)

    # -- plumbing --------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[_Tx]:
        async with self.engine.begin() as conn:
            tx = _Tx(conn)
            yield tx
        await self._publish(tx.events)

    async def _publish(self, events: list[tuple[Topic, str, Envelope[Any]]]) -> None:
        published = []
        try:
            for topic, key, envelope in events:
                await publish(self.broker, topic, envelope, key=key)
                published.append(envelope.event_id)
        except (KafkaError, OSError, TimeoutError):  # the outbox keeps them; housekeeping publishes them later
            log.warning("publishing identity events failed; %d left in the outbox", len(events) - len(published))
        if published:
            async with self.engine.begin() as conn:
                await store.outbox_remove(conn, published)

    async def republish_pending(self, older_than_seconds: float = 5.0) -> int:
        async with self.engine.begin() as conn:
            rows = await store.outbox_claim(conn, older_than_seconds)
            done = []
            for event_id, topic, key, body in rows:
                envelope = Envelope[dict[str, Any]].model_validate_json(bytes(body))
                try:
                    await publish(self.broker, topic, envelope, key=key)
                except (KafkaError, OSError, TimeoutError):
                    log.warning("outbox redelivery failed; retrying later")
                    break
                done.append(event_id)
            if done:
                await store.outbox_remove(conn, done)
        return len(done)

    async def housekeeping_forever(self, interval_seconds: float = 2.0) -> None:
        """Publish what the outbox still holds; now and then forget expired challenges and stale failures."""
        rounds = 0
        while True:
            await asyncio.sleep(interval_seconds)
            rounds += 1
            try:
                await self.republish_pending()
                if rounds % 300 == 1:
                    now = _now()
                    async with self.engine.begin() as conn:
                        await store.prune(conn, now, now - timedelta(seconds=self._lockout.reset_seconds))
            except Exception:
                log.warning("identity housekeeping pass failed; retrying", exc_info=True)

    def digest(self, username: str) -> str:
        return domain.username_digest(username, self._digest_key)

    @staticmethod
    async def _verify_password(password_hash: str, password: str) -> bool:
        return await asyncio.to_thread(_verify, password_hash, domain.normalise_password(password))

    @staticmethod
    async def _hash_password(password: str) -> str:
        return await asyncio.to_thread(_hasher.hash, domain.normalise_password(password))

    async def check_password_policy(self, password: str, username: str, field_name: str = "password") -> None:
        problems = await asyncio.to_thread(domain.password_problems, password, context=(username, *CONTEXT_WORDS))
        if problems:
            raise PolicyViolation(field_name, problems)

    def _sign(self, claims: dict[str, object]) -> str:
        key = self.keys.current
        return jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid})

    def _access_token(self, user: store.User, now: datetime, *, mfa: bool, session_id: uuid.UUID,
                      scope: Scope | None = None) -> str:
        return self._sign(domain.access_claims(
            user_id=user.id, org_id=user.org_id, role=user.role, mfa=mfa, issuer=self.settings.jwt_issuer,
            audience=self.settings.jwt_audience, now=now, ttl=self._access_ttl, session_id=session_id, scope=scope,
        ))

    async def _new_refresh(self, conn: AsyncConnection, user: store.User, session_id: uuid.UUID,
                           session_expires_at: datetime, now: datetime) -> str:
        token = domain.new_refresh_token()
        await store.insert_refresh(
            conn, token_hash=domain.refresh_token_hash(token), family_id=session_id, user_id=user.id, issued_at=now,
            expires_at=session_expires_at,
            idle_expires_at=domain.refresh_expiry(now, session_expires_at,
                                                  timedelta(seconds=self.settings.refresh_idle_timeout_seconds)),
        )
        return token

    def _revoked_locally(self, user_id: uuid.UUID | None = None, sessions: list[uuid.UUID] | None = None) -> None:
        """This process refuses at once; the events tell every other verifier."""
        if self.verifier is None:
            return
        if user_id is not None:
            self.verifier.revocations.revoke_user(user_id)
        if sessions:
            self.verifier.revocations.revoke_sessions(sessions)

    async def _revoke_sessions(self, tx: _Tx, user: store.User, now: datetime, reason: str, actor: Actor,
                               session_id: uuid.UUID | None = None) -> list[uuid.UUID]:
        revoked = await store.revoke_sessions(tx.conn, now=now, reason=reason, user_id=user.id, session_id=session_id)
        if revoked:
            await tx.emit(ev.SessionsRevokedV1(user_id=user.id, session_ids=revoked, reason=reason),  # type: ignore[arg-type]
                          ev.SESSIONS_REVOKED, tenant=user.org_id, actor=actor, key=str(user.id))
        return revoked

    # -- logging in ------------------------------------------------------------------------------------------

    async def _count_failure(self, tx: _Tx, key: str, throttle: store.Throttle, user: store.User | None,
                             now: datetime, client_ip: str | None, reason: str) -> None:
        failures = domain.effective_failures(throttle.failures, throttle.last_failure_at, now, self._lockout) + 1
        seconds = domain.lockout_seconds(failures, self._lockout)
        # The lock runs from when the failure is recorded, not from when the attempt began: a slow password check
        # must not eat into it.
        locked_until = _now() + timedelta(seconds=seconds) if seconds else None
        await store.record_failure(tx.conn, key, failures=failures, now=now, locked_until=locked_until)
        tenant = user.org_id if user else None
        await tx.emit(ev.LoginFailedV1(username_digest=key, user_id=user.id if user else None, client_ip=client_ip,
                                       reason=reason), ev.LOGIN_FAILED, tenant=tenant, actor=SERVICE_ACTOR, key=key)
        if locked_until is not None:
            await tx.emit(ev.AccountLockedV1(username_digest=key, user_id=user.id if user else None, failures=failures,
                                             locked_until=locked_until, client_ip=client_ip),
                          ev.ACCOUNT_LOCKED, tenant=tenant, actor=SERVICE_ACTOR, key=key)

    async def _locked(self, tx: _Tx, key: str, user: store.User | None, now: datetime,
                      client_ip: str | None) -> tuple[store.Throttle, Locked | None]:
        throttle = await store.throttle_for_update(tx.conn, key)
        wait = domain.retry_after(throttle.locked_until, now)
        if not wait:
            return throttle, None
        await tx.emit(ev.LoginFailedV1(username_digest=key, user_id=user.id if user else None, client_ip=client_ip,
                                       reason="locked"), ev.LOGIN_FAILED, tenant=user.org_id if user else None,
                      actor=SERVICE_ACTOR, key=key)
        return throttle, Locked(wait)

    async def login(self, username: str, password: str, client_ip: str | None) -> LoginOutcome:
        now = _now()
        key = self.digest(username)
        outcome: LoginOutcome | IdentityError
        async with self._tx() as tx:
            user = await store.user_by_username(tx.conn, username)
            throttle, locked = await self._locked(tx, key, user, now, client_ip)
            if locked is not None:
                outcome = locked
            else:
                ok = await self._verify_password(user.password_hash if user else _DUMMY_HASH, password)
                if ok and user is not None and user.active:
                    await store.clear_failures(tx.conn, key)
                    if _hasher.check_needs_rehash(user.password_hash):
                        await store.update_password_hash(tx.conn, user.id, await self._hash_password(password))
                    outcome = await self._proceed(tx, user, now, client_ip, mfa_done=False, method="password")
                else:
                    await self._count_failure(tx, key, throttle, user, now, client_ip, reason="credentials")
                    outcome = AuthenticationFailed()
        if isinstance(outcome, IdentityError):
            raise outcome
        return outcome

    async def _proceed(self, tx: _Tx, user: store.User, now: datetime, client_ip: str | None, *, mfa_done: bool,
                       method: str) -> LoginOutcome:
        """After a verified factor: ask for the next one, or open a (possibly restricted) session."""
        step = domain.next_step(
            mfa_enabled=await store.mfa_enabled(tx.conn, user.id), mfa_done=mfa_done,
            must_change_password=user.must_change_password, role=Role(user.role), mfa_required_roles=self._mfa_roles,
        )
        if step is Next.MFA:
            challenge = domain.new_refresh_token()
            ttl = self.settings.mfa_challenge_ttl_seconds
            await store.insert_challenge(tx.conn, domain.refresh_token_hash(challenge), user.id, now,
                                         now + timedelta(seconds=ttl))
            return LoginOutcome(step, mfa_token=challenge, expires_in=ttl)
        await tx.emit(ev.LoginSucceededV1(user_id=user.id, client_ip=client_ip, method=method), ev.LOGIN_SUCCEEDED,
                      tenant=user.org_id, actor=_user_actor(user), key=str(user.id))
        return await self._open_session(tx, user, now, mfa=mfa_done, step=step)

    async def _open_session(self, tx: _Tx, user: store.User, now: datetime, *, mfa: bool, step: Next) -> LoginOutcome:
        session_id = uuid.uuid4()
        scope = domain.restricted_scope(step)
        ttl = self.settings.jwt_access_ttl_seconds
        if scope is not None:  # a restricted token for one purpose: no refresh token, no renewal
            await store.insert_session(tx.conn, session_id, user.id, now, now + self._access_ttl, mfa)
            return LoginOutcome(step, access_token=self._access_token(user, now, mfa=mfa, session_id=session_id,
                                                                       scope=scope), expires_in=ttl, scope=scope)
        expires_at = now + timedelta(days=self.settings.jwt_refresh_ttl_days)
        await store.insert_session(tx.conn, session_id, user.id, now, expires_at, mfa)
        refresh = await self._new_refresh(tx.conn, user, session_id, expires_at, now)
        return LoginOutcome(Next.AUTHENTICATED, access_token=self._access_token(user, now, mfa=mfa,
                                                                                 session_id=session_id),
                            refresh_token=refresh, expires_in=ttl)

    async def verify_mfa(self, mfa_token: str, *, code: str | None, backup_code: str | None,
                         client_ip: str | None) -> LoginOutcome:
        """Second step of a login: a TOTP code or a backup code against the pending challenge."""
        now = _now()
        token_hash = domain.refresh_token_hash(mfa_token)
        outcome: LoginOutcome | IdentityError = MfaFailed()
        async with self._tx() as tx:
            challenge = await store.challenge_for_update(tx.conn, token_hash)
            if (challenge is None or challenge.used_at is not None or challenge.expires_at <= now
                    or challenge.attempts >= self.settings.mfa_challenge_max_attempts):
                outcome = MfaFailed("MFA challenge invalid or expired: log in again")
            else:
                user = await store.user_by_id(tx.conn, challenge.user_id)
                if user is None or not user.active:
                    await store.update_challenge(tx.conn, token_hash, attempts=challenge.attempts, used_at=now)
                    outcome = MfaFailed("MFA challenge invalid or expired: log in again")
                else:
                    outcome = await self._second_factor(tx, user, challenge, token_hash, now, code, backup_code,
                                                        client_ip)
        if isinstance(outcome, IdentityError):
            raise outcome
        return outcome

    async def _second_factor(self, tx: _Tx, user: store.User, challenge: store.Challenge, token_hash: str,
                             now: datetime, code: str | None, backup_code: str | None,
                             client_ip: str | None) -> LoginOutcome | IdentityError:
        key = self.digest(user.username)
        throttle, locked = await self._locked(tx, key, user, now, client_ip)
        if locked is not None:
            return locked
        method = None
        if code is not None:
            if await self._totp_ok(tx, user, code, now, purpose="login", client_ip=client_ip):
                method = "password+totp"
        elif backup_code is not None and await self._backup_code_ok(tx, user, backup_code, now, client_ip):
            method = "password+backup_code"
        if method is None:
            attempts = challenge.attempts + 1
            spent = attempts >= self.settings.mfa_challenge_max_attempts
            await store.update_challenge(tx.conn, token_hash, attempts=attempts, used_at=now if spent else None)
            await self._count_failure(tx, key, throttle, user, now, client_ip, reason="mfa")
            return MfaFailed("invalid code" + (": log in again" if spent else ""))
        await store.update_challenge(tx.conn, token_hash, attempts=challenge.attempts, used_at=now)
        await store.clear_failures(tx.conn, key)
        return await self._proceed(tx, user, now, client_ip, mfa_done=True, method=method)

    async def _totp_ok(self, tx: _Tx, user: store.User, code: str, now: datetime, *, purpose: str,
                       client_ip: str | None, pending: bool = False) -> bool:
        """Check a TOTP code of the user's (enabled, or pending when enrolling) secret; record replays."""
        secret = await store.mfa_secret(tx.conn, user.id, for_update=True)
        if secret is None or secret.enabled == pending:
            return False
        check = domain.check_totp(self._decrypt(secret.secret_ciphertext), code, now.timestamp(), secret.last_step)
        accepted = check.verdict is domain.TotpVerdict.ACCEPTED and check.step is not None
        if accepted and await store.advance_totp_step(tx.conn, user.id, check.step):  # type: ignore[arg-type]
            return True
        if check.verdict is not domain.TotpVerdict.INVALID:
            await tx.emit(ev.TotpReplayRefusedV1(user_id=user.id, purpose=purpose, client_ip=client_ip),  # type: ignore[arg-type]
                          ev.TOTP_REPLAY_REFUSED, tenant=user.org_id, actor=_user_actor(user), key=str(user.id))
        return False

    async def _backup_code_ok(self, tx: _Tx, user: store.User, code: str, now: datetime,
                              client_ip: str | None) -> bool:
        unused = await store.backup_codes(tx.conn, user.id, used=False)
        found = domain.matching_backup_code(code, unused)
        if isinstance(found, uuid.UUID) and await store.use_backup_code(tx.conn, found, now):
            await tx.emit(ev.BackupCodeUsedV1(user_id=user.id, remaining=len(unused) - 1), ev.BACKUP_CODE_USED,
                          tenant=user.org_id, actor=_user_actor(user), key=str(user.id))
            return True
        if domain.matching_backup_code(code, await store.backup_codes(tx.conn, user.id, used=True)) is not None:
            await tx.emit(ev.BackupCodeReuseRefusedV1(user_id=user.id, client_ip=client_ip),
                          ev.BACKUP_CODE_REUSE_REFUSED, tenant=user.org_id, actor=_user_actor(user), key=str(user.id))
        return False

    # -- sessions ----------------------------------------------------------------------------------------------

    async def refresh(self, refresh_token: str, client_ip: str | None = None) -> TokenPair:
        now = _now()
        token_hash = domain.refresh_token_hash(refresh_token)
        outcome: TokenPair | IdentityError = RefreshRejected()
        revoked: list[uuid.UUID] = []
        async with self._tx() as tx:
            row = await store.refresh_for_update(tx.conn, token_hash)
            user = await store.user_by_id(tx.conn, row.user_id) if row else None
            session = await store.session_by_id(tx.conn, row.family_id) if row else None
            if row is None or user is None or session is None:
                return _raise(RefreshRejected())
            verdict = domain.judge_refresh(
                domain.StoredRefresh(row.expires_at, row.used_at, row.revoked_at, row.idle_expires_at,
                                     row.successor_unused),
                now, grace=timedelta(seconds=self.settings.refresh_grace_seconds),
            )
            if verdict is domain.RefreshVerdict.REUSED:
                revoked = await self._revoke_sessions(tx, user, now, "refresh_token_reuse", SERVICE_ACTOR,
                                                      session_id=session.id)
                await tx.emit(ev.RefreshTokenReuseDetectedV1(user_id=user.id, session_id=session.id,
                                                             client_ip=client_ip),
                              ev.REFRESH_TOKEN_REUSE_DETECTED, tenant=user.org_id, actor=SERVICE_ACTOR,
                              key=str(user.id))
            elif verdict in (domain.RefreshVerdict.ROTATE, domain.RefreshVerdict.GRACE) and user.active:
                if Role(user.role) in self._mfa_roles and not session.mfa:
                    # The role now demands MFA this session never passed: log in again.
                    revoked = await self._revoke_sessions(tx, user, now, "role_requires_mfa", SERVICE_ACTOR,
                                                          session_id=session.id)
                elif not user.must_change_password:
                    if verdict is domain.RefreshVerdict.GRACE and row.successor_hash:
                        await store.supersede_refresh(tx.conn, row.successor_hash, now)
                    new = await self._new_refresh(tx.conn, user, session.id, session.expires_at, now)
                    await store.mark_refresh_used(tx.conn, token_hash, now, domain.refresh_token_hash(new))
                    # Role and organisation are read afresh: a change takes effect at the next refresh.
                    outcome = TokenPair(self._access_token(user, now, mfa=session.mfa, session_id=session.id), new,
                                        self.settings.jwt_access_ttl_seconds)
        self._revoked_locally(sessions=revoked)
        if isinstance(outcome, IdentityError):
            raise outcome
        return outcome

    async def logout(self, refresh_token: str) -> None:
        """End the session the refresh token belongs to (RFC 7009: an unknown token is not an error)."""
        now = _now()
        revoked: list[uuid.UUID] = []
        async with self._tx() as tx:
            row = await store.refresh_for_update(tx.conn, domain.refresh_token_hash(refresh_token))
            user = await store.user_by_id(tx.conn, row.user_id) if row else None
            if row is not None and user is not None:
                revoked = await self._revoke_sessions(tx, user, now, "logout", _user_actor(user),
                                                      session_id=row.family_id)
        self._revoked_locally(sessions=revoked)

    async def logout_everywhere(self, principal: Principal) -> int:
        now = _now()
        async with self._tx() as tx:
            user = await store.user_by_id(tx.conn, principal.user_id)
            revoked = await self._revoke_sessions(tx, user, now, "logout_all", _actor(principal)) if user else []
        self._revoked_locally(sessions=revoked)
        return len(revoked)

    async def revocation_snapshot(self) -> dict[str, Any]:
        """Users deactivated and sessions revoked recently enough that some access token of theirs may live."""
        horizon = self._access_ttl + timedelta(seconds=60)
        now = _now()
        async with self.engine.begin() as conn:
            users, sessions = await store.recent_revocations(conn, now - horizon)
        return {
            "generated_at": now.timestamp(),
            "users": {str(u): (at + horizon).timestamp() for u, at in users},
            "sessions": {str(s): (at + horizon).timestamp() for s, at in sessions},
        }

    # -- passwords ---------------------------------------------------------------------------------------------

    async def change_password(self, principal: Principal, current: str, new: str,
                              client_ip: str | None) -> LoginOutcome:
        """Change one's password (forced after an admin reset): every session ends, a new one starts."""
        now = _now()
        async with self.engine.begin() as conn:
            user = await store.user_by_id(conn, principal.user_id)
        if user is None or not user.active:
            raise AuthenticationFailed("invalid or expired token")
        await self.check_password_policy(new, user.username, "new_password")
        if domain.normalise_password(new) == domain.normalise_password(current):
            raise PolicyViolation("new_password", ["must differ from the current password"])
        new_hash = await self._hash_password(new)
        outcome: LoginOutcome | IdentityError
        revoked: list[uuid.UUID] = []
        key = self.digest(user.username)
        async with self._tx() as tx:
            user = await store.user_by_id(tx.conn, principal.user_id, for_update=True)
            assert user is not None
            throttle, locked = await self._locked(tx, key, user, now, client_ip)
            if locked is not None:
                outcome = locked
            elif not await self._verify_password(user.password_hash, current):
                await self._count_failure(tx, key, throttle, user, now, client_ip, reason="credentials")
                outcome = Forbidden("the current password is not correct")
            else:
                await store.clear_failures(tx.conn, key)
                await store.set_password(tx.conn, user.id, new_hash, must_change=False)
                revoked = await self._revoke_sessions(tx, user, now, "password_changed", _actor(principal))
                await tx.emit(ev.PasswordChangedV1(user_id=user.id, forced=user.must_change_password),
                              ev.PASSWORD_CHANGED, tenant=user.org_id, actor=_actor(principal), key=str(user.id))
                user = await store.user_by_id(tx.conn, user.id)
                assert user is not None
                # The current password was just verified: continue as after a login's first factor.
                outcome = await self._proceed(tx, user, now, client_ip, mfa_done=principal.mfa, method="password")
        self._revoked_locally(sessions=revoked)
        if isinstance(outcome, IdentityError):
            raise outcome
        return outcome

    # -- MFA -------------------------------------------------------------------------------------------------

    def _decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except FernetInvalid:
            raise Conflict("the MFA secret cannot be read with the configured keys") from None

    async def _active_user(self, conn: AsyncConnection, principal: Principal) -> store.User:
        user = await store.user_by_id(conn, principal.user_id)
        if user is None or not user.active:
            raise AuthenticationFailed("invalid or expired token")
        return user

    async def mfa_setup(self, principal: Principal) -> MfaEnrolment:
        secret = domain.new_totp_secret()
        async with self.engine.begin() as conn:
            user = await self._active_user(conn, principal)
            if await store.mfa_enabled(conn, user.id):
                raise Conflict("MFA is already enabled; disable it first")
            await store.put_pending_mfa_secret(conn, user.id, self._fernet.encrypt(secret.encode()).decode())
        uri = pyotp.TOTP(secret, digits=domain.TOTP_DIGITS, interval=domain.TOTP_PERIOD_SECONDS).provisioning_uri(
            name=user.username, issuer_name=self.settings.totp_issuer)
        return MfaEnrolment(secret=secret, otpauth_uri=uri, qr_code=await asyncio.to_thread(_qr_data_url, uri))

    async def mfa_verify_setup(self, principal: Principal, code: str,
                               client_ip: str | None) -> tuple[list[str], LoginOutcome]:
        """Enable MFA with a first valid code; returns the backup codes (shown once) and a session with MFA."""
        now = _now()
        codes = domain.new_backup_codes()
        async with self._tx() as tx:
            user = await self._active_user(tx.conn, principal)
            secret = await store.mfa_secret(tx.conn, user.id, for_update=True)
            if secret is None or secret.enabled:
                return _raise(Conflict("start with /api/auth/mfa/setup" if secret is None else "MFA is already enabled"))
            ok = await self._totp_ok(tx, user, code, now, purpose="enrolment", client_ip=client_ip, pending=True)
            if ok:
                await store.enable_mfa(tx.conn, user.id, now)
                await store.replace_backup_codes(tx.conn, user.id, _hashed_codes(codes))
                await tx.emit(ev.MfaEnabledV1(user_id=user.id), ev.MFA_ENABLED, tenant=user.org_id,
                              actor=_actor(principal), key=str(user.id))
                step = domain.next_step(mfa_enabled=True, mfa_done=True, must_change_password=user.must_change_password,
                                        role=Role(user.role), mfa_required_roles=self._mfa_roles)
                outcome = await self._open_session(tx, user, now, mfa=True, step=step)
        if not ok:
            raise MfaFailed()
        return codes, outcome

    async def _fresh_code(self, tx: _Tx, principal: Principal, code: str, now: datetime, purpose: str,
                          client_ip: str | None) -> tuple[store.User, IdentityError | None]:
        """A fresh TOTP code proves the authenticator is at hand; failures count towards the lockout."""
        user = await self._active_user(tx.conn, principal)
        if not await store.mfa_enabled(tx.conn, user.id):
            return user, Conflict("MFA is not enabled")
        key = self.digest(user.username)
        throttle, locked = await self._locked(tx, key, user, now, client_ip)
        if locked is not None:
            return user, locked
        if not await self._totp_ok(tx, user, code, now, purpose=purpose, client_ip=client_ip):
            await self._count_failure(tx, key, throttle, user, now, client_ip, reason="mfa")
            return user, MfaFailed()
        return user, None

    async def mfa_disable(self, principal: Principal, code: str, client_ip: str | None) -> None:
        if principal.role in self._mfa_roles:
            raise Forbidden("your role requires MFA; it cannot be disabled")
        now = _now()
        async with self._tx() as tx:
            user, refusal = await self._fresh_code(tx, principal, code, now, "disable", client_ip)
            if refusal is None:
                await store.delete_mfa(tx.conn, user.id)
                await tx.emit(ev.MfaDisabledV1(user_id=user.id, by="user"), ev.MFA_DISABLED, tenant=user.org_id,
                              actor=_actor(principal), key=str(user.id))
        if refusal is not None:
            raise refusal

    async def regenerate_backup_codes(self, principal: Principal, code: str, client_ip: str | None) -> list[str]:
        now = _now()
        codes = domain.new_backup_codes()
        async with self._tx() as tx:
            user, refusal = await self._fresh_code(tx, principal, code, now, "backup_codes", client_ip)
            if refusal is None:
                await store.replace_backup_codes(tx.conn, user.id, _hashed_codes(codes))
                await tx.emit(ev.BackupCodesRegeneratedV1(user_id=user.id), ev.BACKUP_CODES_REGENERATED,
                              tenant=user.org_id, actor=_actor(principal), key=str(user.id))
        if refusal is not None:
            raise refusal
        return codes

    async def mfa_status(self, principal: Principal) -> MfaStatus:
        async with self.engine.begin() as conn:
            user = await self._active_user(conn, principal)
            enabled = await store.mfa_enabled(conn, user.id)
            left = await store.backup_codes_left(conn, user.id) if enabled else 0
        return MfaStatus(enabled=enabled, backup_codes_left=left, required=Role(user.role) in self._mfa_roles)

    # -- organisations and users ---------------------------------------------------------------------------------

    async def create_organization(self, name: str, slug: str, actor: Actor,
                                  admin: tuple[str, str] | None = None) -> tuple[uuid.UUID, uuid.UUID | None]:
        """A new tenant (the screening service provisions its schema on the event), optionally with its admin."""
        org_id = uuid.uuid4()
        admin_user = None
        if admin is not None:
            await self.check_password_policy(admin[1], admin[0], "admin.password")
            admin_user = store.User(uuid.uuid4(), org_id, admin[0], await self._hash_password(admin[1]),
                                    Role.ORG_ADMIN.value, True)
        async with self._tx() as tx:
            await store.insert_org(tx.conn, org_id, name, slug)
            await tx.emit(ev.OrganizationCreatedV1(organization_id=org_id, slug=slug), ev.ORGANIZATION_CREATED,
                          tenant=org_id, actor=actor, key=str(org_id))
            if admin_user is not None:
                await store.insert_user(tx.conn, admin_user)
                await tx.emit(ev.UserCreatedV1(user_id=admin_user.id, role=admin_user.role), ev.USER_CREATED,
                              tenant=org_id, actor=actor, key=str(admin_user.id))
        return org_id, admin_user.id if admin_user else None

    async def create_user(self, *, org_id: uuid.UUID | None, username: str, password: str, role: Role,
                          actor: Actor, enforce_password_policy: bool = True) -> uuid.UUID:
        """A new user. Only demo seeding passes ``enforce_password_policy=False`` (and says so in the log).

        A platform admin creates an organisation's admin only while the organisation has no active one (its
        first admin, or after losing all of them); further admins are added by the organisation's admins.
        """
        if enforce_password_policy:
            await self.check_password_policy(password, username)
        else:
            log.warning("password policy bypassed for %s (demo data only)", role.value)
        user = store.User(uuid.uuid4(), org_id, username, await self._hash_password(password), role.value, True)
        async with self._tx() as tx:
            if org_id is not None and await store.org_by_id(tx.conn, org_id) is None:
                return _raise(NotFound("no such organisation"))
            if (actor.role == Role.PLATFORM_ADMIN.value and org_id is not None
                    and await store.has_active_admin(tx.conn, org_id)):
                # The platform admin chose this password: an admin of its own making in an organisation that
                # runs (and may hold patients) would be clinical access by the back door.
                return _raise(Forbidden("the organisation has an administrator; its administrators add others"))
            await store.insert_user(tx.conn, user)
            await tx.emit(ev.UserCreatedV1(user_id=user.id, role=role.value), ev.USER_CREATED, tenant=org_id,
                          actor=actor, key=str(user.id))
        return user.id

    async def profile(self, principal: Principal) -> tuple[store.User, store.Organization | None, bool]:
        async with self.engine.begin() as conn:
            user = await self._active_user(conn, principal)
            org = await store.org_by_id(conn, user.org_id) if user.org_id else None
            return user, org, await store.mfa_enabled(conn, user.id)

    async def users_of(self, principal: Principal) -> list[tuple[store.User, bool]]:
        if principal.role is not Role.ORG_ADMIN or principal.org_id is None:
            raise Forbidden("organisation admins list their organisation's users")
        async with self.engine.begin() as conn:
            return await store.users_of_org(conn, principal.org_id)

    async def _target(self, conn: AsyncConnection, principal: Principal, user_id: uuid.UUID) -> store.User:
        """The user an admin acts on: another organisation's users do not exist for an org admin (404)."""
        target = await store.user_by_id(conn, user_id, for_update=True)
        if target is None or (principal.role is not Role.PLATFORM_ADMIN and target.org_id != principal.org_id):
            raise NotFound()
        if not domain.may_administer(actor_role=principal.role, actor_org=principal.org_id,
                                     actor_id=principal.user_id, target_role=Role(target.role),
                                     target_org=target.org_id, target_id=target.id):
            raise Forbidden("you may not administer this user")
        return target

    async def deactivate(self, principal: Principal, user_id: uuid.UUID) -> None:
        now = _now()
        revoked: list[uuid.UUID] = []
        async with self._tx() as tx:
            target = await self._target(tx.conn, principal, user_id)
            if not target.active:
                return
            await store.deactivate_user(tx.conn, target.id, now)
            await tx.emit(ev.UserDeactivatedV1(user_id=target.id), ev.USER_DEACTIVATED, tenant=target.org_id,
                          actor=_actor(principal), key=str(target.id))
            revoked = await self._revoke_sessions(tx, target, now, "deactivated", _actor(principal))
        self._revoked_locally(user_id=user_id, sessions=revoked)

    async def reset(self, principal: Principal, user_id: uuid.UUID, *, reset_mfa: bool) -> str:
        """A temporary password (returned once) that must be changed at the next login; sessions end.

        The resetter learns the temporary password, so a reset must never leave the resetter able to complete
        the user's login where that would widen what the resetter sees: a platform admin's reset keeps the
        user's MFA, and is refused for a user without it.
        """
        now = _now()
        temporary = domain.temporary_password()
        while domain.password_problems(temporary):
            temporary = domain.temporary_password()
        password_hash = await self._hash_password(temporary)
        async with self._tx() as tx:
            target = await self._target(tx.conn, principal, user_id)
            if not target.active:
                return _raise(Conflict("the user is deactivated"))
            if principal.role is Role.PLATFORM_ADMIN and (reset_mfa or not await store.mfa_enabled(tx.conn,
                                                                                                target.id)):
                # The temporary password is shown to the resetter: without the user's own second factor
                # still in place, it would let a platform admin (no clinical access) log in as an org admin.
                return _raise(Forbidden("a platform admin may reset only the password of an admin whose MFA "
                                        "stays enabled; an administrator of the user's organisation can "
                                        "remove MFA"))
            await store.set_password(tx.conn, target.id, password_hash, must_change=True)
            await store.clear_failures(tx.conn, self.digest(target.username))
            mfa_reset = reset_mfa and await store.delete_mfa(tx.conn, target.id)
            await tx.emit(ev.PasswordResetV1(user_id=target.id, mfa_reset=mfa_reset), ev.PASSWORD_RESET,
                          tenant=target.org_id, actor=_actor(principal), key=str(target.id))
            if mfa_reset:
                await tx.emit(ev.MfaDisabledV1(user_id=target.id, by="admin_reset"), ev.MFA_DISABLED,
                              tenant=target.org_id, actor=_actor(principal), key=str(target.id))
            revoked = await self._revoke_sessions(tx, target, now, "password_reset", _actor(principal))
        self._revoked_locally(sessions=revoked)
        return temporary

    async def change_role(self, principal: Principal, user_id: uuid.UUID, role: Role) -> None:
        """Takes effect at the user's next refresh (or login): access tokens are not re-issued."""
        if not domain.may_assign(actor_role=principal.role, new_role=role):
            raise Forbidden("you may not assign this role")
        async with self._tx() as tx:
            target = await self._target(tx.conn, principal, user_id)
            if target.role == role.value:
                return
            await store.set_role(tx.conn, target.id, role.value)
            await tx.emit(ev.RoleChangedV1(user_id=target.id, old_role=target.role, new_role=role.value),
                          ev.ROLE_CHANGED, tenant=target.org_id, actor=_actor(principal), key=str(target.id))


def _now() -> datetime:
    return datetime.now(UTC)


def _raise(error: IdentityError) -> Any:
    raise error


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _hashed_codes(codes: list[str]) -> list[tuple[uuid.UUID, bytes, bytes]]:
    hashed = []
    for code in codes:
        salt = secrets.token_bytes(16)
        hashed.append((uuid.uuid4(), salt, domain.backup_code_digest(code, salt)))
    return hashed


def _qr_data_url(uri: str) -> str:
    image = qrcode.make(uri, border=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
