"""OpenTelemetry traces: one trace from an HTTP request through every Kafka hop, off unless the ``OTEL_*``
variables ask for an exporter (``docs/observability.md``, "Traces").

Off (the default) nothing is installed: no tracer provider, no instrumentation, no Kafka middleware. On, the
service gets the SDK's tracer provider (sampler from ``OTEL_TRACES_SAMPLER``/``_ARG``, resource from
``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``), a batch span processor (``OTEL_BSP_*``) per exporter named
by ``OTEL_TRACES_EXPORTER``, FastAPI and httpx instrumentation, and :class:`KafkaTracing` on its broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import Any

from faststream import BaseMiddleware
from faststream.message import StreamMessage
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

#: Set by :func:`configure_tracing` when traces are on: ``shared.kafka.make_broker`` then adds KafkaTracing.
_ENABLED = False
#: What a delivery's messages continue: their correlation id -> the context of the span processing them, so
#: an event a handler publishes for one message of a batch continues that message's trace.
_DELIVERY: ContextVar[dict[str, otel_context.Context] | None] = ContextVar("clinomic_trace_delivery",
                                                                          default=None)
#: FastAPI routes polled by probes and scrapers: never traced.
EXCLUDED_URLS = "/health/.*,/metrics"
#: ``OTEL_TRACES_EXPORTER`` names and their entry points; ``otlp`` is OTLP over HTTP (protobuf), the one
#: OTLP exporter installed.
_EXPORTER_ALIASES = {"otlp": "otlp_proto_http"}


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters the standard variables ask for; none (tracing off) unless ``OTEL_TRACES_EXPORTER`` names
    one or an OTLP endpoint is given (then ``otlp``). ``OTEL_SDK_DISABLED=true`` turns everything off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in named.split(",") if n.strip()]
    return [] if names == ["none"] else [n for n in names if n != "none"]


def kafka_middlewares() -> list[Any]:
    """The broker middleware of traces (:class:`KafkaTracing`) when they are on; none otherwise."""
    return [KafkaTracing] if _ENABLED else []


def configure_tracing(service: str, app: Any = None, env: Mapping[str, str] | None = None) -> bool:
    """Install tracing for this process when the ``OTEL_*`` variables ask for it; returns whether they did.

    ``app`` (a FastAPI application) gets a server span per request; httpx clients propagate the context; brokers
    made afterwards by ``shared.kafka.make_broker`` carry it through Kafka headers. ``OTEL_SERVICE_NAME``
    defaults to ``service``. An unknown exporter name stops the service with a one-line reason.
    """
    global _ENABLED
    env = os.environ if env is None else env
    names = exporter_names(env)
    if not names:
        return False
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_exporter(service, name) for name in names]
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune it
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    if app is not None:
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, exclude_spans=["receive", "send"],  # no span per ASGI message
            excluded_urls=env.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or EXCLUDED_URLS)
    _ENABLED = True
    return True


def _exporter(service: str, name: str) -> Any:
    """An exporter as the SDK finds one: by its entry point (which reads its own ``OTEL_EXPORTER_*``)."""
    found = list(entry_points(group="opentelemetry_traces_exporter", name=_EXPORTER_ALIASES.get(name, name)))
    if not found:
        raise SystemExit(f"{service}: OTEL_TRACES_EXPORTER names {name!r}, which is not installed "
                         "(known: otlp, console, none)")
    return found[0].load()()


def aiohttp_trace_configs() -> list[Any]:
    """``trace_configs`` for an aiohttp session: its requests carry the current trace context (``traceparent``)
    when tracing is on; none otherwise."""
    if not _ENABLED:
        return []
    import aiohttp

    async def inject(session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        propagate.inject(params.headers)

    config = aiohttp.TraceConfig()
    config.on_request_start.append(inject)
    return [config]


def _correlation(headers: Mapping[str, Any]) -> str | None:
    found = headers.get("correlation_id")
    return str(found) if found else None


class KafkaTracing(BaseMiddleware):  # type: ignore[misc]
    """FastStream middleware: each consumed message continues the trace named by its ``traceparent`` header
    with a consumer span, and each publish is a producer span whose context goes out in the headers.

    FastStream's own ``KafkaTelemetryMiddleware`` starts a new trace for every batch delivery (only linking the
    messages' traces), and every subscriber on a screening's path is a batch subscriber: the trace would end
    at the first hop, and with a parent-based sampler the new roots would not even be sampled. Here every
    message of a batch gets its own span in its own trace, and an event published for one of them (matched by
    correlation id, as ``shared.kafka.publish`` sets it) continues that trace. When one recorded trace is among
    a delivery's messages, its span is also the current one (the delivery's log lines carry its ``trace_id``).
    """

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple | list) else (raw,)
        tracer = trace.get_tracer(__name__)
        delivery: dict[str, otel_context.Context] = {}
        spans = []
        for record, headers in zip(records, msg.batch_headers or [msg.headers], strict=False):
            span = tracer.start_span(
                f"{record.topic} process", context=propagate.extract(headers), kind=trace.SpanKind.CONSUMER,
                attributes={"messaging.system": "kafka", "messaging.operation": "process",
                            "messaging.destination.name": record.topic,
                            "messaging.kafka.destination.partition": record.partition,
                            "messaging.kafka.message.offset": record.offset})
            spans.append(span)
            correlation = _correlation(headers)
            if correlation is not None:
                delivery.setdefault(correlation, trace.set_span_in_context(span))
        try:
            with _continuing(delivery, spans):
                return await call_next(msg)
        except Exception as error:
            for span in spans:  # the class only: an exception's message may quote a value of the message
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
            raise
        finally:
            for span in spans:
                span.end()

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        delivery = _DELIVERY.get()
        parent = delivery.get(str(cmd.correlation_id)) if delivery and cmd.correlation_id else None
        with trace.get_tracer(__name__).start_as_current_span(
                f"{cmd.destination} publish", context=parent, kind=trace.SpanKind.PRODUCER,
                attributes={"messaging.system": "kafka", "messaging.operation": "publish",
                            "messaging.destination.name": cmd.destination}):
            propagate.inject(cmd.headers)
            return await call_next(cmd)


@contextmanager
def _continuing(delivery: dict[str, otel_context.Context], spans: list[Any]) -> Iterator[None]:
    """While a delivery is handled: its messages' contexts by correlation id, and as the current context the span
    of the one recorded trace among them (none when they belong to several; unrecorded ones do not count)."""
    token = _DELIVERY.set(delivery)
    recorded = {span.get_span_context().trace_id: span for span in spans if span.is_recording()}
    current = otel_context.attach(trace.set_span_in_context(*recorded.values())) if len(recorded) == 1 else None
    try:
        yield
    finally:
        if current is not None:
            otel_context.detach(current)
        _DELIVERY.reset(token)
