"""Helpers of the clinical-records tests, all through the gateway's HTTP API (also used by integration tests)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from tests.conftest import HEALTHY_CBC, bearer, login, new_patient_id

T = TypeVar("T")
PLATFORM_ADMIN = "platform_demo"


def strong_password() -> str:
    """Long and random, so any password rule (length, classes, breach lists) accepts it."""
    return f"Cl1n!{secrets.token_urlsafe(24)}#Zz9"


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0,
                     interval: float = 0.1) -> T:
    """The first truthy result of ``probe`` (events are consumed asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {probe}")
        await asyncio.sleep(interval)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


@dataclass
class Org:
    """An organisation and its users (by role: admin, lab, doctor, auditor), created through the API."""

    id: str
    slug: str
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)


async def platform_admin(gateway: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await login(gateway, PLATFORM_ADMIN))


async def create_user(gateway: httpx.AsyncClient, creator: dict[str, str], role: str,
                      organization_id: str | None = None) -> tuple[str, dict[str, str]]:
    """A user of ``role`` (long random password), logged in the way the shared helpers log in."""
    username = f"{role[:6]}_{uuid.uuid4().hex[:10]}"
    password = strong_password()
    body: dict[str, Any] = {"username": username, "password": password, "role": role}
    if organization_id:
        body["organization_id"] = organization_id
    user_id = ok(await gateway.post("/api/auth/users", json=body, headers=creator), 201)["id"]
    return user_id, bearer(await login(gateway, username, password))


async def new_org(gateway: httpx.AsyncClient, prefix: str = "org",
                  roles: tuple[str, ...] = ("lab_technician", "doctor", "auditor")) -> Org:
    """Created by the platform admin, whose only act inside it is creating its org admin."""
    platform = await platform_admin(gateway)
    slug = f"{prefix}-{uuid.uuid4().hex[:10]}"
    org_id = ok(await gateway.post("/api/auth/organizations", json={"name": f"Clinic {slug}", "slug": slug},
                                   headers=platform), 201)["id"]
    org = Org(org_id, slug)
    org.user_ids["admin"], org.headers["admin"] = await create_user(gateway, platform, "org_admin", org_id)
    short = {"lab_technician": "lab", "doctor": "doctor", "auditor": "auditor"}
    for role in roles:
        org.user_ids[short[role]], org.headers[short[role]] = await create_user(gateway, org.headers["admin"], role)
    return org


async def create_lab(gateway: httpx.AsyncClient, admin: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"name": f"Lab {uuid.uuid4().hex[:6]}"} | fields
    return ok(await gateway.post("/api/labs", json=body, headers=admin), 201)


async def create_doctor(gateway: httpx.AsyncClient, admin: dict[str, str], user_id: str | None = None,
                        **fields: Any) -> dict[str, Any]:
    """A doctor record; linking a user waits until the screening service has heard of that user."""
    body = {"name": f"Dr {uuid.uuid4().hex[:6]}"} | fields | ({"user_id": user_id} if user_id else {})

    async def attempt() -> dict[str, Any] | None:
        response = await gateway.post("/api/doctors", json=body, headers=admin)
        if response.status_code == 422 and user_id and "user_id" in response.text:
            return None
        return ok(response, 201)

    return await eventually(attempt)


async def create_patient(gateway: httpx.AsyncClient, keeper: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"external_id": new_patient_id()} | fields
    return ok(await gateway.post("/api/patients", json=body, headers=keeper), 201)


async def record_consent(gateway: httpx.AsyncClient, keeper: dict[str, str], patient_id: str,
                         **fields: Any) -> dict[str, Any]:
    body = {"patient_id": patient_id, "method": "written",
            "text": "I agree to have my blood count screened for vitamin B12 deficiency."} | fields
    return ok(await gateway.post("/api/consents", json=body, headers=keeper), 201)


async def consented_patient(gateway: httpx.AsyncClient, keeper: dict[str, str], **fields: Any) -> dict[str, Any]:
    """A patient with an active screening consent: what classify needs under the default policy."""
    patient = await create_patient(gateway, keeper, **fields)
    await record_consent(gateway, keeper, patient["id"])
    return patient


async def classify(gateway: httpx.AsyncClient, headers: dict[str, str], external_id: str, *,
                   name: str | None = None, cbc: dict[str, Any] | None = None,
                   key: str | None = None) -> httpx.Response:
    patient: dict[str, Any] = {"external_id": external_id} | ({"name": name} if name else {})
    return await gateway.post("/api/screening/classify", json={"patient": patient, "cbc": cbc or HEALTHY_CBC},
                              headers=headers | ({"Idempotency-Key": key} if key else {}))


async def topic_messages(bootstrap: str, topic: str, *, until: Callable[[list[dict[str, Any]]], bool] | None = None,
                         timeout: float = 15.0) -> list[dict[str, Any]]:
    """Events of ``topic`` from the beginning, as JSON: until ``until`` holds (or ``timeout``), else until idle."""
    import json

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"probe-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", fetch_max_wait_ms=5, enable_auto_commit=False)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        idle = 0
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            idle = 0 if batch else idle + 1
            found += [json.loads(m.value) for records in batch.values() for m in records if m.value]
            if until is not None and until(found):
                break
            if until is None and idle >= 8:
                break
    finally:
        await consumer.stop()
    return found


async def record_event(bootstrap: str, event_type: str, *, tenant_id: str | None = None,
                       **payload: Any) -> dict[str, Any]:
    """The first ``clinomic.records`` event of this type whose payload has these values (waits for it)."""
    def match(event: dict[str, Any]) -> bool:
        return event["event_type"] == event_type and all(event["payload"].get(k) == v for k, v in payload.items()) \
            and (tenant_id is None or event["tenant_id"] == tenant_id)

    events = await topic_messages(bootstrap, "clinomic.records", until=lambda found: any(map(match, found)))
    matching = [e for e in events if match(e)]
    assert matching, f"no {event_type} {payload} on clinomic.records"
    return matching[0]


async def classified(gateway: httpx.AsyncClient, headers: dict[str, str], external_id: str,
                     **options: Any) -> dict[str, Any]:
    """Classify and return the recorded screening: the synchronous answer, or (when the machine is slow and
    the gateway answered 202) the screening fetched from its URL once recorded."""
    response = await classify(gateway, headers, external_id, **options)
    if response.status_code == 200:
        return response.json()
    body = ok(response, 202)

    async def recorded() -> dict[str, Any] | None:
        fetched = await gateway.get(body["url"], headers=headers)
        return fetched.json() | {"url": body["url"]} if fetched.status_code == 200 else None

    return await eventually(recorded, timeout=60, interval=0.2)
