"""Wiring of the audit service: settings, database role checks, the all-topics subscriber, the tree-head
publisher, routes.

The service connects with a role that may only SELECT and INSERT the ledger (``AUDIT_DATABASE_URL``) and
refuses to start with one that could change it (superuser, owner, CREATEROLE, UPDATE/DELETE/TRUNCATE/TRIGGER
rights) or when the schema is not migrated. Migrations run as the ledger's owner: at start when
``AUDIT_MIGRATION_DATABASE_URL`` is given (that connection is closed right after), otherwise beforehand with
``clinomic-audit migrate`` (the dev stack does this).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from prometheus_client import Gauge
from shared import health, metrics, tracing
from shared.db import create_engine, migrate, schema_revision
from shared.health import health_router
from shared.kafka import ensure_topics, make_broker
from shared.observability import configure_logging
from shared.settings import load_or_exit
from shared.tokens import TokenVerifier, watch_revocations
from shared.web import install_error_handlers

from audit import api, checker, handlers, store, treeheads
from audit.settings import AuditSettings

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)
CHAINS = Gauge("clinomic_audit_chains", "Hash chains of the ledger (one per organisation, and the platform's)")
ENTRIES = Gauge("clinomic_audit_entries", "Entries of the ledger: the lengths of all chains together")
LONGEST_CHAIN = Gauge("clinomic_audit_longest_chain_entries", "Length of the longest chain")
#: Each chain's length is its last sequence number (one index probe per chain).
CHAINS_SQL = ("SELECT count(*) AS chains, coalesce(sum(h.seq), 0) AS entries, coalesce(max(h.seq), 0) AS longest "
              "FROM chains c LEFT JOIN LATERAL (SELECT seq FROM entries WHERE chain_id = c.chain_id "
              "ORDER BY seq DESC LIMIT 1) h ON true")


class StartupRefused(RuntimeError):
    """The service must not run like this; the message is one line."""


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


async def migrate_as_owner(dsn: str) -> None:
    """Apply the audit migrations with the owner's connection (then drop it)."""
    owner = create_engine(
        dsn, application_name="clinomic-audit-migrate", search_path=store.SCHEMA, pool_size=1
    )
    try:
        await migrate(owner, MIGRATIONS, store.SCHEMA)
    finally:
        await owner.dispose()


async def prepare_as_owner(owner_dsn: str, runtime_dsn: str) -> None:
    """With the owner's connection: make sure the runtime login role exists (with the password in its URL)
    and is in the writer group, then migrate. A convenience for single-container deployments; a separate
    deploy step (``clinomic-audit provision`` and ``migrate``) keeps the owner's password out of the
    service."""
    from sqlalchemy.engine import make_url

    from audit.ops import provision_roles

    runtime, owner = make_url(runtime_dsn), make_url(owner_dsn)
    if runtime.username and runtime.username != owner.username:
        await provision_roles(owner_dsn, runtime.username, runtime.password, align_existing=False)
    await migrate_as_owner(owner_dsn)


async def check_database(engine: object) -> None:
    """Refuse a privileged role or an unmigrated schema, with one line saying why."""
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        problems = await store.role_problems(conn)
    if problems:
        raise StartupRefused(
            "the audit ledger's database role must only SELECT and INSERT: " + "; ".join(problems)
        )
    current, wanted = await schema_revision(engine, store.SCHEMA), head_revision()  # type: ignore[arg-type]
    if current != wanted:
        raise StartupRefused(
            f"the audit schema is at revision {current}, not {wanted}: run `clinomic-audit migrate`"
            " with the owner's connection (or set AUDIT_MIGRATION_DATABASE_URL)"
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: AuditSettings = app.state.settings
    if settings.migration_dsn:
        await prepare_as_owner(settings.migration_dsn, settings.runtime_dsn)
    engine = create_engine(settings.runtime_dsn, application_name="clinomic-audit", search_path=store.SCHEMA)
    try:
        await check_database(engine)
    except StartupRefused as refused:
        log.critical("audit: refusing to start: %s", refused)
        await engine.dispose()
        raise
    verifier = TokenVerifier(
        settings.auth_jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    await verifier.refresh()
    await ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_topic_partitions)
    broker = make_broker(settings, "clinomic-audit")
    appender = handlers.Appender(engine, settings.audit_key_id, settings.hmac_key())
    handlers.register(broker, settings, appender, settings.append_batch_size)
    watch_revocations(broker, verifier, settings)  # identity: deactivations, revoked sessions
    head_log = treeheads.TreeHeadLog(settings.audit_tree_head_dir)
    if not head_log.enabled:
        log.warning("AUDIT_TREE_HEAD_DIR is not set: signed tree heads are kept only in the database")
    publisher = treeheads.Publisher(
        engine,
        settings.tree_head_key(),
        settings.tree_head_public_keys(),
        settings.hmac_keys(),
        head_log,
        interval=settings.audit_tree_head_interval_seconds,
        max_age=settings.audit_tree_head_max_age_seconds,
    )
    await broker.start()
    app.state.engine = engine
    app.state.hmac_keys = settings.hmac_keys()
    app.state.public_keys = settings.tree_head_public_keys()
    app.state.head_log = head_log
    app.state.publisher = publisher
    app.state.verifier_pool = checker.VerifierPool(settings.runtime_dsn, settings.audit_verify_workers)
    app.state.token_verifier = verifier
    publishing = asyncio.create_task(publisher.run(), name="tree-head-publisher")
    app.state.metric_samplers += [metrics.consumer_lag(broker), metrics.query_gauges(engine, CHAINS_SQL, {
        "chains": CHAINS, "entries": ENTRIES, "longest": LONGEST_CHAIN})]
    app.state.checks = {"database": health.database(engine), "broker": health.broker(broker)}
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        app.state.checks = None
        await treeheads.stop(publishing)
        app.state.verifier_pool.close()
        await broker.stop()
        await engine.dispose()


def create_app() -> FastAPI:
    settings = load_or_exit(AuditSettings, "audit")
    configure_logging("audit", settings.log_level)
    app = FastAPI(title="Clinomic audit", lifespan=lifespan, docs_url="/docs" if settings.debug else None)
    app.state.settings = settings
    app.state.ready = False
    app.state.checks = None
    install_error_handlers(app)
    app.state.metric_samplers = metrics.install(app)  # /metrics answers the service credential only
    app.include_router(api.router)
    app.include_router(health_router(lambda: app.state.checks))
    tracing.configure_tracing("audit", app)  # off unless OTEL_* ask for it (docs/observability.md)
    return app
