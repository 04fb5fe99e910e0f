"""One screening followed across services by its correlation id: JSON log lines with the service, the id and
the tenant, in every service it passes, and never the patient's name."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from devstack.stack import Platform
from tests.conftest import new_patient_id
from tests.records.helpers import classify, consented_patient, eventually, ok


def lines_with(platform: Platform, service: str, needle: str) -> list[dict[str, object]]:
    """The JSON log lines of ``service`` mentioning ``needle`` (what ``grep`` would find)."""
    text = platform.logs[service].read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if needle in line and line.startswith("{")]


def carries(line: dict[str, object], correlation: str) -> bool:
    found = line.get("correlation_id")
    return found == correlation or (isinstance(found, list) and correlation in found)


async def test_one_screening_is_followed_across_services_by_its_correlation_id(
        platform: Platform, gateway: httpx.AsyncClient, lab: dict) -> None:
    name = f"Loglinde Canary {uuid.uuid4().hex[:6]}"
    patient = new_patient_id()
    await consented_patient(gateway, lab, external_id=patient, name=name)
    response = await classify(gateway, lab, patient, name=name)
    ok(response)
    correlation = response.headers["x-correlation-id"]
    services = ("gateway", "inference", "screening", "audit")

    async def logged_everywhere() -> dict[str, list[dict[str, object]]] | None:
        found = {s: await asyncio.to_thread(lines_with, platform, s, correlation) for s in services}
        return found if all(found.values()) else None

    found = await eventually(logged_everywhere, timeout=60, interval=0.5)
    for service, lines in found.items():
        assert all(carries(line, correlation) and line["service"] == service for line in lines), lines
        assert any(line.get("tenant_id") for line in lines), f"{service}: no tenant id"
    assert not any(name in json.dumps(lines) for lines in found.values())


async def test_a_request_the_gateway_forwards_is_logged_by_the_owning_service_under_the_same_id(
        platform: Platform, gateway: httpx.AsyncClient, lab: dict) -> None:
    response = await gateway.get("/api/patients", headers=lab)
    ok(response)
    correlation = response.headers["x-correlation-id"]

    async def logged_by_screening() -> list[dict[str, object]] | None:
        return await asyncio.to_thread(lines_with, platform, "screening", correlation) or None

    lines = await eventually(logged_by_screening, timeout=30, interval=0.3)
    assert all(carries(line, correlation) for line in lines)
