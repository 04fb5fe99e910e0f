"""Wiring of the auth service: settings, database, broker, signing key, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from auth import api, store
from auth.keys import SigningKey
from auth.service import IdentityService
from auth.settings import AuthSettings
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
    settings: AuthSettings = app.state.settings
    assert settings.jwt_private_key is not None
    engine = create_engine(settings.dsn, application_name="clinomic-auth", search_path=store.SCHEMA)
    await migrate(engine, MIGRATIONS, store.SCHEMA)
    await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)
    broker = make_broker(settings, "clinomic-auth")
    await broker.start()
    key = SigningKey.from_pem(settings.jwt_private_key.get_secret_value())
    verifier = TokenVerifier(settings.auth_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    verifier.load_jwks({"keys": [key.public_jwk()]})
    app.state.signing_key = key
    app.state.token_verifier = verifier
    app.state.identity = IdentityService(settings, engine, broker, key)
    app.state.ready = True
    try:
        yield
    finally:
        await broker.stop()
        await engine.dispose()


def create_app() -> FastAPI:
    settings = load_or_exit(AuthSettings, "auth")
    configure_logging("auth", settings.log_level)
    app = FastAPI(title="Clinomic auth", lifespan=lifespan, docs_url="/docs" if settings.debug else None)
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(health_router(lambda: {"ready": app.state.ready}))
    return app
