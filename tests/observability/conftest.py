"""Fixtures of the observability tests: a client of each service's own port, presenting the service credential."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Platform
from shared.tokens import SERVICE_TOKEN_HEADER

SERVICES = ("gateway", "auth", "screening", "audit", "inference")


@pytest.fixture(scope="session")
async def internal(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """Calls any service directly (full URLs) as another service of the platform would."""
    async with httpx.AsyncClient(timeout=30.0, headers={
            SERVICE_TOKEN_HEADER: platform.env["INTERNAL_SERVICE_TOKEN"]}) as client:
        yield client


async def scrape(client: httpx.AsyncClient, platform: Platform, service: str) -> str:
    response = await client.get(f"{platform.urls[service]}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def value(exposition: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 when there is none)."""
    return sum(s.value for family in text_string_to_metric_families(exposition) for s in family.samples
               if s.name == sample and labels.items() <= s.labels.items())
