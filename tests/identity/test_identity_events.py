"""Authentication events reach clinomic.identity (and so the audit ledger) and never carry a secret."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from tests.identity.authenticator import bearer_of
from tests.identity.conftest import (
    IdentityEvents,
    MakeUser,
    Member,
    Org,
    password_login,
    session_by_backup_code,
    strong_password,
    wait_until,
)


async def test_no_identity_event_carries_a_password_token_secret_or_code(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org, identity_events: IdentityEvents,
    enrolled_user: Callable[..., Awaitable[Member]],
) -> None:
    member = await enrolled_user()
    authenticator = member.authenticator
    secrets_seen = [member.password, authenticator.secret, *authenticator.backup_codes]
    tokens = await session_by_backup_code(gateway, member)
    secrets_seen += [tokens["access_token"], tokens["refresh_token"]]
    await password_login(gateway, member, "a-wrong-password-typed")
    secrets_seen.append("a-wrong-password-typed")
    challenge = (await password_login(gateway, member)).json()["mfa_token"]
    code = await authenticator.fresh_code()
    await gateway.post("/api/auth/mfa/verify", json={"mfa_token": challenge, "code": code})
    secrets_seen += [challenge, code]
    reset = (await gateway.post(f"/api/auth/users/{member.id}/reset", headers=org.admin_headers)).json()
    temporary, new = reset["temporary_password"], strong_password()
    restricted = (await gateway.post("/api/auth/mfa/verify", json={
        "mfa_token": (await password_login(gateway, member, temporary)).json()["mfa_token"],
        "backup_code": authenticator.backup_codes.pop()})).json()
    await gateway.post("/api/auth/password", headers=bearer_of(restricted),
                       json={"current_password": temporary, "new_password": new})
    secrets_seen += [temporary, new, restricted["access_token"]]
    await identity_events.wait_for("PasswordChanged", user_id=member.id)
    await asyncio.sleep(0.5)
    published = b"\n".join(identity_events.raw).decode()
    leaked = [s for s in secrets_seen if s in published]
    assert not leaked, f"{len(leaked)} secret value(s) found in identity events"
    assert member.username not in published  # names stay out too: ids and keyed digests only


async def test_logins_are_recorded_and_a_failed_one_names_a_digest_not_what_was_typed(
    gateway: httpx.AsyncClient, make_user: MakeUser, identity_events: IdentityEvents
) -> None:
    member = await make_user()
    assert (await password_login(gateway, member)).status_code == 200
    succeeded = await identity_events.wait_for("LoginSucceeded", user_id=member.id)
    assert succeeded["payload"]["method"] == "password" and succeeded["actor"]["user_id"] == str(member.id)
    await password_login(gateway, member, "not-the-password")
    failed = await identity_events.wait_for("LoginFailed", user_id=member.id)
    assert failed["payload"]["reason"] == "credentials" and len(failed["payload"]["username_digest"]) == 32


async def test_identity_events_reach_the_organisations_audit_ledger(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org
) -> None:
    member = await make_user()
    await password_login(gateway, member, "not-the-password")

    async def recorded() -> bool:
        response = await gateway.get("/api/audit", params={"limit": 200, "event_type": "LoginFailed"},
                                     headers=org.admin_headers)
        return response.status_code == 200 and any(
            str(member.id) in str(e["content"]) for e in response.json()["items"])

    assert await wait_until(recorded, timeout=20)
