"""TOTP MFA through the gateway: enrolment (otpauth URI, QR code, backup codes shown once), login with a code
or a backup code, replay refusal (ASVS 2.8.4), enforcement for the roles that require it, disabling."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlparse

import httpx

from tests.identity.authenticator import Authenticator, bearer_of
from tests.identity.conftest import (
    Endpoints,
    IdentityEvents,
    MakeUser,
    Member,
    at_least_seconds_left_in_step,
    claims_of,
    password_login,
    session_by_backup_code,
    session_of,
)

Enrolled = Callable[..., Awaitable[Member]]


async def mfa_challenge(gateway: httpx.AsyncClient, member: Member) -> str:
    response = await password_login(gateway, member)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "mfa_required" and body["mfa_required"] is True, body
    assert "access_token" not in body and "refresh_token" not in body
    return body["mfa_token"]


async def verify(gateway: httpx.AsyncClient, mfa_token: str, **proof: str) -> httpx.Response:
    return await gateway.post("/api/auth/mfa/verify", json={"mfa_token": mfa_token, **proof})


async def test_setup_returns_an_otpauth_uri_and_its_qr_code(gateway: httpx.AsyncClient, make_user: MakeUser) -> None:
    member = await make_user()
    headers = bearer_of(await session_of(gateway, member))
    response = await gateway.post("/api/auth/mfa/setup", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    uri = urlparse(body["otpauth_uri"])
    query = parse_qs(uri.query)
    assert uri.scheme == "otpauth" and uri.netloc == "totp" and member.username in uri.path
    assert query["secret"] == [body["secret"]] and query["issuer"] == ["Clinomic"]
    assert body["qr_code"].startswith("data:image/png;base64,")
    assert base64.b64decode(body["qr_code"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    status = (await gateway.get("/api/auth/mfa/status", headers=headers)).json()
    assert status == {"enabled": False, "backup_codes_left": 0, "required": False}  # pending until verified


async def test_a_valid_code_enables_mfa_and_returns_ten_backup_codes_once(
    gateway: httpx.AsyncClient, make_user: MakeUser, identity_events: IdentityEvents
) -> None:
    member = await make_user()
    headers = bearer_of(await session_of(gateway, member))
    setup = (await gateway.post("/api/auth/mfa/setup", headers=headers)).json()
    authenticator = Authenticator(setup["secret"])
    wrong = await gateway.post("/api/auth/mfa/verify-setup", json={"code": "000000"}, headers=headers)
    assert wrong.status_code == 401
    response = await gateway.post("/api/auth/mfa/verify-setup", json={"code": await authenticator.fresh_code()},
                                  headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(set(body["backup_codes"])) == 10 and body["status"] == "authenticated"
    assert claims_of(body["access_token"])["mfa"] is True
    status = (await gateway.get("/api/auth/mfa/status", headers=headers)).json()
    assert status == {"enabled": True, "backup_codes_left": 10, "required": False}
    await identity_events.wait_for("MfaEnabled", user_id=member.id)


async def test_login_of_an_mfa_user_needs_a_code_and_the_pending_token_is_single_use(
    gateway: httpx.AsyncClient, enrolled_user: Enrolled
) -> None:
    member = await enrolled_user()
    mfa_token = await mfa_challenge(gateway, member)
    completed = await verify(gateway, mfa_token, code=await member.authenticator.fresh_code())
    assert completed.status_code == 200, completed.text
    assert completed.json()["status"] == "authenticated" and claims_of(completed.json()["access_token"])["mfa"]
    again = await verify(gateway, mfa_token, backup_code=member.authenticator.backup_codes[0])
    assert again.status_code == 401


async def test_a_totp_code_already_used_is_refused_and_recorded(
    gateway: httpx.AsyncClient, enrolled_user: Enrolled, identity_events: IdentityEvents
) -> None:
    member = await enrolled_user()
    code = await member.authenticator.fresh_code()
    assert (await verify(gateway, await mfa_challenge(gateway, member), code=code)).status_code == 200
    replay = await verify(gateway, await mfa_challenge(gateway, member), code=code)
    assert replay.status_code == 401
    event = await identity_events.wait_for("TotpReplayRefused", user_id=member.id)
    assert event["payload"]["purpose"] == "login"


async def test_a_code_of_an_earlier_step_than_the_last_accepted_is_refused(
    gateway: httpx.AsyncClient, make_user: MakeUser, identity_events: IdentityEvents
) -> None:
    member = await make_user()
    await at_least_seconds_left_in_step(8)
    headers = bearer_of(await session_of(gateway, member))
    secret = (await gateway.post("/api/auth/mfa/setup", headers=headers)).json()["secret"]
    authenticator, step = Authenticator(secret), int(time.time() // 30)
    enrolled = await gateway.post("/api/auth/mfa/verify-setup", json={"code": authenticator.code_at(step - 1)},
                                  headers=headers)
    assert enrolled.status_code == 200, enrolled.text
    later = await verify(gateway, await mfa_challenge(gateway, member), code=authenticator.code_at(step + 1))
    assert later.status_code == 200, later.text
    earlier = await verify(gateway, await mfa_challenge(gateway, member), code=authenticator.code_at(step))
    assert earlier.status_code == 401  # never used, but older than the last accepted step
    await identity_events.wait_for("TotpReplayRefused", user_id=member.id)


async def test_a_backup_code_logs_in_once(gateway: httpx.AsyncClient, enrolled_user: Enrolled,
                                         identity_events: IdentityEvents) -> None:
    member = await enrolled_user()
    backup = member.authenticator.backup_codes[0]
    first = await verify(gateway, await mfa_challenge(gateway, member), backup_code=backup)
    assert first.status_code == 200, first.text
    headers = bearer_of(first.json())
    assert (await gateway.get("/api/auth/mfa/status", headers=headers)).json()["backup_codes_left"] == 9
    await identity_events.wait_for("BackupCodeUsed", user_id=member.id, remaining=9)


async def test_a_backup_code_already_used_is_refused_and_recorded(
    gateway: httpx.AsyncClient, enrolled_user: Enrolled, identity_events: IdentityEvents
) -> None:
    member = await enrolled_user()
    backup = member.authenticator.backup_codes[0]
    assert (await verify(gateway, await mfa_challenge(gateway, member), backup_code=backup)).status_code == 200
    reuse = await verify(gateway, await mfa_challenge(gateway, member), backup_code=backup.upper())
    assert reuse.status_code == 401
    await identity_events.wait_for("BackupCodeReuseRefused", user_id=member.id)


async def test_a_pending_login_dies_after_three_wrong_codes(gateway: httpx.AsyncClient,
                                                            enrolled_user: Enrolled) -> None:
    member = await enrolled_user()
    mfa_token = await mfa_challenge(gateway, member)
    for _ in range(3):
        assert (await verify(gateway, mfa_token, code="000000")).status_code == 401
    assert (await verify(gateway, mfa_token, code=await member.authenticator.fresh_code())).status_code == 401


async def test_a_role_that_requires_mfa_gets_a_token_for_enrolment_only(
    gateway: httpx.AsyncClient, make_user: MakeUser, endpoints: Endpoints
) -> None:
    doctor = await make_user("doctor")
    body = (await password_login(gateway, doctor)).json()
    assert body["status"] == "mfa_enrolment_required" and body["scope"] == "mfa_enrolment"
    assert "refresh_token" not in body
    headers = bearer_of(body)
    assert await endpoints.statuses(headers) == {"gateway": 403, "auth": 403, "screening": 403, "audit": 403}
    assert (await gateway.get("/api/auth/mfa/status", headers=headers)).json()["required"] is True
    assert (await gateway.post("/api/auth/mfa/setup", headers=headers)).status_code == 200


async def test_enrolling_turns_the_restricted_login_into_a_full_session(
    gateway: httpx.AsyncClient, make_user: MakeUser
) -> None:
    doctor = await make_user("doctor")
    headers = bearer_of((await password_login(gateway, doctor)).json())
    secret = (await gateway.post("/api/auth/mfa/setup", headers=headers)).json()["secret"]
    enabled = await gateway.post("/api/auth/mfa/verify-setup", json={"code": await Authenticator(secret).fresh_code()},
                                 headers=headers)
    body = enabled.json()
    assert body["status"] == "authenticated" and body["refresh_token"]
    assert "scope" not in claims_of(body["access_token"])
    assert (await gateway.get("/api/screening/history", headers=bearer_of(body))).status_code == 200


async def test_disabling_mfa_needs_a_fresh_code(gateway: httpx.AsyncClient, enrolled_user: Enrolled,
                                                identity_events: IdentityEvents) -> None:
    member = await enrolled_user()
    headers = bearer_of(await session_by_backup_code(gateway, member))
    used = member.authenticator.code_at(member.authenticator.last_step or 0)  # the enrolment's code
    assert (await gateway.post("/api/auth/mfa/disable", json={"code": used}, headers=headers)).status_code == 401
    assert (await gateway.post("/api/auth/mfa/disable", json={"code": "123456"}, headers=headers)).status_code == 401
    fresh = await member.authenticator.fresh_code()
    assert (await gateway.post("/api/auth/mfa/disable", json={"code": fresh}, headers=headers)).status_code == 204
    assert (await gateway.get("/api/auth/mfa/status", headers=headers)).json()["enabled"] is False
    await identity_events.wait_for("MfaDisabled", user_id=member.id, by="user")


async def test_a_role_that_requires_mfa_cannot_disable_it(gateway: httpx.AsyncClient,
                                                          enrolled_user: Enrolled) -> None:
    doctor = await enrolled_user("doctor")
    headers = bearer_of(await session_by_backup_code(gateway, doctor))
    response = await gateway.post("/api/auth/mfa/disable", json={"code": await doctor.authenticator.fresh_code()},
                                  headers=headers)
    assert response.status_code == 403


async def test_regenerating_backup_codes_needs_a_fresh_code_and_retires_the_old_ones(
    gateway: httpx.AsyncClient, enrolled_user: Enrolled, identity_events: IdentityEvents
) -> None:
    member = await enrolled_user()
    headers = bearer_of(await session_by_backup_code(gateway, member))
    old = list(member.authenticator.backup_codes)
    refused = await gateway.post("/api/auth/mfa/backup-codes", json={"code": "000000"}, headers=headers)
    assert refused.status_code == 401
    response = await gateway.post("/api/auth/mfa/backup-codes", json={"code": await member.authenticator.fresh_code()},
                                  headers=headers)
    assert response.status_code == 200
    new = response.json()["backup_codes"]
    assert len(new) == 10 and not set(new) & set(old)
    assert (await verify(gateway, await mfa_challenge(gateway, member), backup_code=old[1])).status_code == 401
    assert (await verify(gateway, await mfa_challenge(gateway, member), backup_code=new[0])).status_code == 200
    await identity_events.wait_for("BackupCodesRegenerated", user_id=member.id)


async def test_setup_is_refused_while_mfa_is_enabled(gateway: httpx.AsyncClient, enrolled_user: Enrolled) -> None:
    member = await enrolled_user()
    headers = bearer_of(await session_of(gateway, member))
    assert (await gateway.post("/api/auth/mfa/setup", headers=headers)).status_code == 409
