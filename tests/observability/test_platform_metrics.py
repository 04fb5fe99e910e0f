"""The session platform: every service serves its metrics to the platform's own services only, and a screening
moves the counters of each service it passes through."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from devstack.stack import Platform
from tests.conftest import new_patient_id
from tests.observability.conftest import SERVICES, scrape, value
from tests.records.helpers import classify, consented_patient, eventually, ok

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "clinomic-platform.json"


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_serves_metrics_to_the_service_credential_only(
        platform: Platform, internal: httpx.AsyncClient, service: str) -> None:
    async with httpx.AsyncClient() as anonymous:
        refused = await anonymous.get(f"{platform.urls[service]}/metrics")
        as_bearer = await anonymous.get(f"{platform.urls[service]}/metrics", headers={
            "Authorization": f"Bearer {platform.env['INTERNAL_SERVICE_TOKEN']}"})  # how Prometheus sends it
    assert refused.status_code == 401
    assert as_bearer.status_code == 200 and "# HELP" in as_bearer.text
    assert "clinomic_http_requests_total" in await scrape(internal, platform, service)


@pytest.mark.parametrize("path", ["/metrics", "/api/auth/metrics", "/api/screening/metrics", "/api/audit/metrics",
                                  "/api/analytics/metrics", "/api/patients/metrics"])
async def test_no_metrics_are_served_to_a_client_of_the_gateway(gateway: httpx.AsyncClient, lab: dict,
                                                                path: str) -> None:
    response = await gateway.get(path, headers=lab)
    assert "# HELP" not in response.text and "# TYPE" not in response.text


async def test_a_screening_moves_the_counters_of_every_service_it_passes(
        platform: Platform, internal: httpx.AsyncClient, gateway: httpx.AsyncClient, lab: dict) -> None:
    before = {s: await scrape(internal, platform, s) for s in SERVICES}
    moved = {
        "gateway": [("clinomic_http_requests_total", {"route": "/api/screening/classify", "status": "200"}),
                    ("faststream_published_messages_total", {"destination": "clinomic.screening.requested",
                                                             "status": "success"})],
        "inference": [("faststream_received_messages_total", {"handler": "clinomic.screening.requested"}),
                      ("clinomic_inference_batch_rows_count", {"kind": "screening"}),
                      ("clinomic_inference_model_seconds_count", {"kind": "screening"})],
        "screening": [("faststream_received_processed_messages_total",
                       {"handler": "clinomic.screening.classified", "status": "acked"}),
                      ("faststream_published_messages_total", {"destination": "clinomic.screening.recorded"})],
        "audit": [("clinomic_audit_appended_entries_total", {}), ("clinomic_audit_entries", {})],
        "auth": [("clinomic_http_requests_total", {"route": "/api/auth/jwks"})],
    }
    patient = new_patient_id()
    await consented_patient(gateway, lab, external_id=patient, name="Ada Metrics")
    ok(await classify(gateway, lab, patient))
    await gateway.get("/api/auth/jwks")

    async def all_moved() -> bool:
        for service, samples in moved.items():
            now = await scrape(internal, platform, service)
            if any(value(now, name, **labels) <= value(before[service], name, **labels)
                   for name, labels in samples):
                return False
        return True

    assert await eventually(all_moved, timeout=60, interval=0.5)


@pytest.mark.parametrize(("service", "sample"), [
    ("gateway", "clinomic_gateway_intake_backlog"), ("gateway", "clinomic_gateway_batch_chunks_backlog"),
    ("screening", "clinomic_screening_outbox_size"), ("audit", "clinomic_audit_chains"),
    ("audit", "clinomic_audit_longest_chain_entries"), ("audit", "clinomic_kafka_consumer_lag")])
async def test_backlogs_ledger_size_and_consumer_lag_are_sampled_when_scraped(
        platform: Platform, internal: httpx.AsyncClient, service: str, sample: str) -> None:
    assert f"\n{sample}" in await scrape(internal, platform, service)


async def test_metrics_label_routes_by_template_never_by_raw_path(
        platform: Platform, internal: httpx.AsyncClient, gateway: httpx.AsyncClient, lab: dict) -> None:
    marker = "MetricsMarker"
    await gateway.get(f"/api/patients/{marker}", headers=lab)
    assert marker not in await scrape(internal, platform, "gateway")
    assert marker not in await scrape(internal, platform, "screening")


async def test_the_dashboard_asks_only_for_metrics_the_platform_serves(
        platform: Platform, internal: httpx.AsyncClient) -> None:
    served = "\n".join([await scrape(internal, platform, s) for s in SERVICES])
    families = set(re.findall(r"^# TYPE (\S+)", served, re.MULTILINE))
    dashboard = json.loads(DASHBOARD.read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"\b((?:clinomic|faststream|process)_[a-z_]+)", target["expr"])}
    missing = {n for n in asked if n not in families and re.sub(r"_(bucket|sum|count)$", "", n) not in families}
    assert asked and missing == set()
