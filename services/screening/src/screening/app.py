"""Wiring of the screening service: settings, database, tenant registry, PHI keys, broker, outbox, routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import Gauge

from screening import analytics, analytics_stream, api, batch, domain, handlers, records_api, store
from screening.outbox import Outbox
from screening.phi import PhiVault
from screening.settings import ScreeningSettings
from shared import health, metrics, tracing
from shared.crypto import BlindIndex, PhiCipher
from shared.db import create_engine, in_schema, migrate, tenant_schema
from shared.events.records import RECORDS_TOPIC
from shared.events.topics import Topic
from shared.health import health_router
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import TokenVerifier, watch_revocations
from shared.web import install_error_handlers

log = logging.getLogger(__name__)
OUTBOX_SIZE = Gauge("clinomic_screening_outbox_size", "Record events written and not published yet")
OUTBOX_SQL = "SELECT count(*) AS size FROM screening.outbox"


class StartupRefused(RuntimeError):
    """The service must not become ready (e.g. stored PHI needs a key the configuration lacks)."""


async def check_phi_keys(registry: store.TenantRegistry, cipher: PhiCipher) -> None:
    """Fail closed: refuse to start when stored names or consent texts were encrypted with a key we lack."""
    used: dict[str | None, int] = {}
    for org in registry.tenants:
        async with in_schema(registry.engine, tenant_schema(org)) as conn:
            for kid, count in (await store.key_usage(conn)).items():
                used[kid] = used.get(kid, 0) + count
    missing = domain.missing_keys(used, cipher.key_ids)
    if missing:
        raise StartupRefused(
            f"MASTER_ENCRYPTION_KEY lacks {len(missing)} key(s) that stored PHI is encrypted with "
            f"(key ids {', '.join(sorted(missing))}); add them (newest first) or finish the rotation first")
    if used.get(None):
        log.warning("%d stored PHI values have no key id yet; run `clinomic-screening rotate-keys`", used[None])


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ScreeningSettings = app.state.settings
    engine = create_engine(settings.dsn, application_name="clinomic-screening")
    await migrate(engine, store.CONTROL_MIGRATIONS, store.CONTROL_SCHEMA)
    registry = store.TenantRegistry(engine)
    await registry.load()
    for org in registry.tenants:  # bring every tenant schema to the newest revision
        await migrate(engine, store.TENANT_MIGRATIONS, tenant_schema(org))
    try:
        await check_phi_keys(registry, app.state.vault.cipher)
    except StartupRefused as refused:
        log.error("refusing to start: %s", refused)
        await engine.dispose()
        raise
    verifier = TokenVerifier(settings.auth_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    await verifier.refresh()
    await ensure_topics(settings.kafka_bootstrap_servers, [*(t.value for t in Topic), RECORDS_TOPIC],
                        partitions=settings.kafka_topic_partitions)
    broker = make_broker(settings, "clinomic-screening")
    app.state.classify_coming = handlers.register(broker, settings, registry, settings.record_batch_size)
    analytics_stream.register(broker, settings, registry)  # de-identified screenings for analytics
    watch_revocations(broker, verifier, settings)  # identity: deactivations, revoked sessions
    await broker.start()
    outbox = Outbox(engine, broker)
    relay = asyncio.create_task(outbox.relay_forever(settings.outbox_redeliver_after_seconds))
    app.state.registry = registry
    app.state.outbox = outbox
    app.state.token_verifier = verifier
    app.state.metric_samplers += [metrics.consumer_lag(broker),
                                  metrics.query_gauges(engine, OUTBOX_SQL, {"size": OUTBOX_SIZE})]
    app.state.checks = {"database": health.database(engine), "broker": health.broker(broker)}
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        app.state.checks = None
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        await outbox.drain()
        await broker.stop()
        await engine.dispose()


def create_app() -> FastAPI:
    settings = load_or_exit(ScreeningSettings, "screening")
    configure_logging("screening", settings.log_level)
    app = FastAPI(title="Clinomic screening", lifespan=lifespan, docs_url="/docs" if settings.debug else None)
    app.state.settings = settings
    app.state.vault = PhiVault(PhiCipher(settings.phi_keys()), BlindIndex(settings.blind_index_key()))
    app.state.ready = False
    app.state.checks = None
    app.state.classify_coming = lambda: None  # until the recorder is subscribed (see lifespan)
    install_error_handlers(app)
    app.state.metric_samplers = metrics.install(app)  # /metrics answers the service credential only
    app.include_router(api.router)
    app.include_router(records_api.router)
    app.include_router(batch.router)
    app.include_router(analytics.router)
    app.include_router(health_router(lambda: app.state.checks))
    tracing.configure_tracing("screening", app)  # off unless OTEL_* ask for it (docs/observability.md)
    return app
