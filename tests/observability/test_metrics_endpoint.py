"""The ``/metrics`` route of a FastAPI service, in process: the service credential only, routes by template."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from starlette.types import Message

from shared import metrics
from shared.tokens import SERVICE_TOKEN_HEADER, ServiceCredential
from shared.web import EdgeAbort
from tests.observability.conftest import value

TOKEN = "s" * 40


def service() -> FastAPI:
    app = FastAPI()
    app.state.service_credential = ServiceCredential(internal_service_token=TOKEN)
    metrics.install(app)

    @app.get("/api/patients/{patient_id}")
    async def patient(patient_id: str) -> dict[str, str]:
        return {}

    return app


async def test_requests_are_counted_by_route_template_and_status() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(service()), base_url="http://svc") as client:
        before = (await client.get("/metrics", headers={SERVICE_TOKEN_HEADER: TOKEN})).text
        await client.get("/api/patients/P-1234")
        await client.get("/no/such/path")
        after = (await client.get("/metrics", headers={SERVICE_TOKEN_HEADER: TOKEN})).text
    moved = {labels: value(after, "clinomic_http_requests_total", **dict(labels))
             - value(before, "clinomic_http_requests_total", **dict(labels))
             for labels in ((("route", "/api/patients/{patient_id}"), ("status", "200")),
                            (("route", metrics.UNMATCHED), ("status", "404")))}
    assert set(moved.values()) == {1.0}
    assert "P-1234" not in after and "/no/such/path" not in after


async def test_every_answer_names_its_correlation_id_and_keeps_a_callers_uuid() -> None:
    given = "0b0e8a5e-6c35-4d6a-9f0e-3f5b8f1a2c44"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(service()), base_url="http://svc") as client:
        kept = await client.get("/api/patients/x", headers={"x-correlation-id": given})
        made = await client.get("/api/patients/x", headers={"x-correlation-id": "not-a-uuid"})
    assert kept.headers["x-correlation-id"] == given
    assert made.headers["x-correlation-id"] not in (given, "not-a-uuid")


async def test_a_failing_sample_does_not_stop_the_scrape() -> None:
    registry = CollectorRegistry()
    backlog = Gauge("backlog", "for the test", registry=registry)

    async def broken() -> None:
        raise OSError("database away")

    async def counted() -> None:
        backlog.set(7)

    endpoint = metrics.MetricsEndpoint(lambda: ServiceCredential(internal_service_token=TOKEN), [broken, counted],
                                       registry=registry)
    status, body, _ = await endpoint.answer({"headers": [(SERVICE_TOKEN_HEADER.encode(), TOKEN.encode())]})
    assert status == 200 and value(body.decode(), "backlog") == 7


async def test_a_request_abandoned_before_any_response_is_counted_as_aborted_not_as_an_error() -> None:
    app = service()

    @app.post("/api/uploads")
    async def upload(request: Request) -> dict[str, str]:
        await request.body()
        return {}

    async def too_large() -> Message:
        raise EdgeAbort  # what the gateway's body limit raises; its own middleware then answers 413

    async def sent(message: Message) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/api/uploads", "raw_path": b"/api/uploads",
             "root_path": "", "query_string": b"", "headers": [], "app": app}
    labels = {"method": "POST", "route": "/api/uploads", "status": metrics.ABORTED}
    before = REGISTRY.get_sample_value("clinomic_http_requests_total", labels) or 0
    with pytest.raises(EdgeAbort):
        await app(scope, too_large, sent)
    assert REGISTRY.get_sample_value("clinomic_http_requests_total", labels) == before + 1
