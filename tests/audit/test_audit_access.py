"""Who reads which chain (the token decides, never a parameter), and the ledger's filters and paging."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.events import Actor
from tests.audit.conftest import Org, create_org, probe_envelope, publish, wait_appended
from tests.conftest import bearer, login


async def entries(gateway: httpx.AsyncClient, headers: dict[str, str], **params: object) -> dict:
    response = await gateway.get("/api/audit", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_an_org_admin_reads_only_its_own_organisations_chain(
    gateway: httpx.AsyncClient,
    engine: AsyncEngine,
    producer: AIOKafkaProducer,
    org: Org,
    platform_admin: dict[str, str],
) -> None:
    other = await create_org(gateway, platform_admin)
    mine, theirs = (
        probe_envelope(org.id, 0, subject="S-mine"),
        probe_envelope(other.id, 0, subject="S-theirs"),
    )
    await publish(producer, [mine, theirs])
    await wait_appended(engine, [mine.event_id, theirs.event_id])
    page = await entries(gateway, org.admin, limit=500)
    assert page["chain_id"] == org.chain_id
    assert {e["tenant_id"] for e in page["items"]} == {str(org.id)}
    assert str(mine.event_id) in {e["event_id"] for e in page["items"]}
    assert (await entries(gateway, org.admin, entity=str(theirs.payload.subject_id)))["items"] == []
    assert (await entries(gateway, other.admin, entity="S-theirs"))["items"][0]["event_id"] == str(
        theirs.event_id
    )
    for path in ("/api/audit/verify", "/api/audit/tree-heads", "/api/audit/export"):
        assert org.chain_id not in (await gateway.get(path, headers=other.admin)).text


async def test_an_auditor_reads_its_organisations_chain(gateway: httpx.AsyncClient, org: Org) -> None:
    username, password = f"auditor_{uuid.uuid4().hex[:8]}", f"Ledger-{secrets.token_urlsafe(12)}!9"
    created = await gateway.post(
        "/api/auth/users",
        headers=org.admin,
        json={"username": username, "password": password, "role": "auditor"},
    )
    assert created.status_code == 201, created.text
    auditor = bearer(await login(gateway, username, password))
    page = await entries(gateway, auditor)
    assert page["chain_id"] == org.chain_id and page["items"]
    assert (await gateway.get("/api/audit/verify", headers=auditor)).json()["ok"] is True


async def test_the_platform_admin_reads_the_platform_chain_only(
    gateway: httpx.AsyncClient,
    engine: AsyncEngine,
    producer: AIOKafkaProducer,
    org: Org,
    platform_admin: dict[str, str],
) -> None:
    platform_event, org_event = probe_envelope(None, 0), probe_envelope(org.id, 0)
    await publish(producer, [platform_event, org_event])
    await wait_appended(engine, [platform_event.event_id, org_event.event_id])
    found = await entries(gateway, platform_admin, entity=platform_event.payload.subject_id)
    assert found["chain_id"] == "platform"
    assert [e["event_id"] for e in found["items"]] == [str(platform_event.event_id)]
    assert (await entries(gateway, platform_admin, entity=org_event.payload.subject_id))["items"] == []


async def test_staff_without_audit_rights_are_refused(
    gateway: httpx.AsyncClient, lab: dict[str, str]
) -> None:
    for path in (
        "/api/audit",
        "/api/audit/verify",
        "/api/audit/tree-heads",
        "/api/audit/export",
        "/api/audit/entries/1/proof",
        "/api/audit/consistency?first=1",
    ):
        assert (await gateway.get(path, headers=lab)).status_code == 403, path


async def test_entries_can_be_filtered_by_type_actor_entity_and_time(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    someone = uuid.uuid4()
    by_someone = probe_envelope(org.id, 0, subject="S-filter-1", actor=Actor(user_id=someone, role="doctor"))
    other = probe_envelope(org.id, 1, subject="S-filter-2")
    await publish(producer, [by_someone, other])
    await wait_appended(engine, [by_someone.event_id, other.event_id])

    def ids(page: dict) -> set[str]:
        return {e["event_id"] for e in page["items"]}

    assert ids(await entries(gateway, org.admin, event_type="AuditProbe")) == {
        str(by_someone.event_id),
        str(other.event_id),
    }
    assert ids(await entries(gateway, org.admin, actor=str(someone))) == {str(by_someone.event_id)}
    assert ids(await entries(gateway, org.admin, actor="audit-tests")) == {str(other.event_id)}
    assert ids(await entries(gateway, org.admin, entity="S-filter-2")) == {str(other.event_id)}
    assert ids(await entries(gateway, org.admin, entity=str(other.correlation_id))) == {str(other.event_id)}
    at = by_someone.occurred_at
    window = {
        "since": (at - timedelta(microseconds=1)).isoformat(),
        "until": (at + timedelta(microseconds=1)).isoformat(),
    }
    assert ids(await entries(gateway, org.admin, **window)) == {str(by_someone.event_id)}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert ids(await entries(gateway, org.admin, since=future)) == set()


async def test_cursor_paging_walks_the_whole_chain_once(
    gateway: httpx.AsyncClient, engine: AsyncEngine, producer: AIOKafkaProducer, org: Org
) -> None:
    envelopes = [probe_envelope(org.id, n) for n in range(7)]
    await publish(producer, envelopes)
    await wait_appended(engine, [e.event_id for e in envelopes])
    everything = [e["seq"] for e in (await entries(gateway, org.admin, limit=500))["items"]]
    for order, expected in (("desc", everything), ("asc", everything[::-1])):
        seen: list[int] = []
        cursor = None
        while True:
            page = await entries(
                gateway, org.admin, limit=3, order=order, **({"cursor": cursor} if cursor else {})
            )
            seen += [e["seq"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected


async def test_a_bad_filter_is_a_422_naming_the_field(gateway: httpx.AsyncClient, org: Org) -> None:
    response = await gateway.get(
        "/api/audit", headers=org.admin, params={"cursor": "x", "since": "yesterday"}
    )
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} >= {"query.cursor", "query.since"}
