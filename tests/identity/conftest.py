"""Identity fixtures: an organisation of our own, users made on demand, enrolled authenticators, the
identity events as published, and forged tokens signed with the platform's real key."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaConsumer

from devstack import stack
from shared.events import Topic
from tests.conftest import bearer, login
from tests.identity.authenticator import AUTHENTICATORS, Authenticator, bearer_of, enrol


def strong_password() -> str:
    return "pw-" + secrets.token_urlsafe(15)


def unique(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return await predicate()


async def at_least_seconds_left_in_step(seconds: float = 6.0) -> None:
    """Wait for a new TOTP step when this one is about to end (tests that pick steps explicitly)."""
    left = 30 - time.time() % 30
    if left < seconds:
        await asyncio.sleep(left + 0.1)


@dataclass
class Member:
    id: uuid.UUID
    username: str
    password: str
    role: str
    org_id: uuid.UUID | None

    @property
    def authenticator(self) -> Authenticator:
        return AUTHENTICATORS[self.username.casefold()]


@dataclass
class Org:
    id: uuid.UUID
    slug: str
    admin: Member
    admin_headers: dict[str, str] = field(default_factory=dict)


async def create_org(gateway: httpx.AsyncClient, platform_headers: dict[str, str]) -> Org:
    slug = f"org-{uuid.uuid4().hex[:10]}"
    admin = Member(uuid.UUID(int=0), unique("admin"), strong_password(), "org_admin", None)
    response = await gateway.post("/api/auth/organizations", headers=platform_headers, json={
        "name": f"Clinic {slug}", "slug": slug, "admin": {"username": admin.username, "password": admin.password}})
    assert response.status_code == 201, response.text
    body = response.json()
    admin.id, admin.org_id = uuid.UUID(body["admin_id"]), uuid.UUID(body["id"])
    org = Org(uuid.UUID(body["id"]), slug, admin)
    org.admin_headers = bearer(await login(gateway, admin.username, admin.password))
    return org


@pytest.fixture(scope="session")
async def platform_admin(gateway: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await login(gateway, "platform_demo"))


@pytest.fixture(scope="session")
async def org(gateway: httpx.AsyncClient, platform_admin: dict[str, str]) -> Org:
    """An organisation of the identity tests' own (demo users stay untouched by lockouts and resets)."""
    return await create_org(gateway, platform_admin)


@pytest.fixture(scope="session")
async def other_org(gateway: httpx.AsyncClient, platform_admin: dict[str, str]) -> Org:
    return await create_org(gateway, platform_admin)


MakeUser = Callable[..., Awaitable[Member]]


@pytest.fixture
def make_user(gateway: httpx.AsyncClient, org: Org) -> MakeUser:
    """``await make_user(role="lab_technician", in_org=org)``: a new user with a strong password."""

    async def make(role: str = "lab_technician", in_org: Org | None = None) -> Member:
        target = in_org or org
        member = Member(uuid.UUID(int=0), unique(role[:3]), strong_password(), role, target.id)
        response = await gateway.post("/api/auth/users", headers=target.admin_headers,
                                      json={"username": member.username, "password": member.password, "role": role})
        assert response.status_code == 201, response.text
        member.id = uuid.UUID(response.json()["id"])
        return member

    return make


async def password_login(gateway: httpx.AsyncClient, member: Member, password: str | None = None) -> httpx.Response:
    return await gateway.post("/api/auth/login",
                              json={"username": member.username, "password": password or member.password})


async def session_of(gateway: httpx.AsyncClient, member: Member) -> dict[str, Any]:
    """A full session (tokens) of the member, finishing MFA or enrolment like a person would."""
    return await login(gateway, member.username, member.password)


async def session_by_backup_code(gateway: httpx.AsyncClient, member: Member) -> dict[str, Any]:
    """A full session of an enrolled member, spending a backup code so the TOTP steps stay free."""
    response = await password_login(gateway, member)
    assert response.status_code == 200 and response.json()["status"] == "mfa_required", response.text
    verified = await gateway.post("/api/auth/mfa/verify", json={
        "mfa_token": response.json()["mfa_token"], "backup_code": member.authenticator.backup_codes.pop()})
    assert verified.status_code == 200, verified.text
    return verified.json()


@pytest.fixture
def enrolled_user(gateway: httpx.AsyncClient, make_user: MakeUser) -> Callable[..., Awaitable[Member]]:
    """A user who has enrolled TOTP (the authenticator is at ``member.authenticator``)."""

    async def make(role: str = "lab_technician") -> Member:
        member = await make_user(role)
        response = await password_login(gateway, member)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] == "authenticated":
            await enrol(gateway, member.username, bearer_of(body))
        else:
            assert body["status"] == "mfa_enrolment_required", body
            await enrol(gateway, member.username, bearer_of(body))
        return member

    return make


# -- identity events as published -------------------------------------------------------------------------------


class IdentityEvents:
    """Every event of ``clinomic.identity`` since the topic began, read in the background."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(Topic.IDENTITY.value, bootstrap_servers=bootstrap, group_id=None,
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.raw: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.consumer:
            self.raw.append(message.value)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self.consumer.stop()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.raw]

    def of(self, event_type: str, **payload: Any) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event_type"] == event_type
                and all(str(e["payload"].get(k)) == str(v) for k, v in payload.items())]

    async def wait_for(self, event_type: str, timeout: float = 15.0, **payload: Any) -> dict[str, Any]:
        async def found() -> bool:
            return bool(self.of(event_type, **payload))

        assert await wait_until(found, timeout), f"no {event_type} event with {payload} within {timeout} s"
        return self.of(event_type, **payload)[-1]


@pytest.fixture(scope="session")
async def identity_events(platform: stack.Platform) -> AsyncIterator[IdentityEvents]:
    events = IdentityEvents(platform.env["KAFKA_BOOTSTRAP_SERVERS"])
    await events.start()
    yield events
    await events.stop()


# -- tokens ------------------------------------------------------------------------------------------------------


@dataclass
class Forger:
    """Signs claims with the platform's real private key (or anything else) to probe every verifier."""

    private_key: Any
    kid: str
    public_x: str

    def sign(self, claims: dict[str, Any], key: Any = None, **headers: Any) -> str:
        return jwt.encode(claims, key or self.private_key, algorithm="EdDSA", headers={"kid": self.kid, **headers})


@pytest.fixture(scope="session")
async def forger(platform: stack.Platform, gateway: httpx.AsyncClient) -> Forger:
    from auth.keys import SigningKeys

    current = SigningKeys.from_pem(platform.env["JWT_PRIVATE_KEY"]).current
    jwk = next(k for k in (await gateway.get("/api/auth/jwks")).json()["keys"] if k["kid"] == current.kid)
    return Forger(current.private_key, current.kid, jwk["x"])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Endpoints:
    """One authenticated route per verifying service, called directly and through the gateway."""

    platform: stack.Platform

    async def statuses(self, headers: dict[str, str]) -> dict[str, int]:
        urls = self.platform.urls
        async with httpx.AsyncClient(timeout=10.0) as client:
            calls = {
                "gateway": client.post(f"{urls['gateway']}/api/screening/classify", json={}, headers=headers),
                "auth": client.get(f"{urls['auth']}/api/auth/me", headers=headers),
                "screening": client.get(f"{urls['screening']}/api/screening/history", headers=headers),
                "audit": client.get(f"{urls['audit']}/api/audit", headers=headers),
            }
            answers = await asyncio.gather(*calls.values())
        return {name: answer.status_code for name, answer in zip(calls, answers, strict=True)}


@pytest.fixture(scope="session")
def endpoints(platform: stack.Platform) -> Endpoints:
    return Endpoints(platform)
