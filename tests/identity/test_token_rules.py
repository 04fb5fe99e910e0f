"""Verification rules every service shares (shared/tokens.py, shared/web.py): key rotation, revocation of
users and sessions without a call per request, and restricted tokens refused outside their purpose."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI

from auth.keys import SigningKeys
from shared.events import Actor, new_envelope
from shared.events import identity as ev
from shared.kafka import encode
from shared.tokens import InvalidToken, Principal, RevocationSet, Scope, TokenVerifier, apply_revocation_event
from shared.web import current_principal, principal_allowing


def pem() -> str:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


OLD, NEW = pem(), pem()


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {"iss": "clinomic-auth", "aud": "clinomic", "sub": str(uuid.uuid4()), "org": str(uuid.uuid4()),
            "role": "lab_technician", "mfa": False, "jti": "j", "iat": now, "nbf": now, "exp": now + 60,
            "sid": str(uuid.uuid4())} | overrides


def sign(keys: SigningKeys, payload: dict[str, object], index: int = 0) -> str:
    key = keys.keys[index]
    return jwt.encode(payload, key.private_key, algorithm="EdDSA", headers={"kid": key.kid})


def verifier_for(keys: SigningKeys) -> TokenVerifier:
    verifier = TokenVerifier("http://127.0.0.1:1/unused", issuer="clinomic-auth", audience="clinomic",
                             refetch_interval_s=3600)
    verifier.load_jwks(keys.jwks())
    return verifier


# -- key rotation --------------------------------------------------------------------------------------------


def test_the_first_key_signs_and_every_key_is_published() -> None:
    keys = SigningKeys.from_pem(NEW + OLD)
    assert keys.current.kid == SigningKeys.from_pem(NEW).current.kid
    published = keys.jwks()["keys"]
    assert [k["kid"] for k in published] == [k.kid for k in keys.keys]
    assert all(set(k) == {"kty", "crv", "x", "kid", "alg", "use"} for k in published)  # no private part


def test_keys_written_with_escaped_newlines_are_read_too() -> None:
    assert len(SigningKeys.from_pem((NEW + OLD).replace("\n", "\\n")).keys) == 2


async def test_a_token_of_the_retiring_key_verifies_while_that_key_is_published() -> None:
    before = SigningKeys.from_pem(OLD)
    token = sign(before, claims())
    assert (await verifier_for(SigningKeys.from_pem(NEW + OLD)).verify(token)).role.value == "lab_technician"


async def test_once_the_retired_key_is_withdrawn_its_tokens_are_refused() -> None:
    token = sign(SigningKeys.from_pem(OLD), claims())
    with pytest.raises(InvalidToken):
        await verifier_for(SigningKeys.from_pem(NEW)).verify(token)


# -- revocation ----------------------------------------------------------------------------------------------


async def test_a_revoked_users_tokens_are_refused() -> None:
    keys = SigningKeys.from_pem(NEW)
    verifier, payload = verifier_for(keys), claims()
    await verifier.verify(sign(keys, payload))
    verifier.revocations.revoke_user(uuid.UUID(str(payload["sub"])))
    with pytest.raises(InvalidToken):
        await verifier.verify(sign(keys, payload))


async def test_a_revoked_sessions_tokens_are_refused_and_other_sessions_are_not() -> None:
    keys = SigningKeys.from_pem(NEW)
    verifier, payload = verifier_for(keys), claims()
    verifier.revocations.revoke_sessions([str(payload["sid"])])
    with pytest.raises(InvalidToken):
        await verifier.verify(sign(keys, payload))
    await verifier.verify(sign(keys, payload | {"sid": str(uuid.uuid4())}))


def test_the_revocation_events_feed_the_set() -> None:
    user, sessions = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    actor = Actor(role="service", service="auth")
    revocations = RevocationSet()
    assert apply_revocation_event(revocations, encode(new_envelope(
        ev.UserDeactivatedV1(user_id=user), event_type=ev.USER_DEACTIVATED[0], event_version=1, tenant_id=None,
        actor=actor)))
    assert apply_revocation_event(revocations, encode(new_envelope(
        ev.SessionsRevokedV1(user_id=user, session_ids=sessions, reason="logout"),
        event_type=ev.SESSIONS_REVOKED[0], event_version=1, tenant_id=None, actor=actor)))
    assert revocations.refuses(user, None) and revocations.refuses(uuid.uuid4(), str(sessions[1]))


def test_other_and_unreadable_events_change_nothing() -> None:
    revocations = RevocationSet()
    assert not apply_revocation_event(revocations, encode(new_envelope(
        ev.UserCreatedV1(user_id=uuid.uuid4(), role="doctor"), event_type="UserCreated", event_version=1,
        tenant_id=None, actor=Actor(role="service"))))
    assert not apply_revocation_event(revocations, b"\xff not json")
    assert not apply_revocation_event(revocations, b'{"event_type": "UserDeactivated", "payload": {}}')
    assert len(revocations) == 0


def test_entries_are_forgotten_once_no_token_they_match_can_still_be_valid() -> None:
    revocations = RevocationSet()
    user = uuid.uuid4()
    revocations.merge({"users": {str(user): time.time() - 1}, "sessions": {"s": time.time() + 60}})
    assert not revocations.refuses(user, None) and revocations.refuses(uuid.uuid4(), "s")


async def test_a_stale_snapshot_is_refetched_in_the_background_not_on_the_request() -> None:
    keys = SigningKeys.from_pem(NEW)
    payload = claims()
    snapshots = [{"users": {}}, {"users": {payload["sub"]: time.time() + 60}}]

    async def source() -> dict:
        return snapshots.pop(0) if len(snapshots) > 1 else snapshots[0]

    verifier = TokenVerifier("http://127.0.0.1:1/unused", issuer="clinomic-auth", audience="clinomic",
                             resync_interval_s=0.0)
    verifier.load_jwks(keys.jwks())
    verifier.use_snapshot_source(source)
    await verifier.sync_revocations()
    await verifier.verify(sign(keys, payload))  # accepted: the stale snapshot is only refetched meanwhile
    assert verifier._resync_task is not None
    await verifier._resync_task
    with pytest.raises(InvalidToken):
        await verifier.verify(sign(keys, payload))


# -- restricted tokens ---------------------------------------------------------------------------------------


def app_with(verifier: TokenVerifier) -> FastAPI:
    app = FastAPI()
    app.state.token_verifier = verifier

    @app.get("/clinical")
    async def clinical(principal: Annotated[Principal, Depends(current_principal)]) -> dict:
        return {"ok": True}

    @app.get("/enrol")
    async def enrol(principal: Annotated[Principal, Depends(principal_allowing(Scope.MFA_ENROLMENT))]) -> dict:
        return {"scope": principal.scope}

    return app


@pytest.mark.parametrize("scope", list(Scope))
async def test_a_restricted_token_is_refused_by_every_ordinary_route(scope: Scope) -> None:
    keys = SigningKeys.from_pem(NEW)
    transport = httpx.ASGITransport(app=app_with(verifier_for(keys)))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        token = sign(keys, claims(scope=scope.value))
        response = await client.get("/clinical", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


async def test_a_restricted_token_is_accepted_for_its_own_purpose_only() -> None:
    keys = SigningKeys.from_pem(NEW)
    transport = httpx.ASGITransport(app=app_with(verifier_for(keys)))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        enrolment = sign(keys, claims(scope=Scope.MFA_ENROLMENT.value))
        change = sign(keys, claims(scope=Scope.PASSWORD_CHANGE.value))
        assert (await client.get("/enrol", headers={"Authorization": f"Bearer {enrolment}"})).status_code == 200
        assert (await client.get("/enrol", headers={"Authorization": f"Bearer {change}"})).status_code == 403


async def test_a_token_with_a_scope_nobody_issues_is_refused() -> None:
    keys = SigningKeys.from_pem(NEW)
    with pytest.raises(InvalidToken):
        await verifier_for(keys).verify(sign(keys, claims(scope="admin")))
