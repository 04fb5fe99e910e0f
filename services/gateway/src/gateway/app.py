"""Wiring of the gateway: settings, intake store, broker, token verification, limits, routes, middleware."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import Gauge

from gateway import api, batch_api, handlers, store
from gateway.intake import Intake
from gateway.middleware import EdgeMiddleware
from gateway.outcomes import Outcomes
from gateway.ratelimit import RateLimits
from gateway.settings import GatewaySettings
from shared import health, metrics, tracing
from shared.crypto import PhiCipher
from shared.db import create_engine, migrate
from shared.health import health_router
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import TokenVerifier, watch_revocations
from shared.web import install_error_handlers

MIGRATIONS = Path(__file__).parent / "migrations"
INTAKE_BACKLOG = Gauge("clinomic_gateway_intake_backlog",
                       "Screenings accepted (committed to the intake) and not recorded yet")
BATCH_BACKLOG = Gauge("clinomic_gateway_batch_chunks_backlog",
                      "Bulk screening chunks accepted and not recorded yet")
BACKLOG_SQL = ("SELECT (SELECT count(*) FROM screening_intake WHERE recorded_at IS NULL) AS screenings, "
               "(SELECT count(*) FROM batch_chunks WHERE recorded_at IS NULL) AS chunks")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    engine = create_engine(settings.dsn, application_name="clinomic-gateway", search_path=store.SCHEMA, pool_size=20)
    await migrate(engine, MIGRATIONS, store.SCHEMA)
    verifier = TokenVerifier(settings.auth_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    await verifier.refresh()
    await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)
    broker = make_broker(settings, "clinomic-gateway")
    outcomes = Outcomes()
    handlers.register(broker, settings, outcomes, engine)
    watch_revocations(broker, verifier, settings)  # identity: deactivations, revoked sessions
    await broker.start()
    intake = Intake(engine, broker, PhiCipher(settings.phi_keys()), outcomes)
    redelivery = asyncio.create_task(intake.redeliver_forever(settings.redeliver_after_seconds))
    batch_intake = batch_api.BatchIntake(engine, broker)
    batch_redelivery = asyncio.create_task(batch_intake.redeliver_forever(settings.batch_redeliver_after_seconds))
    app.state.engine = engine
    app.state.token_verifier = verifier
    app.state.intake = intake
    app.state.batch_intake = batch_intake
    # Both clients present the service credential (internal routes demand it) and drop idle connections after
    # 4 s, before the services' (uvicorn's) 5 s keep-alive does; gateway.proxy also retries an idempotent
    # request once when a reused connection turns out closed.
    credential = app.state.service_credential.headers()
    app.state.http = httpx.AsyncClient(timeout=30.0, headers=credential,
                                       limits=httpx.Limits(max_connections=200, keepalive_expiry=4.0))
    # The admission check of every classify (gateway.admission), where httpx's pool cost too much CPU.
    app.state.admissions = aiohttp.ClientSession(
        headers=credential, connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=4.0),
        trace_configs=tracing.aiohttp_trace_configs())  # the admission continues the request's trace
    app.state.metric_samplers += [
        metrics.consumer_lag(broker),
        metrics.query_gauges(engine, BACKLOG_SQL, {"screenings": INTAKE_BACKLOG, "chunks": BATCH_BACKLOG})]
    app.state.checks = {"database": health.database(engine), "broker": health.broker(broker)}
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        app.state.checks = None
        for loop in (redelivery, batch_redelivery):
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await app.state.http.aclose()
        await app.state.admissions.close()
        await broker.stop()
        await engine.dispose()


def create_app() -> FastAPI:
    settings = load_or_exit(GatewaySettings, "gateway")
    configure_logging("gateway", settings.log_level)
    app = FastAPI(
        title="Clinomic API",
        description="Vitamin B12 deficiency screening from routine blood counts.",
        lifespan=lifespan,
        # Interactive docs and the schema only in development (DEBUG, which ./run sets); production serves none.
        docs_url="/docs" if settings.debug else None, redoc_url="/redoc" if settings.debug else None,
        openapi_url="/openapi.json" if settings.debug else None,
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.checks = None
    app.state.rate_limits = RateLimits(
        {"login": settings.rate_limit_login, "login_account": settings.rate_limit_login_account,
         "refresh": settings.rate_limit_refresh,
         "classify": settings.rate_limit_classify, "default": settings.rate_limit_default},
        settings.redis_url,
    )
    install_error_handlers(app)
    app.state.metric_samplers = metrics.install(app)  # /metrics answers the service credential only
    app.include_router(batch_api.router)  # before api.router, whose /api/screening/{rest} would take its paths
    app.include_router(api.router)
    app.include_router(health_router(lambda: app.state.checks))
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_credentials=False,
                       allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                       allow_headers=["Authorization", "Content-Type", "Idempotency-Key"])
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes,
                       body_limits={batch_api.UPLOAD_PATH: settings.batch_max_body_bytes},
                       trusted_proxies=settings.trusted_proxies())
    tracing.configure_tracing("gateway", app)  # off unless OTEL_* ask for it (docs/observability.md)
    return app
