"""Prometheus metrics of every service: HTTP and Kafka instrumentation, consumer lag, figures sampled from the
database when scraped, and the ``/metrics`` endpoint that answers only the platform's own services.

Labels are bounded by construction: route templates (never raw paths), topics, consumer groups (without the
per-process suffix of :func:`shared.kafka.every_event_from_now`), exception class names. No tenant id, user id
or screening id is ever a label, so the metrics carry no tenant data (``docs/observability.md``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping

from fastapi import FastAPI, Request
from fastapi.responses import Response
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.observability import bind_request, correlation_id
from shared.tokens import SERVICE_TOKEN_HEADER, ServiceCredential

log = logging.getLogger(__name__)
access_log = logging.getLogger("clinomic.access")

#: How long one scrape waits for a sampled figure (a database count, a consumer position) before serving the
#: figures it has: a scrape must answer even while a dependency is away.
SAMPLE_TIMEOUT_SECONDS = 2.0
#: Route label of a request no route answered (a 404, or a refusal before routing): raw paths are unbounded.
UNMATCHED = "unmatched"
#: Status label of a request abandoned before any response (``shared.web.EdgeAbort``: the gateway's body limit,
#: whose 413 an outer middleware sends); an error inside the app is answered 500 by ``ServiceEdge`` instead.
ABORTED = "aborted"
CORRELATION_HEADER = b"x-correlation-id"

Sampler = Callable[[], Awaitable[None]]


HTTP_REQUESTS = Counter("clinomic_http_requests", "HTTP requests answered, by method, route template and status",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("clinomic_http_request_duration_seconds",
                         "Time from request to the end of the response, by method and route template",
                         ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CONSUMER_LAG = Gauge("clinomic_kafka_consumer_lag",
                     "Messages on the assigned partitions not consumed yet (log end minus position), when scraped",
                     ["group", "topic"])
DEAD_LETTERS = Counter("clinomic_dead_letters",
                       "Messages a consumer group gave up on (sent to clinomic.deadletter), by exception class",
                       ["group", "topic", "reason_class"])


# -- Kafka ------------------------------------------------------------------------------------------------------

def kafka_middleware(client_id: str) -> KafkaPrometheusMiddleware:
    """FastStream's own instrumentation: received, processed (by status) and published messages, handler and
    publish latency per topic (``faststream_*``), labelled with the service's client id as ``app_name``."""
    return KafkaPrometheusMiddleware(registry=REGISTRY, app_name=client_id)


_PROCESS_SUFFIX = re.compile(r"-[0-9a-f]{32}$")


def group_label(group: str) -> str:
    """A consumer group as a label: a process's own group (``name-<uuid hex>``) is named by its ``name``."""
    return _PROCESS_SUFFIX.sub("", group)


def lag_by_topic(partitions: Iterable[tuple[str, int | None, int]]) -> dict[str, int]:
    """Per topic, the sum over its partitions ``(topic, log end, position)`` of what is left to consume; a
    partition whose log end is not known yet (no fetch answered) counts nothing."""
    lag: dict[str, int] = defaultdict(int)
    for topic, end, position in partitions:
        lag[topic] += max(end - position, 0) if end is not None else 0
    return dict(lag)


def consumer_lag(broker: KafkaBroker) -> Sampler:
    """Samples :data:`CONSUMER_LAG` of every subscriber of ``broker`` from its consumer's own view (the log end of
    its last fetch, its position): no request to the broker."""

    async def sample() -> None:
        figures: dict[tuple[str, str], int] = {}
        for subscriber in list(broker.subscribers):
            consumer, group = getattr(subscriber, "consumer", None), getattr(subscriber, "group_id", None)
            if consumer is None or not group:
                continue
            partitions = [(tp.topic, consumer.highwater(tp), await consumer.position(tp))
                          for tp in consumer.assignment()]
            for topic, lag in lag_by_topic(partitions).items():
                key = (group_label(group), topic)
                figures[key] = figures.get(key, 0) + lag
        CONSUMER_LAG.clear()  # partitions move between replicas: only what this process holds now
        for (group, topic), lag in figures.items():
            CONSUMER_LAG.labels(group, topic).set(lag)

    return sample


# -- figures sampled from the database ---------------------------------------------------------------------------

def query_gauges(engine: AsyncEngine, sql: str, gauges: Mapping[str, Gauge]) -> Sampler:
    """Sets each gauge to its column of the one row ``sql`` returns (counts kept in the database, such as a
    backlog, read when scraped rather than tracked in memory, so every replica reports the same truth)."""
    statement = text(sql)

    async def sample() -> None:
        async with engine.connect() as conn:
            row = (await conn.execute(statement)).mappings().one()
        for column, target in gauges.items():
            target.set(float(row[column] or 0))

    return sample


# -- HTTP ---------------------------------------------------------------------------------------------------------

def route_of(scope: Scope, default: str = UNMATCHED) -> str:
    """The template of the route that answered (``/api/patients/{rest}``), else ``default``."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or default


def incoming_correlation(value: bytes | None) -> str | None:
    """A caller's ``X-Correlation-ID`` when it is a UUID (what envelopes carry), else None (a new one is made):
    anything else would let a caller write arbitrary text into every log line of its request."""
    if not value or len(value) > 64:
        return None
    try:
        return str(uuid.UUID(value.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        return None


class HttpInstrumentation:
    """Per request: a correlation id bound to every log line (echoed as ``X-Correlation-ID``), the request counted
    and timed by route template, and one access line (method, route template, status, duration; never the raw path
    or query, which may carry names).

    Pure ASGI; installed inside the routing of the app so the matched route is visible once the app returns.
    ``route`` names a single route it wraps (the inference worker's routes, which have no router).
    """

    def __init__(self, app: ASGIApp, route: str = UNMATCHED) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = ABORTED
        headers = dict(scope.get("headers") or ())
        reset = bind_request(incoming_correlation(headers.get(CORRELATION_HEADER)))

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
                # read now: the request may have joined the correlation of the events it caused
                message["headers"] = [*message.get("headers", ()),
                                      (CORRELATION_HEADER, (correlation_id() or "").encode())]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            elapsed = time.perf_counter() - started
            route, method = route_of(scope, self.route), scope["method"]
            HTTP_REQUESTS.labels(method, route, status).inc()
            HTTP_SECONDS.labels(method, route).observe(elapsed)
            access_log.info("%s %s %s %.1f ms", method, route, status, elapsed * 1000)
            reset()


# -- the endpoint -------------------------------------------------------------------------------------------------

def _presented(scope: Scope) -> str | None:
    """The service credential in ``X-Service-Token``, or as ``Authorization: Bearer`` (what Prometheus sends)."""
    headers = dict(scope.get("headers") or ())
    token = headers.get(SERVICE_TOKEN_HEADER.encode())
    if token is None:
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return token.decode("latin-1")


async def run_samplers(samplers: Iterable[Sampler], timeout: float = SAMPLE_TIMEOUT_SECONDS) -> None:
    """Refresh the sampled figures concurrently; one that fails or is late keeps its last value (logged)."""
    async def run(sampler: Sampler) -> None:
        try:
            await asyncio.wait_for(sampler(), timeout)
        except Exception as exc:  # a scrape answers with what it has
            log.warning("a metrics sample failed: %s", type(exc).__name__)

    await asyncio.gather(*(run(s) for s in samplers))


class MetricsEndpoint:
    """``GET /metrics``: the Prometheus exposition (text or OpenMetrics, as the scraper asks) of this process,
    after refreshing the sampled figures; 401 without the service credential. An ASGI app (the inference
    worker's route), also served as a FastAPI route by :func:`install`."""

    def __init__(self, credential: Callable[[], ServiceCredential], samplers: list[Sampler],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.credential = credential
        self.samplers = samplers
        self.registry = registry

    async def answer(self, scope: Scope) -> tuple[int, bytes, str]:
        """Status, body and content type."""
        if not self.credential().accepts(_presented(scope)):
            return 401, b'{"detail": "service credential required"}', "application/json"
        await run_samplers(self.samplers)
        encoder, content_type = choose_encoder(dict(scope.get("headers") or ()).get(b"accept", b"").decode())
        return 200, encoder(self.registry), content_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, content_type = await self.answer(scope)
        await Response(body, status, media_type=content_type)(scope, receive, send)


def install(app: FastAPI) -> list[Sampler]:
    """Instrument a FastAPI app and serve ``/metrics``; returns the list the lifespan appends its samplers to."""
    samplers: list[Sampler] = []
    endpoint = MetricsEndpoint(lambda: app.state.service_credential, samplers)
    app.add_middleware(HttpInstrumentation)

    @app.get("/metrics", include_in_schema=False)
    async def exposition(request: Request) -> Response:
        status, body, content_type = await endpoint.answer(request.scope)
        return Response(body, status, media_type=content_type)

    return samplers
