"""Wiring of the auth service: settings, database, broker, signing keys, revocations, routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from auth import api, store
from auth.keys import SigningKeys
from auth.service import IdentityService
from auth.settings import AuthSettings
from shared import health, metrics, tracing
from shared.db import create_engine, migrate
from shared.health import health_router
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import TokenVerifier, watch_revocations
from shared.web import install_error_handlers

MIGRATIONS = Path(__file__).parent / "migrations"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: AuthSettings = app.state.settings
    assert settings.jwt_private_key is not None
    engine = create_engine(settings.dsn, application_name="clinomic-auth", search_path=store.SCHEMA)
    await migrate(engine, MIGRATIONS, store.SCHEMA)
    await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)
    broker = make_broker(settings, "clinomic-auth")
    keys = SigningKeys.from_pem(settings.jwt_private_key.get_secret_value())
    verifier = TokenVerifier(settings.auth_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    verifier.load_jwks(keys.jwks())
    identity = IdentityService(settings, engine, broker, keys, verifier)
    # This service reads its own database for the snapshot and hears other replicas through the events.
    verifier.use_snapshot_source(identity.revocation_snapshot)
    watch_revocations(broker, verifier, settings)
    await broker.start()
    await verifier.sync_revocations()
    housekeeping = asyncio.create_task(identity.housekeeping_forever())
    app.state.signing_keys = keys
    app.state.token_verifier = verifier
    app.state.identity = identity
    app.state.metric_samplers.append(metrics.consumer_lag(broker))
    app.state.checks = {"database": health.database(engine), "broker": health.broker(broker)}
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        app.state.checks = None
        housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await housekeeping
        await broker.stop()
        await engine.dispose()


def create_app() -> FastAPI:
    settings = load_or_exit(AuthSettings, "auth")
    configure_logging("auth", settings.log_level)
    app = FastAPI(title="Clinomic auth", lifespan=lifespan, docs_url="/docs" if settings.debug else None)
    app.state.settings = settings
    app.state.ready = False
    app.state.checks = None
    install_error_handlers(app)
    app.state.metric_samplers = metrics.install(app)  # /metrics answers the service credential only
    api.install_identity_errors(app)
    app.include_router(api.router)
    app.include_router(api.internal)
    app.include_router(health_router(lambda: app.state.checks))
    tracing.configure_tracing("auth", app)  # off unless OTEL_* ask for it (docs/observability.md)
    return app
