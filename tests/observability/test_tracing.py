"""Traces (issue 16 item 6): off without the ``OTEL_*`` variables; on, one classify is one trace across the
services on its path, whose spans the session's OTLP receiver (``otlp_receiver.py``) holds in memory.

A classify passes the gateway (HTTP, then Kafka), the screening service (the admission check over HTTP, then
recording), inference and the audit ledger (which consumes every event). Auth is not on the path: the gateway
verifies tokens with the keys it fetched at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import httpx
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from devstack.stack import Platform
from shared import tracing
from shared.events.topics import Topic
from shared.observability import JsonFormatter
from tests.conftest import new_patient_id
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.records.helpers import classify, consented_patient, eventually, ok

ON_THE_PATH = {"gateway", "screening", "inference", "audit"}


def test_tracing_stays_off_without_the_otel_variables() -> None:
    assert tracing.configure_tracing("gateway", env={"LOG_LEVEL": "INFO"}) is False
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert tracing.kafka_middlewares() == []


def test_an_otlp_endpoint_alone_turns_the_otlp_exporter_on() -> None:
    assert tracing.exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]


def test_exporter_none_keeps_tracing_off_even_with_an_endpoint() -> None:
    assert tracing.exporter_names({"OTEL_TRACES_EXPORTER": "none",
                                   "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == []


@given(st.dictionaries(st.sampled_from(["OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]), st.text(max_size=30)))
def test_a_disabled_sdk_keeps_tracing_off_whatever_else_is_set(env: dict[str, str]) -> None:
    assert tracing.exporter_names(env | {"OTEL_SDK_DISABLED": "true"}) == []


def test_an_unknown_exporter_stops_the_service_with_a_one_line_reason() -> None:
    try:
        tracing.configure_tracing("gateway", env={"OTEL_TRACES_EXPORTER": "carrier-pigeon"})
    except SystemExit as stopped:
        assert "carrier-pigeon" in str(stopped) and "\n" not in str(stopped)
    else:
        raise AssertionError("an unknown exporter was accepted")
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def formatted(formatter: JsonFormatter) -> dict[str, object]:
    record = logging.LogRecord("clinomic.test", logging.INFO, __file__, 1, "handled", None, None)
    return json.loads(formatter.format(record))


def test_a_log_line_carries_the_trace_id_of_the_recorded_span_it_belongs_to() -> None:
    formatter = JsonFormatter("gateway")
    with TracerProvider().get_tracer(__name__).start_as_current_span("request") as span:
        line = formatted(formatter)
    assert line["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)
    assert "trace_id" not in formatted(formatter)


def broken_links(spans: list[ReceivedSpan], root_parent: str) -> list[ReceivedSpan]:
    """Spans whose parent is neither in the trace nor the caller's span the trace started from."""
    ids = {s.span_id for s in spans} | {root_parent}
    return [s for s in spans if s.parent_span_id not in ids]


async def traced_classify(gateway: httpx.AsyncClient, lab: dict[str, str]) -> tuple[str, str]:
    """One classify sent as the continuation of a new sampled trace: its trace id and the caller's span id."""
    patient = new_patient_id()
    await consented_patient(gateway, lab, external_id=patient)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    ok(await classify(gateway, lab | {"traceparent": f"00-{trace_id}-{caller_span}-01"}, patient))
    return trace_id, caller_span


async def test_one_classify_is_one_trace_across_the_services_on_its_path(
        otlp_receiver: OtlpReceiver, gateway: httpx.AsyncClient, lab: dict) -> None:
    trace_id, caller_span = await traced_classify(gateway, lab)

    async def whole_trace() -> list[ReceivedSpan] | None:
        spans = otlp_receiver.trace(trace_id)
        recorded = {(s.service, s.name) for s in spans}
        whole = ({s.service for s in spans} >= ON_THE_PATH and not broken_links(spans, caller_span)
                 and ("audit", f"{Topic.SCREENING_RECORDED.value} process") in recorded)
        return spans if whole else None

    try:
        spans = await eventually(whole_trace, timeout=60.0, interval=0.2)
    except AssertionError:
        received = sorted({(s.service, s.name) for s in otlp_receiver.trace(trace_id)})
        raise AssertionError(f"incomplete trace: {received}") from None
    names = {(s.service, s.name) for s in spans}
    assert {("inference", f"{Topic.SCREENING_REQUESTED.value} process"),
            ("screening", f"{Topic.SCREENING_CLASSIFIED.value} process"),
            ("gateway", f"{Topic.SCREENING_RECORDED.value} process")} <= names
    assert [s for s in spans if s.parent_span_id == caller_span][0].service == "gateway"


async def test_the_log_lines_of_a_traced_classify_carry_its_trace_id_in_every_service_on_its_path(
        platform: Platform, gateway: httpx.AsyncClient, lab: dict) -> None:
    trace_id, _ = await traced_classify(gateway, lab)

    def logged_by() -> set[str]:
        return {service for service in ON_THE_PATH
                if f'"trace_id": "{trace_id}"' in platform.logs[service].read_text(errors="replace")}

    async def everywhere() -> bool:
        return await asyncio.to_thread(logged_by) == ON_THE_PATH

    try:
        await eventually(everywhere, timeout=60.0, interval=0.2)
    except AssertionError:
        raise AssertionError(f"trace {trace_id} logged only by {sorted(logged_by())}") from None
