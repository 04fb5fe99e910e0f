"""Rotating refresh tokens through the gateway: rotation, reuse detection (RFC 9700 §4.14.2), the grace window
for a client's retry, logout and logout everywhere. The platform's grace window is 2 s (tests/conftest.py)."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.identity.conftest import IdentityEvents, MakeUser, claims_of, session_of, wait_until

GRACE_SECONDS = 2.0


async def refresh(gateway: httpx.AsyncClient, token: str) -> httpx.Response:
    return await gateway.post("/api/auth/refresh", json={"refresh_token": token})


async def me_status(gateway: httpx.AsyncClient, access_token: str) -> int:
    return (await gateway.get("/api/auth/me", headers={"Authorization": f"Bearer {access_token}"})).status_code


async def refused_everywhere_soon(gateway: httpx.AsyncClient, access_token: str) -> bool:
    async def refused() -> bool:
        return await me_status(gateway, access_token) == 401

    return await wait_until(refused, timeout=10)


async def test_each_refresh_rotates_both_tokens(gateway: httpx.AsyncClient, make_user: MakeUser) -> None:
    tokens = await session_of(gateway, await make_user())
    rotated = await refresh(gateway, tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["refresh_token"] != tokens["refresh_token"] and body["access_token"] != tokens["access_token"]
    assert claims_of(body["access_token"])["sid"] == claims_of(tokens["access_token"])["sid"]
    assert (await refresh(gateway, body["refresh_token"])).status_code == 200


async def test_refresh_tokens_are_stored_only_as_hashes(gateway: httpx.AsyncClient, make_user: MakeUser,
                                                       engine: AsyncEngine) -> None:
    tokens = await session_of(gateway, await make_user())
    async with engine.connect() as conn:
        stored = await conn.scalar(text("SELECT count(*) FROM auth.refresh_tokens WHERE token_hash = :t"),
                                   {"t": tokens["refresh_token"]})
    assert stored == 0


async def test_a_used_refresh_token_presented_again_revokes_the_whole_family(
    gateway: httpx.AsyncClient, make_user: MakeUser, identity_events: IdentityEvents
) -> None:
    member = await make_user()
    first = await session_of(gateway, member)
    second = (await refresh(gateway, first["refresh_token"])).json()
    await asyncio.sleep(GRACE_SECONDS + 0.5)
    replay = await refresh(gateway, first["refresh_token"])
    assert replay.status_code == 401
    assert (await refresh(gateway, second["refresh_token"])).status_code == 401  # the family is gone
    await identity_events.wait_for("RefreshTokenReuseDetected", user_id=member.id)
    assert await refused_everywhere_soon(gateway, second["access_token"])  # its access tokens too


async def test_reuse_detection_leaves_the_users_other_sessions_alone(
    gateway: httpx.AsyncClient, make_user: MakeUser
) -> None:
    member = await make_user()
    stolen, other = await session_of(gateway, member), await session_of(gateway, member)
    await refresh(gateway, stolen["refresh_token"])
    await asyncio.sleep(GRACE_SECONDS + 0.5)
    assert (await refresh(gateway, stolen["refresh_token"])).status_code == 401
    assert (await refresh(gateway, other["refresh_token"])).status_code == 200


async def test_the_immediately_previous_token_rotates_again_within_the_grace_window(
    gateway: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await session_of(gateway, await make_user())
    await refresh(gateway, tokens["refresh_token"])  # the answer is "lost"; the client retries
    retry = await refresh(gateway, tokens["refresh_token"])
    assert retry.status_code == 200, retry.text
    assert (await refresh(gateway, retry.json()["refresh_token"])).status_code == 200  # the family lives on


async def test_the_successor_a_retry_replaced_no_longer_works(gateway: httpx.AsyncClient,
                                                              make_user: MakeUser) -> None:
    tokens = await session_of(gateway, await make_user())
    lost = (await refresh(gateway, tokens["refresh_token"])).json()
    retry = (await refresh(gateway, tokens["refresh_token"])).json()
    assert (await refresh(gateway, lost["refresh_token"])).status_code == 401
    assert (await refresh(gateway, retry["refresh_token"])).status_code == 401  # reuse: the family went


async def test_the_grace_window_covers_only_the_immediately_previous_token(
    gateway: httpx.AsyncClient, make_user: MakeUser
) -> None:
    tokens = await session_of(gateway, await make_user())
    second = (await refresh(gateway, tokens["refresh_token"])).json()
    third = (await refresh(gateway, second["refresh_token"])).json()
    assert (await refresh(gateway, tokens["refresh_token"])).status_code == 401  # two generations back
    assert (await refresh(gateway, third["refresh_token"])).status_code == 401


async def test_after_the_grace_window_the_previous_token_is_reuse(gateway: httpx.AsyncClient,
                                                                   make_user: MakeUser) -> None:
    tokens = await session_of(gateway, await make_user())
    rotated = (await refresh(gateway, tokens["refresh_token"])).json()
    await asyncio.sleep(GRACE_SECONDS + 0.5)
    assert (await refresh(gateway, tokens["refresh_token"])).status_code == 401
    assert (await refresh(gateway, rotated["refresh_token"])).status_code == 401


async def test_an_unknown_refresh_token_is_refused(gateway: httpx.AsyncClient) -> None:
    assert (await refresh(gateway, "not-a-token-we-issued")).status_code == 401


async def test_logout_ends_the_session_and_its_access_tokens(gateway: httpx.AsyncClient, make_user: MakeUser,
                                                            identity_events: IdentityEvents) -> None:
    member = await make_user()
    tokens = await session_of(gateway, member)
    response = await gateway.post("/api/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 204
    assert (await refresh(gateway, tokens["refresh_token"])).status_code == 401
    assert await refused_everywhere_soon(gateway, tokens["access_token"])
    event = await identity_events.wait_for("SessionsRevoked", user_id=member.id, reason="logout")
    assert event["payload"]["session_ids"] == [claims_of(tokens["access_token"])["sid"]]


async def test_logout_everywhere_ends_every_session_of_the_user(gateway: httpx.AsyncClient,
                                                                make_user: MakeUser) -> None:
    member = await make_user()
    laptop, phone = await session_of(gateway, member), await session_of(gateway, member)
    response = await gateway.post("/api/auth/logout-all",
                                  headers={"Authorization": f"Bearer {laptop['access_token']}"})
    assert response.status_code == 204
    assert (await refresh(gateway, laptop["refresh_token"])).status_code == 401
    assert (await refresh(gateway, phone["refresh_token"])).status_code == 401
    assert await refused_everywhere_soon(gateway, phone["access_token"])
