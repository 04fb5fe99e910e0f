"""One username normal form for lookup, lockout and creation (issue 13, item 1): a locked account stays locked
under every spelling that reaches it, a look-alike reaches no account, and two names that normalise alike
cannot both exist."""

from __future__ import annotations

import uuid

import httpx
from hypothesis import HealthCheck, given, settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.domain import username_digest
from devstack import stack
from tests.identity.conftest import IdentityEvents, Org, strong_password
from tests.security.test_text_rules import spellings

THRESHOLD = 10


def _fullwidth(name: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in name)


async def _user_with_an_i(gateway: httpx.AsyncClient, org: Org) -> tuple[str, str]:
    username, password = f"lin_{uuid.uuid4().hex[:10]}", strong_password()
    response = await gateway.post("/api/auth/users", headers=org.admin_headers,
                                  json={"username": username, "password": password, "role": "lab_technician"})
    assert response.status_code == 201, response.text
    return username, password


async def _lock(gateway: httpx.AsyncClient, username: str) -> None:
    for _ in range(THRESHOLD):
        failed = await gateway.post("/api/auth/login", json={"username": username, "password": "wrong-password!"})
        assert failed.status_code == 401


async def test_a_locked_account_is_locked_under_every_spelling_and_no_look_alike_logs_in(
    gateway: httpx.AsyncClient, org: Org, platform: stack.Platform, engine: AsyncEngine,
) -> None:
    username, password = await _user_with_an_i(gateway, org)
    await _lock(gateway, username)
    # The platform's first lock lasts seconds; hold it for the duration of the test (this account's row only).
    key = username_digest(username, platform.env["AUDIT_SIGNING_KEY"].encode())
    async with engine.begin() as conn:
        held = await conn.execute(text("UPDATE auth.login_throttle SET locked_until = now() + interval '2 minutes' "
                                       "WHERE key = :k AND locked_until IS NOT NULL"), {"k": key})
    assert held.rowcount == 1
    look_alikes = [username.replace("i", "\u0130"), username.replace("i", "\u0131"), username.replace("i", "ı̇")]
    with httpx.Client(base_url=str(gateway.base_url), timeout=30) as client:
        for typed in look_alikes:  # the İ bypass: reaches no account, so nothing to log in to
            answer = client.post("/api/auth/login", json={"username": typed, "password": password})
            assert answer.status_code == 401, (typed, answer.text)
        for typed in (username.upper(), _fullwidth(username), f"  {username.title()} "):
            assert client.post("/api/auth/login", json={"username": typed, "password": password}).status_code == 429

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(spellings(username))
        def every_spelling_is_locked(typed: str) -> None:
            answer = client.post("/api/auth/login", json={"username": typed, "password": password})
            assert answer.status_code == 429, (typed, answer.status_code)

        every_spelling_is_locked()


async def test_two_names_that_normalise_alike_cannot_both_exist(gateway: httpx.AsyncClient, org: Org) -> None:
    username, _ = await _user_with_an_i(gateway, org)
    again = await gateway.post("/api/auth/users", headers=org.admin_headers, json={
        "username": username.upper(), "password": strong_password(), "role": "lab_technician"})
    assert again.status_code == 409


async def test_a_spoofed_forwarded_address_is_not_what_the_ledger_records(
    gateway: httpx.AsyncClient, identity_events: IdentityEvents, platform: stack.Platform,
) -> None:
    """No trusted proxy is configured (FORWARDED_ALLOW_IPS is empty): the peer is the client (issue 13, 2)."""
    typed = f"nobody_{uuid.uuid4().hex}"
    refused = await gateway.post("/api/auth/login", json={"username": typed, "password": "x" * 12},
                                 headers={"X-Forwarded-For": "203.0.113.77"})
    assert refused.status_code == 401
    digest = username_digest(typed, platform.env["AUDIT_SIGNING_KEY"].encode())
    event = await identity_events.wait_for("LoginFailed", username_digest=digest)
    assert event["payload"]["client_ip"] == "127.0.0.1"


async def test_the_auth_service_ignores_a_forwarded_address_from_anyone_but_a_service(
    identity_events: IdentityEvents, platform: stack.Platform,
) -> None:
    typed = f"nobody_{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=platform.urls["auth"], timeout=30) as direct:
        refused = await direct.post("/api/auth/login", json={"username": typed, "password": "x" * 12},
                                    headers={"X-Forwarded-For": "203.0.113.78"})
    assert refused.status_code == 401
    digest = username_digest(typed, platform.env["AUDIT_SIGNING_KEY"].encode())
    event = await identity_events.wait_for("LoginFailed", username_digest=digest)
    assert event["payload"]["client_ip"] == "127.0.0.1"
