"""Append-only in the database: the triggers refuse changes, and the service's role cannot get around them."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.app import StartupRefused, check_database
from audit.store import TABLES
from devstack.stack import Platform
from shared.db import create_engine


async def refused(engine: AsyncEngine, sql: str) -> str:
    """The error PostgreSQL answers ``sql`` with (the transaction is rolled back either way)."""
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    return str(caught.value.orig)


@pytest.mark.parametrize("table", TABLES)
async def test_the_runtime_role_cannot_disable_the_triggers(runtime_engine: AsyncEngine, table: str) -> None:
    for sql in (
        f"ALTER TABLE audit.{table} DISABLE TRIGGER ALL",
        f"ALTER TABLE audit.{table} DISABLE TRIGGER {table}_append_only",
        f"DROP TRIGGER {table}_append_only ON audit.{table}",
        "ALTER FUNCTION audit.refuse_ledger_change() RENAME TO harmless",
    ):
        assert "must be owner" in await refused(runtime_engine, sql), sql


@pytest.mark.parametrize("table", TABLES)
async def test_the_runtime_role_cannot_update_delete_or_truncate(
    runtime_engine: AsyncEngine, table: str
) -> None:
    column = "chain_id"
    for sql in (
        f"UPDATE audit.{table} SET {column} = {column}",
        f"DELETE FROM audit.{table}",
        f"TRUNCATE audit.{table}",
    ):
        assert "permission denied" in await refused(runtime_engine, sql), sql


async def test_the_runtime_role_cannot_take_on_another_role(runtime_engine: AsyncEngine) -> None:
    async with runtime_engine.connect() as conn:
        owner = await conn.scalar(
            text("SELECT tableowner FROM pg_tables WHERE schemaname = 'audit' AND tablename = 'entries'")
        )
    assert "permission denied" in await refused(runtime_engine, f'SET ROLE "{owner}"')
    assert "permission denied" in await refused(runtime_engine, "SET session_replication_role = replica")


async def test_the_triggers_refuse_changes_even_from_a_superuser(engine: AsyncEngine) -> None:
    for sql in (
        "UPDATE audit.entries SET event_type = event_type WHERE seq = 1",
        "DELETE FROM audit.merkle_nodes WHERE level = 1 AND idx = 0",
        "TRUNCATE audit.tree_heads",
    ):
        assert "append-only" in await refused(engine, sql), sql


async def test_the_service_refuses_to_start_with_a_role_that_could_change_the_ledger(
    platform: Platform,
) -> None:
    privileged = create_engine(
        platform.env["DATABASE_URL"], application_name="audit-test", search_path="audit"
    )
    try:
        with pytest.raises(StartupRefused, match="superuser"):
            await check_database(privileged)
    finally:
        await privileged.dispose()


async def test_the_service_accepts_its_own_role(runtime_engine: AsyncEngine) -> None:
    await check_database(runtime_engine)


async def test_given_the_owners_connection_the_service_creates_its_runtime_role(platform: Platform) -> None:
    """What a single-container deployment relies on: the owner's URL next to AUDIT_DATABASE_URL."""
    from sqlalchemy.engine import make_url

    from audit.app import prepare_as_owner

    role = f"clinomic_audit_t{uuid.uuid4().hex[:8]}"
    admin = platform.env["DATABASE_URL"]
    runtime = make_url(admin).set(username=role, password="a-runtime-password").render_as_string(False)
    await prepare_as_owner(admin, runtime)
    engine = create_engine(runtime, application_name="audit-test", search_path="audit")
    try:
        await check_database(engine)
    finally:
        await engine.dispose()
        owner = create_engine(admin, application_name="audit-test")
        async with owner.begin() as conn:
            await conn.execute(text(f'DROP ROLE "{role}"'))
        await owner.dispose()
