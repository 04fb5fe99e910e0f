"""Readiness asks each dependency for real and names the one that fails."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from devstack import infra
from devstack.stack import Platform
from shared import health
from shared.kafka import make_broker
from shared.settings import CommonSettings
from tests.observability.conftest import SERVICES

CHECKS = {"gateway": {"database", "broker"}, "auth": {"database", "broker"}, "screening": {"database", "broker"},
          "audit": {"database", "broker"}, "inference": {"broker", "model"}}


@pytest.mark.parametrize("service", SERVICES)
async def test_a_running_service_reports_each_dependency_it_checked(platform: Platform, service: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{platform.urls[service]}/health/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == dict.fromkeys(CHECKS[service], "ok")


async def test_an_unreachable_database_is_named_as_failing() -> None:
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{infra.free_port()}/clinomic")
    try:
        answer = await health.readiness({"database": health.database(engine)})
    finally:
        await engine.dispose()
    assert answer["ready"] is False and answer["failing"] == ["database"]
    assert answer["checks"]["database"].startswith("failed (")


async def test_a_broker_connection_that_is_gone_is_named_as_failing(platform: Platform) -> None:
    broker = make_broker(CommonSettings(kafka_bootstrap_servers=platform.env["KAFKA_BOOTSTRAP_SERVERS"]),
                         "readiness-test")
    await broker.connect()
    checks = {"broker": health.broker(broker, timeout=1.0)}
    assert (await health.readiness(checks))["ready"] is True
    await broker.stop()
    answer = await health.readiness(checks)
    assert answer["failing"] == ["broker"] and answer["checks"]["broker"] == "the broker does not answer"
