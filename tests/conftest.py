"""Session fixtures: one real platform (PostgreSQL, Kafka-protocol broker, five services) for all tests.

PostgreSQL comes from ``DATABASE_URL``, else a container when a Docker engine answers, else the embedded
server; the broker from ``KAFKA_BOOTSTRAP_SERVERS``, else a container, else the bundled tansu broker.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack import infra, stack
from tests.observability.otlp_receiver import OtlpReceiver

HEALTHY_CBC = {
    "hb": 14.2, "rbc": 4.8, "hct": 42.5, "mcv": 88.5, "mch": 29.6, "mchc": 33.4, "rdw": 12.9, "wbc": 6.8,
    "platelets": 260, "neutrophils_pct": 58, "lymphocytes_pct": 32, "age": 46, "sex": "male",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests that kill services or restart the broker last, so no other test depends on their recovery."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Where the platform's services export their traces (tests/observability/test_tracing.py)."""
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def tracing_env(receiver: OtlpReceiver) -> dict[str, str]:
    """Traces on, sampling only what arrives with a sampled ``traceparent`` (the trace test's requests): the rest
    of the suite records nothing."""
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0"}


@pytest.fixture(scope="session")
def platform(otlp_receiver: OtlpReceiver) -> Iterator[stack.Platform]:
    state = Path(tempfile.mkdtemp(prefix="clinomic-test-"))
    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    try:
        with stack.platform(state, ports=ports, ephemeral=True, prefer_containers=True,
                            extra_env={"CLASSIFY_WAIT_SECONDS": "10", "REDELIVER_AFTER_SECONDS": "3",
                                       "DEBUG": "false",
                                       # identity: every test comes from 127.0.0.1, so per-address limits
                                       # must be generous here (tests/identity starts its own limited
                                       # gateways); lockouts and the refresh grace window short for speed.
                                       "RATE_LIMIT_LOGIN": "100000/minute", "RATE_LIMIT_REFRESH": "100000/minute",
                                       "RATE_LIMIT_MFA": "100000/minute", "RATE_LIMIT_DEFAULT": "100000/minute",
                                       "LOCKOUT_BASE_SECONDS": "4", "REFRESH_GRACE_SECONDS": "2",
                                       # session-scoped fixtures hold access tokens for the whole run
                                       "JWT_ACCESS_TTL_SECONDS": "3600",
                                       "CORS_ORIGINS": "https://app.clinomic.test",
                                       **tracing_env(otlp_receiver)}) as running:
            yield running
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
async def gateway(platform: stack.Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
async def engine(platform: stack.Platform) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(platform.env["DATABASE_URL"])
    yield engine
    await engine.dispose()


async def login(gateway: httpx.AsyncClient, username: str, password: str = stack.DEMO_PASSWORD) -> dict[str, str]:
    """Log in and finish what the login asks for: a TOTP code when MFA is on, or MFA enrolment when the role
    requires it (org admins, doctors); returns the session's tokens (see tests/identity/authenticator.py)."""
    from tests.identity.authenticator import complete_login

    response = await gateway.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return await complete_login(gateway, username, response.json())


def bearer(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


@pytest.fixture(scope="session")
async def lab(gateway: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await login(gateway, "lab_demo"))


@pytest.fixture(scope="session")
async def admin(gateway: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await login(gateway, "admin_demo"))


def new_patient_id() -> str:
    return f"P-{uuid.uuid4().hex[:10]}"


