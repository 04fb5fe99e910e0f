"""A platform admin sees no clinical data and must not be able to become someone who does (issue 13, item 8):
it logs in only with MFA, and its reset of an organisation admin never lets it complete that admin's login."""

from __future__ import annotations

import httpx

from devstack import stack
from tests.identity.authenticator import second_factor
from tests.identity.conftest import (
    IdentityEvents,
    Member,
    Org,
    create_org,
    password_login,
    session_of,
    strong_password,
    unique,
)


async def test_a_platform_admin_never_gets_a_session_on_a_password_alone(gateway: httpx.AsyncClient,
                                                                          platform_admin: dict) -> None:
    body = (await gateway.post("/api/auth/login", json={"username": "platform_demo",
                                                        "password": stack.DEMO_PASSWORD})).json()
    assert body["status"] == "mfa_required" and "access_token" not in body


async def test_a_platform_admin_may_not_remove_an_org_admins_mfa(gateway: httpx.AsyncClient,
                                                                  platform_admin: dict) -> None:
    org = await create_org(gateway, platform_admin)
    refused = await gateway.post(f"/api/auth/users/{org.admin.id}/reset", headers=platform_admin,
                                 json={"reset_mfa": True})
    assert refused.status_code == 403
    assert (await gateway.get("/api/auth/me", headers=org.admin_headers)).status_code == 200  # nothing changed


async def test_a_platform_admins_reset_leaves_the_admins_second_factor_in_the_way(
    gateway: httpx.AsyncClient, platform_admin: dict, identity_events: IdentityEvents,
) -> None:
    org = await create_org(gateway, platform_admin)
    reset = await gateway.post(f"/api/auth/users/{org.admin.id}/reset", headers=platform_admin)
    assert reset.status_code == 200
    temporary = reset.json()["temporary_password"]
    body = (await password_login(gateway, org.admin, temporary)).json()
    assert body["status"] == "mfa_required" and "access_token" not in body  # the resetter stops here
    event = await identity_events.wait_for("PasswordReset", user_id=org.admin.id)
    assert event["payload"]["mfa_reset"] is False and event["actor"]["role"] == "platform_admin"
    # The admin, holding the authenticator, goes on to choose a new password.
    after = await second_factor(gateway, org.admin.username, body["mfa_token"])
    assert after["status"] == "password_change_required"


async def test_a_platform_admin_may_not_reset_an_admin_without_mfa(gateway: httpx.AsyncClient,
                                                                    platform_admin: dict) -> None:
    slug = f"org-{unique('x')[2:].lower()}"
    org = await gateway.post("/api/auth/organizations", headers=platform_admin, json={"name": slug, "slug": slug})
    assert org.status_code == 201
    created = await gateway.post("/api/auth/users", headers=platform_admin, json={
        "username": unique("adm"), "password": strong_password(), "role": "org_admin",
        "organization_id": org.json()["id"]})
    assert created.status_code == 201  # the organisation's first admin, who has not enrolled MFA yet
    refused = await gateway.post(f"/api/auth/users/{created.json()['id']}/reset", headers=platform_admin)
    assert refused.status_code == 403


async def test_a_platform_admin_adds_no_admin_to_an_organisation_that_has_one(gateway: httpx.AsyncClient,
                                                                               platform_admin: dict,
                                                                               org: Org) -> None:
    refused = await gateway.post("/api/auth/users", headers=platform_admin, json={
        "username": unique("adm"), "password": strong_password(), "role": "org_admin",
        "organization_id": str(org.id)})
    assert refused.status_code == 403


async def test_a_second_org_admin_recovers_an_admin_who_lost_the_authenticator(
    gateway: httpx.AsyncClient, platform_admin: dict,
) -> None:
    org = await create_org(gateway, platform_admin)
    second = Member(org.admin.id, unique("adm"), strong_password(), "org_admin", org.id)
    created = await gateway.post("/api/auth/users", headers=org.admin_headers, json={
        "username": second.username, "password": second.password, "role": "org_admin"})
    assert created.status_code == 201
    second_headers = {"Authorization": f"Bearer {(await session_of(gateway, second))['access_token']}"}
    reset = await gateway.post(f"/api/auth/users/{org.admin.id}/reset", headers=second_headers,
                               json={"reset_mfa": True})
    assert reset.status_code == 200
    body = (await password_login(gateway, org.admin, reset.json()["temporary_password"])).json()
    assert body["status"] == "password_change_required"
