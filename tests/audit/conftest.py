"""Fixtures for the audit service tests: fresh organisations with their own chains, probe events, tampering.

Every test that breaks a chain does it to the chain of an organisation created for that test, so the
shared platform's other chains stay intact for the rest of the session.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from devstack.stack import Platform
from shared.events import Actor, Topic, new_envelope
from shared.kafka import encode
from tests.conftest import bearer, login

PROBE = "AuditProbe"


class ProbePayload(BaseModel):
    """A test event: ``subject_id`` is an entity the ledger can be searched by."""

    n: int
    subject_id: str


@dataclass
class Org:
    id: uuid.UUID
    admin: dict[str, str]
    admin_user_id: uuid.UUID

    @property
    def chain_id(self) -> str:
        return f"tenant:{self.id}"


@pytest.fixture(scope="session")
async def platform_admin(gateway: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await login(gateway, "platform_demo"))


async def create_org(gateway: httpx.AsyncClient, platform_admin: dict[str, str]) -> Org:
    tag = uuid.uuid4().hex[:10]
    created = await gateway.post(
        "/api/auth/organizations",
        headers=platform_admin,
        json={"name": f"Audit test {tag}", "slug": f"audit-{tag}"},
    )
    assert created.status_code == 201, created.text
    org_id = uuid.UUID(created.json()["id"])
    username, password = f"audit_admin_{tag}", f"Ledger-{secrets.token_urlsafe(12)}!9"
    user = await gateway.post(
        "/api/auth/users",
        headers=platform_admin,
        json={
            "username": username,
            "password": password,
            "role": "org_admin",
            "organization_id": str(org_id),
        },
    )
    assert user.status_code == 201, user.text
    return Org(org_id, bearer(await login(gateway, username, password)), uuid.UUID(user.json()["id"]))


@pytest.fixture
async def org(gateway: httpx.AsyncClient, platform_admin: dict[str, str]) -> Org:
    """A new organisation of this test's own, with an org admin logged in."""
    return await create_org(gateway, platform_admin)


@pytest.fixture(scope="session")
async def producer(platform: Platform) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=platform.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await client.start()
    yield client
    await client.stop()


def probe_envelope(
    tenant: uuid.UUID | None, n: int, subject: str | None = None, actor: Actor | None = None
) -> Any:
    return new_envelope(
        ProbePayload(n=n, subject_id=subject or f"S-{uuid.uuid4().hex[:12]}"),
        event_type=PROBE,
        event_version=1,
        tenant_id=tenant,
        actor=actor or Actor(role="service", service="audit-tests"),
    )


async def publish(producer: AIOKafkaProducer, envelopes: list[Any], topic: str = Topic.IDENTITY) -> None:
    for envelope in envelopes:
        await producer.send_and_wait(topic, encode(envelope), key=str(envelope.event_id).encode())


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def ledger_seqs(engine: AsyncEngine, event_ids: list[Any]) -> dict[str, int]:
    """seq of each event id the ledger holds."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_id, seq FROM audit.entries WHERE event_id = ANY(:ids)"),
            {"ids": [uuid.UUID(str(e)) for e in event_ids]},
        )
        return {str(r[0]): r[1] for r in rows}


async def wait_appended(engine: AsyncEngine, event_ids: list[Any], timeout: float = 30.0) -> dict[str, int]:
    found: dict[str, int] = {}

    async def done() -> bool:
        found.update(await ledger_seqs(engine, event_ids))
        return len(found) == len(event_ids)

    await wait_until(done, f"{len(event_ids)} events in the ledger", timeout)
    return found


@dataclass
class Probed:
    """An organisation's chain with ``count`` probe events at its end, covered by a signed tree head."""

    org: Org
    event_ids: list[str]
    seqs: list[int]
    head: dict[str, Any]


async def chain_size(engine: AsyncEngine, chain_id: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text("SELECT coalesce(max(seq), 0) FROM audit.entries WHERE chain_id = :c"), {"c": chain_id}
            )
        )


async def wait_for_head(
    gateway: httpx.AsyncClient, headers: dict[str, str], size: int, timeout: float = 30.0
) -> dict[str, Any]:
    heads: list[dict[str, Any]] = []

    async def signed() -> bool:
        response = await gateway.get("/api/audit/tree-heads", headers=headers)
        assert response.status_code == 200, response.text
        heads[:] = [h for h in response.json()["items"] if h["tree_size"] >= size]
        return bool(heads)

    await wait_until(signed, f"a signed tree head of size >= {size}", timeout)
    return heads[0]


@pytest.fixture
def probed(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> Callable[..., Awaitable[Probed]]:
    async def make(count: int = 6) -> Probed:
        envelopes = [probe_envelope(org.id, n) for n in range(count)]
        await publish(producer, envelopes)
        seqs = await wait_appended(engine, [e.event_id for e in envelopes])
        ordered = [seqs[str(e.event_id)] for e in envelopes]
        head = await wait_for_head(gateway, org.admin, await chain_size(engine, org.chain_id))
        return Probed(org, [str(e.event_id) for e in envelopes], ordered, head)

    return make


@asynccontextmanager
async def as_superuser_without_triggers(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """What a database superuser can do: a transaction in which the ledger's triggers do not fire."""
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        yield conn


async def verify(gateway: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await gateway.get("/api/audit/verify", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="session")
async def runtime_engine(platform: Platform) -> AsyncIterator[AsyncEngine]:
    """The audit service's own login role (SELECT and INSERT on the ledger only)."""
    engine = create_async_engine(
        platform.env["AUDIT_DATABASE_URL"], connect_args={"server_settings": {"search_path": "audit"}}
    )
    yield engine
    await engine.dispose()


@dataclass
class ServiceKeys:
    hmac: dict[str, bytes]
    public: list[Any]
    head_log: Any


@pytest.fixture(scope="session")
def service_keys(platform: Platform) -> ServiceKeys:
    """What the running audit service verifies with (read from its environment)."""
    from audit.settings import AuditSettings
    from audit.treeheads import TreeHeadLog
    from devstack.stack import environment

    with environment(platform.env):
        settings = AuditSettings()
    return ServiceKeys(
        settings.hmac_keys(), settings.tree_head_public_keys(), TreeHeadLog(settings.audit_tree_head_dir)
    )
