"""Wiring of the audit service: settings, database, the all-topics subscriber, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from audit import api, handlers, store
from audit.settings import AuditSettings
from shared.db import create_engine, migrate
from shared.health import health_router
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import TokenVerifier
from shared.web import install_error_handlers

MIGRATIONS = Path(__file__).parent / "migrations"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: AuditSettings = app.state.settings
    engine = create_engine(settings.dsn, application_name="clinomic-audit", search_path=store.SCHEMA)
    await migrate(engine, MIGRATIONS, store.SCHEMA)
    verifier = TokenVerifier(settings.auth_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    await verifier.refresh()
    await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)
    broker = make_broker(settings, "clinomic-audit")
    appender = handlers.Appender(engine, settings.audit_key_id, settings.hmac_key())
    handlers.register(broker, settings, appender, settings.append_batch_size)
    await broker.start()
    app.state.engine = engine
    app.state.hmac_keys = {settings.audit_key_id: settings.hmac_key()}
    app.state.token_verifier = verifier
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        await broker.stop()
        await engine.dispose()


def create_app() -> FastAPI:
    settings = load_or_exit(AuditSettings, "audit")
    configure_logging("audit", settings.log_level)
    app = FastAPI(title="Clinomic audit", lifespan=lifespan, docs_url="/docs" if settings.debug else None)
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(health_router(lambda: {"ready": app.state.ready}))
    return app
