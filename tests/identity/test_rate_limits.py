"""Rate limits at the edge: 429 with Retry-After, counted in Redis so that two gateway processes share one
allowance; logins per address (the peer, or what a trusted proxy says) and per account. Extra gateways are
started here with REDIS_URL and low limits, under fresh key namespaces."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from devstack import infra, stack

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMITS = {"RATE_LIMIT_LOGIN": "3/minute", "RATE_LIMIT_LOGIN_ACCOUNT": "2/minute", "RATE_LIMIT_REFRESH": "6/minute",
          "RATE_LIMIT_MFA": "3/minute"}


@contextlib.contextmanager
def gateways(platform: stack.Platform, count: int, **env: str) -> Iterator[list[str]]:
    """``count`` extra gateway processes with Redis, the low limits and a fresh key namespace of their own."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is needed at {REDIS_URL} for the shared rate-limit tests: {exc}")
    env = platform.env | LIMITS | {"REDIS_URL": REDIS_URL, "RATE_LIMIT_NAMESPACE": f"test-{uuid.uuid4().hex}"} | env
    processes: list[subprocess.Popen[bytes]] = []
    urls, outputs = [], []
    try:
        for index in range(count):
            port = str(infra.free_port())
            log = platform.logs["gateway"].with_name(f"gateway-redis-{uuid.uuid4().hex[:6]}-{index}.log")
            outputs.append(log.open("ab"))
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "gateway.app:create_app", "--host", "127.0.0.1",
                 "--port", port, "--no-access-log", "--no-proxy-headers"],
                env=env | {"PORT": port}, stdout=outputs[-1], stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
            stack.wait_ready(f"gateway-redis-{index}", urls[-1], processes[-1], log, 90)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for output in outputs:
            output.close()


@pytest.fixture(scope="module")
def shared_gateways(platform: stack.Platform) -> Iterator[list[str]]:
    with gateways(platform, 2) as urls:
        yield urls


@pytest.fixture(scope="module")
def proxied_gateway(platform: stack.Platform) -> Iterator[str]:
    """A gateway behind a reverse proxy of ours (the tests play it, from 127.0.0.1)."""
    with gateways(platform, 1, FORWARDED_ALLOW_IPS="127.0.0.1") as urls:
        yield urls[0]


async def test_over_the_limit_the_answer_is_429_with_retry_after(shared_gateways: list[str]) -> None:
    async with httpx.AsyncClient(base_url=shared_gateways[0], timeout=30) as client:
        statuses, last = [], None
        for _ in range(5):
            last = await client.post("/api/auth/mfa/verify", json={"mfa_token": "nope", "code": "123456"})
            statuses.append(last.status_code)
    assert statuses == [401, 401, 401, 429, 429]
    assert last is not None and 1 <= int(last.headers["retry-after"]) <= 60
    assert last.json() == {"detail": "too many requests"}


async def test_two_gateway_processes_share_one_allowance_through_redis(shared_gateways: list[str]) -> None:
    statuses = []
    async with httpx.AsyncClient(timeout=30) as client:
        for attempt in range(10):  # alternate between the two replicas
            response = await client.post(f"{shared_gateways[attempt % 2]}/api/auth/refresh",
                                         json={"refresh_token": "not-one-of-ours"})
            statuses.append(response.status_code)
    # Six in all, not six per replica: in-process counting would have let all ten through.
    assert statuses.count(401) == 6 and statuses.count(429) == 4, statuses
    assert statuses[6:] == [429] * 4


async def test_logins_are_limited_per_client_address_whatever_x_forwarded_for_says(
    shared_gateways: list[str]
) -> None:
    """No proxy is trusted here, so a fresh X-Forwarded-For per request is no fresh address (issue 13, 2)."""
    statuses = []
    async with httpx.AsyncClient(timeout=30) as client:
        for attempt in range(4):
            response = await client.post(f"{shared_gateways[attempt % 2]}/api/auth/login",
                                         json={"username": f"nobody-{uuid.uuid4().hex}", "password": "x" * 12},
                                         headers={"X-Forwarded-For": f"198.51.100.{attempt + 1}"})
            statuses.append(response.status_code)
    assert statuses == [401, 401, 401, 429]


async def test_logins_are_limited_per_account_whatever_the_address_and_spelling(proxied_gateway: str) -> None:
    name = f"nobody_{uuid.uuid4().hex[:12]}"
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in name)
    statuses = []
    async with httpx.AsyncClient(base_url=proxied_gateway, timeout=30) as client:
        for attempt, typed in enumerate((name, name.upper(), fullwidth)):
            response = await client.post("/api/auth/login", json={"username": typed, "password": "x" * 12},
                                         headers={"X-Forwarded-For": f"192.0.2.{attempt + 1}"})
            statuses.append(response.status_code)
    assert statuses == [401, 401, 429]  # RATE_LIMIT_LOGIN_ACCOUNT: 2/minute, three addresses


async def test_behind_a_trusted_proxy_each_client_counts_on_its_own(proxied_gateway: str) -> None:
    async def attempt(client: httpx.AsyncClient, address: str) -> int:
        return (await client.post("/api/auth/login", headers={"X-Forwarded-For": f"6.6.6.6, {address}"},
                                  json={"username": f"nobody-{uuid.uuid4().hex}", "password": "x" * 12})).status_code

    async with httpx.AsyncClient(base_url=proxied_gateway, timeout=30) as client:
        first = [await attempt(client, "203.0.113.10") for _ in range(4)]
        other = await attempt(client, "203.0.113.11")
    assert first == [401, 401, 401, 429] and other == 401
