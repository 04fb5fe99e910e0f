"""PostgreSQL plumbing: engines, per-service schemas, tenant schemas and Alembic migrations without env.py.

Each service owns one schema (``auth``, ``audit``, ``gateway``, ``screening``) and the screening service owns
one more per organisation (``tenant_<org id hex>``). Connections start with a search path that names no
schema, so a query that forgot its tenant fails instead of reading someone else's rows.

TLS to the server follows libpq's ``PGSSLMODE`` and ``PGSSLROOTCERT`` (also ``PGSSLCERT``/``PGSSLKEY``), which
asyncpg reads on every connection; ``CommonSettings`` checks them at start (``docs/deployment.md``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

#: A schema that never exists: unqualified names resolve to nothing until a tenant is chosen.
NO_SCHEMA = "clinomic_no_tenant_selected"
_SCHEMA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def create_engine(dsn: str, *, application_name: str, search_path: str = NO_SCHEMA,
                  pool_size: int = 10) -> AsyncEngine:
    """An engine whose connections resolve unqualified names in ``search_path`` only.

    A service that owns one schema passes it; the screening service keeps the default, which names no
    schema, and chooses a tenant per transaction with :func:`in_schema`. Connections are recycled rather
    than pinged before each use: a ping is a round trip on every request.
    """
    return create_async_engine(
        dsn,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": application_name, "search_path": search_path}},
    )


def tenant_schema(org_id: uuid.UUID) -> str:
    """The schema that holds one organisation's clinical records."""
    return f"tenant_{org_id.hex}"


def quote_schema(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"not a valid schema name: {schema!r}")
    return f'"{schema}"'


@asynccontextmanager
async def in_schema(engine: AsyncEngine, schema: str) -> AsyncIterator[AsyncConnection]:
    """A transaction whose unqualified table names resolve in ``schema`` only."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT set_config('search_path', :schema, true)"), {"schema": schema})
        yield conn


async def ensure_database(dsn: str) -> None:
    """Create the database named in ``dsn`` if the server does not have it yet."""
    url = make_url(dsn)
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database})
            if not exists:
                await conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    finally:
        await admin.dispose()


def _script(migrations: Path) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    return ScriptDirectory.from_config(config)


def _upgrade(conn: Connection, migrations: Path, schema: str) -> None:
    script = _script(migrations)
    # Serialise concurrent migrators of the same schema (several replicas starting at once, or a new
    # organisation's event racing its first request). The lock comes before CREATE SCHEMA: two
    # transactions creating one new schema collide on the catalog's unique index despite IF NOT EXISTS.
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_schema(schema)}")
    conn.exec_driver_sql(f"SET LOCAL search_path TO {quote_schema(schema)}")
    with EnvironmentContext(
        Config(),
        script,
        fn=lambda rev, _ctx: script._upgrade_revs("head", rev),
        destination_rev="head",
    ) as env:
        env.configure(connection=conn, version_table_schema=schema, transactional_ddl=True)
        env.run_migrations()


async def migrate(engine: AsyncEngine, migrations: Path, schema: str) -> None:
    """Bring ``schema`` to the newest revision of the migration scripts in ``migrations``."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, migrations, schema)


async def schema_revision(engine: AsyncEngine, schema: str) -> str | None:
    def current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn, opts={"version_table_schema": schema}).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(current)


def head_revision(migrations: Path) -> str | None:
    """The newest revision of the migration scripts in ``migrations``."""
    return _script(migrations).get_current_head()
