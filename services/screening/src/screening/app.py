"""Wiring of the screening service: settings, database, tenant registry, broker subscribers, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from screening import api, handlers, store
from screening.settings import ScreeningSettings
from shared.crypto import PhiCipher
from shared.db import create_engine, migrate, tenant_schema
from shared.health import health_router
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import TokenVerifier
from shared.web import install_error_handlers


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ScreeningSettings = app.state.settings
    engine = create_engine(settings.dsn, application_name="clinomic-screening")
    await migrate(engine, store.CONTROL_MIGRATIONS, store.CONTROL_SCHEMA)
    registry = store.TenantRegistry(engine)
    await registry.load()
    for org in registry.tenants:  # bring every tenant schema to the newest revision
        await migrate(engine, store.TENANT_MIGRATIONS, tenant_schema(org))
    verifier = TokenVerifier(settings.auth_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    await verifier.refresh()
    await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)
    broker = make_broker(settings, "clinomic-screening")
    handlers.register(broker, settings, registry, settings.record_batch_size)
    await broker.start()
    app.state.registry = registry
    app.state.token_verifier = verifier
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        await broker.stop()
        await engine.dispose()


def create_app() -> FastAPI:
    settings = load_or_exit(ScreeningSettings, "screening")
    configure_logging("screening", settings.log_level)
    app = FastAPI(title="Clinomic screening", lifespan=lifespan, docs_url="/docs" if settings.debug else None)
    app.state.settings = settings
    app.state.cipher = PhiCipher(settings.phi_keys())
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(health_router(lambda: {"ready": app.state.ready}))
    return app
