"""Unknown usernames, wrong passwords and deactivated accounts cannot be told apart by a login's answer."""

from __future__ import annotations

import statistics
import time

import httpx

from tests.identity.conftest import MakeUser, Org, unique

VOLATILE = {"date", "content-length", "x-correlation-id"}  # the id is per request by design


def shape(response: httpx.Response) -> tuple[int, object, dict[str, str]]:
    return response.status_code, response.json(), {k: v for k, v in response.headers.items() if k not in VOLATILE}


async def attempt(gateway: httpx.AsyncClient, username: str, password: str = "wrong-but-long-enough") -> httpx.Response:
    return await gateway.post("/api/auth/login", json={"username": username, "password": password})


async def test_unknown_user_and_wrong_password_get_the_same_status_body_and_headers(
    gateway: httpx.AsyncClient, make_user: MakeUser
) -> None:
    member = await make_user()
    assert shape(await attempt(gateway, member.username)) == shape(await attempt(gateway, unique("ghost")))


async def test_a_deactivated_account_with_its_right_password_looks_like_a_wrong_password(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org
) -> None:
    member = await make_user()
    response = await gateway.post(f"/api/auth/users/{member.id}/deactivate", headers=org.admin_headers)
    assert response.status_code == 204
    assert shape(await attempt(gateway, member.username, member.password)) == shape(
        await attempt(gateway, unique("ghost")))


async def test_unknown_user_and_wrong_password_take_similar_time(gateway: httpx.AsyncClient,
                                                                 make_user: MakeUser) -> None:
    member = await make_user()
    known, unknown = [], []
    for _ in range(8):  # interleaved, so drifts in machine load hit both alike
        for sample, username in ((known, member.username), (unknown, unique("ghost"))):
            started = time.perf_counter()
            await attempt(gateway, username)
            sample.append(time.perf_counter() - started)
    fast, slow = sorted((statistics.median(known), statistics.median(unknown)))
    # Without the equalising hash an unknown user would answer many times faster than a password check.
    assert fast / slow > 0.4, (known, unknown)
