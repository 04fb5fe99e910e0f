"""Organisations, users and roles through the gateway: onboarding by the platform admin, administration by an
organisation's admin within its own organisation only, password policy and forced change, role changes."""

from __future__ import annotations

import httpx

from tests.identity.authenticator import bearer_of
from tests.identity.conftest import (
    Endpoints,
    IdentityEvents,
    MakeUser,
    Org,
    claims_of,
    password_login,
    session_of,
    strong_password,
    unique,
    wait_until,
)


async def test_a_platform_admin_creates_an_organisation_with_its_first_admin(
    gateway: httpx.AsyncClient, org: Org, identity_events: IdentityEvents
) -> None:
    await identity_events.wait_for("OrganizationCreated", organization_id=org.id)
    created = await identity_events.wait_for("UserCreated", user_id=org.admin.id)
    assert created["payload"]["role"] == "org_admin" and created["tenant_id"] == str(org.id)
    me = (await gateway.get("/api/auth/me", headers=org.admin_headers)).json()
    assert me["role"] == "org_admin" and me["organization"]["id"] == str(org.id) and me["mfa_enabled"] is True


async def test_the_new_organisations_tenant_is_provisioned(gateway: httpx.AsyncClient, org: Org) -> None:
    async def ready() -> bool:
        return (await gateway.get("/api/screening/history", headers=org.admin_headers)).status_code == 200

    assert await wait_until(ready, timeout=20)


async def test_only_a_platform_admin_creates_organisations(gateway: httpx.AsyncClient, org: Org) -> None:
    response = await gateway.post("/api/auth/organizations", headers=org.admin_headers,
                                  json={"name": "Mine", "slug": f"o-{unique('x')[2:].lower()}"})
    assert response.status_code == 403


async def test_me_returns_the_user_role_and_organisation(gateway: httpx.AsyncClient, make_user: MakeUser,
                                                         org: Org) -> None:
    member = await make_user("auditor")
    me = (await gateway.get("/api/auth/me", headers=bearer_of(await session_of(gateway, member)))).json()
    assert me["id"] == str(member.id) and me["username"] == member.username and me["role"] == "auditor"
    assert me["organization_id"] == str(org.id) and me["organization"]["slug"] == org.slug


async def test_an_org_admin_creates_users_of_its_own_organisation(gateway: httpx.AsyncClient, org: Org,
                                                                  identity_events: IdentityEvents) -> None:
    response = await gateway.post("/api/auth/users", headers=org.admin_headers, json={
        "username": unique("lab"), "password": strong_password(), "role": "lab_technician"})
    assert response.status_code == 201
    event = await identity_events.wait_for("UserCreated", user_id=response.json()["id"])
    assert event["tenant_id"] == str(org.id) and event["actor"]["user_id"] == str(org.admin.id)
    listed = (await gateway.get("/api/auth/users", headers=org.admin_headers)).json()
    assert response.json()["id"] in {u["id"] for u in listed}


async def test_an_org_admin_cannot_create_users_in_another_organisation(gateway: httpx.AsyncClient, org: Org,
                                                                        other_org: Org) -> None:
    response = await gateway.post("/api/auth/users", headers=org.admin_headers, json={
        "username": unique("lab"), "password": strong_password(), "role": "lab_technician",
        "organization_id": str(other_org.id)})
    assert response.status_code == 403


async def test_an_org_admin_cannot_create_a_platform_admin(gateway: httpx.AsyncClient, org: Org) -> None:
    response = await gateway.post("/api/auth/users", headers=org.admin_headers, json={
        "username": unique("pa"), "password": strong_password(), "role": "platform_admin"})
    assert response.status_code == 403


async def test_an_org_admin_cannot_deactivate_reset_or_promote_another_organisations_user(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org, other_org: Org
) -> None:
    theirs = await make_user("lab_technician", in_org=other_org)
    attempts = [
        await gateway.post(f"/api/auth/users/{theirs.id}/deactivate", headers=org.admin_headers),
        await gateway.post(f"/api/auth/users/{theirs.id}/reset", headers=org.admin_headers),
        await gateway.patch(f"/api/auth/users/{theirs.id}", headers=org.admin_headers, json={"role": "org_admin"}),
    ]
    assert [a.status_code for a in attempts] == [404, 404, 404]
    assert (await password_login(gateway, theirs)).json()["status"] == "authenticated"  # untouched
    assert theirs.username not in {u["username"] for u in
                                   (await gateway.get("/api/auth/users", headers=org.admin_headers)).json()}


async def test_a_platform_admin_has_no_access_to_clinical_data(gateway: httpx.AsyncClient,
                                                               platform_admin: dict) -> None:
    assert (await gateway.get("/api/screening/history", headers=platform_admin)).status_code == 403
    assert (await gateway.post("/api/screening/classify", json={}, headers=platform_admin)).status_code == 403


async def test_an_auditor_reads_the_ledger_and_nothing_clinical(gateway: httpx.AsyncClient,
                                                                make_user: MakeUser) -> None:
    auditor = bearer_of(await session_of(gateway, await make_user("auditor")))
    assert (await gateway.get("/api/audit", headers=auditor)).status_code == 200
    assert (await gateway.get("/api/screening/history", headers=auditor)).status_code == 403


async def test_a_new_password_must_satisfy_the_policy(gateway: httpx.AsyncClient, org: Org) -> None:
    for weak, reason in (("short-pw", "at least 12"), ("password1234", "common"), ("aaaaaaaaaaaaaaaa", "guess")):
        response = await gateway.post("/api/auth/users", headers=org.admin_headers, json={
            "username": unique("weak"), "password": weak, "role": "lab_technician"})
        assert response.status_code == 422, weak
        errors = response.json()["errors"]
        assert errors[0]["field"] == "password" and reason in errors[0]["message"] and weak not in str(errors)


async def test_an_admin_reset_forces_a_password_change_at_the_next_login(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org, endpoints: Endpoints,
    identity_events: IdentityEvents,
) -> None:
    member = await make_user()
    before = await session_of(gateway, member)
    reset = await gateway.post(f"/api/auth/users/{member.id}/reset", headers=org.admin_headers)
    assert reset.status_code == 200
    temporary = reset.json()["temporary_password"]
    assert (await gateway.post("/api/auth/refresh", json={"refresh_token": before["refresh_token"]})).status_code == 401
    assert (await password_login(gateway, member)).status_code == 401  # the old password is gone
    body = (await password_login(gateway, member, temporary)).json()
    assert body["status"] == "password_change_required" and body["scope"] == "password_change"
    restricted = bearer_of(body)
    assert set((await endpoints.statuses(restricted)).values()) == {403}
    new = strong_password()
    same = await gateway.post("/api/auth/password", headers=restricted,
                              json={"current_password": temporary, "new_password": temporary})
    assert same.status_code == 422
    changed = await gateway.post("/api/auth/password", headers=restricted,
                                 json={"current_password": temporary, "new_password": new})
    assert changed.status_code == 200 and changed.json()["status"] == "authenticated"
    assert (await password_login(gateway, member, new)).json()["status"] == "authenticated"
    event = await identity_events.wait_for("PasswordChanged", user_id=member.id)
    assert event["payload"]["forced"] is True
    reset_event = await identity_events.wait_for("PasswordReset", user_id=member.id)
    assert reset_event["actor"]["user_id"] == str(org.admin.id)


async def test_a_password_change_needs_the_current_password(gateway: httpx.AsyncClient,
                                                            make_user: MakeUser) -> None:
    member = await make_user()
    headers = bearer_of(await session_of(gateway, member))
    wrong = await gateway.post("/api/auth/password", headers=headers,
                               json={"current_password": "not-my-password", "new_password": strong_password()})
    assert wrong.status_code == 403
    assert (await password_login(gateway, member)).status_code == 200


async def test_a_role_change_takes_effect_at_the_next_refresh(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org, identity_events: IdentityEvents
) -> None:
    member = await make_user("lab_technician")
    tokens = await session_of(gateway, member)
    changed = await gateway.patch(f"/api/auth/users/{member.id}", headers=org.admin_headers, json={"role": "auditor"})
    assert changed.status_code == 204
    assert claims_of(tokens["access_token"])["role"] == "lab_technician"  # issued tokens are not rewritten
    refreshed = (await gateway.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).json()
    assert claims_of(refreshed["access_token"])["role"] == "auditor"
    event = await identity_events.wait_for("RoleChanged", user_id=member.id)
    assert (event["payload"]["old_role"], event["payload"]["new_role"]) == ("lab_technician", "auditor")


async def test_promotion_to_a_role_that_requires_mfa_ends_sessions_without_it_at_the_next_refresh(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org
) -> None:
    member = await make_user("lab_technician")
    tokens = await session_of(gateway, member)
    await gateway.patch(f"/api/auth/users/{member.id}", headers=org.admin_headers, json={"role": "doctor"})
    refreshed = await gateway.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401
    assert (await password_login(gateway, member)).json()["status"] == "mfa_enrolment_required"


async def test_an_admin_cannot_deactivate_itself(gateway: httpx.AsyncClient, org: Org) -> None:
    response = await gateway.post(f"/api/auth/users/{org.admin.id}/deactivate", headers=org.admin_headers)
    assert response.status_code == 403


async def test_a_deactivated_user_cannot_log_in(gateway: httpx.AsyncClient, make_user: MakeUser, org: Org,
                                               identity_events: IdentityEvents) -> None:
    member = await make_user()
    assert (await gateway.post(f"/api/auth/users/{member.id}/deactivate", headers=org.admin_headers)).status_code == 204
    assert (await password_login(gateway, member)).status_code == 401
    await identity_events.wait_for("UserDeactivated", user_id=member.id)
