"""Per-account lockout through the gateway: ten consecutive failures lock the username (known or not) with a
growing delay; the platform's first lockout lasts LOCKOUT_BASE_SECONDS (4 s, tests/conftest.py) so expiry is quick to
see, yet longer than a password check takes on a busy machine."""

from __future__ import annotations

import asyncio

import httpx

from tests.identity.conftest import IdentityEvents, MakeUser, password_login, unique

THRESHOLD = 10
BASE = 4  # LOCKOUT_BASE_SECONDS of the test platform


async def fail(gateway: httpx.AsyncClient, username: str, times: int) -> list[int]:
    statuses = []
    for _ in range(times):
        response = await gateway.post("/api/auth/login", json={"username": username, "password": "wrong-password!"})
        statuses.append(response.status_code)
    return statuses


async def test_ten_consecutive_failures_lock_the_account_even_against_the_right_password(
    gateway: httpx.AsyncClient, make_user: MakeUser, identity_events: IdentityEvents
) -> None:
    member = await make_user()
    assert await fail(gateway, member.username, THRESHOLD) == [401] * THRESHOLD
    locked = await password_login(gateway, member)
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["retry-after"]) <= BASE
    event = await identity_events.wait_for("AccountLocked", user_id=member.id)
    assert event["payload"]["failures"] == THRESHOLD


async def test_the_lockout_expires(gateway: httpx.AsyncClient, make_user: MakeUser) -> None:
    member = await make_user()
    await fail(gateway, member.username, THRESHOLD)
    locked = await password_login(gateway, member)
    assert locked.status_code == 429
    await asyncio.sleep(int(locked.headers["retry-after"]) + 0.2)
    assert (await password_login(gateway, member)).status_code == 200


async def test_each_failure_after_a_lockout_doubles_the_delay(gateway: httpx.AsyncClient,
                                                             make_user: MakeUser) -> None:
    member = await make_user()
    await fail(gateway, member.username, THRESHOLD)
    await asyncio.sleep(BASE + 0.2)
    assert await fail(gateway, member.username, 1) == [401]
    locked = await password_login(gateway, member)
    assert locked.status_code == 429 and BASE < int(locked.headers["retry-after"]) <= 2 * BASE


async def test_a_success_resets_the_count_of_consecutive_failures(gateway: httpx.AsyncClient,
                                                                   make_user: MakeUser) -> None:
    member = await make_user()
    await fail(gateway, member.username, THRESHOLD - 1)
    assert (await password_login(gateway, member)).status_code == 200
    assert await fail(gateway, member.username, THRESHOLD - 1) == [401] * (THRESHOLD - 1)
    assert (await password_login(gateway, member)).status_code == 200


async def test_an_unknown_username_locks_exactly_like_a_known_one(gateway: httpx.AsyncClient,
                                                                  make_user: MakeUser) -> None:
    member, nobody = await make_user(), unique("nobody")
    answers = []
    for username in (member.username, nobody):  # each checked right after its own tenth failure (locks: BASE s)
        await fail(gateway, username, THRESHOLD)
        answers.append(await gateway.post("/api/auth/login", json={"username": username, "password": "x" * 12}))
    known, unknown = answers
    assert known.status_code == unknown.status_code == 429
    assert known.json() == unknown.json()
