"""A signed tree head that was written out but never reached the database is stored before the next one.

The publisher writes a head to the external log first and to the database right after. When the database goes
away in between (an outage, a failover, the process killed), the head must not end up looking removed from the
database once a newer head is stored, which verification reports as tampering. The ledger here is a database of
its own, so the platform's running publisher never touches it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from audit import checker, store
from audit.bench_service import make_messages
from audit.handlers import Appender
from audit.ledger import chain_id_for_tenant
from audit.ops import prepare_database
from audit.treeheads import Publisher, TreeHeadLog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack.stack import Platform
from shared.db import create_engine

DATABASE, ROLE = "clinomic_audit_head_outage", "clinomic_audit_head_outage"
KEYS = {"k": b"head-outage-hmac-key-0123456789abcdef"}
SIGNER = Ed25519PrivateKey.generate()
TENANT = str(uuid.UUID(int=17))
CHAIN = chain_id_for_tenant(TENANT)


class Ledger:
    def __init__(self, engine: AsyncEngine, admin_dsn: str) -> None:
        self.engine = engine
        self.admin_dsn = admin_dsn
        self.appended = 0

    async def append(self, count: int) -> None:
        rng = random.Random(self.appended)
        await Appender(self.engine, "k", KEYS["k"]).append_raw(
            make_messages(rng, TENANT, [str(uuid.UUID(int=1))], self.appended, count))
        self.appended += count

    async def stored_heads(self) -> list[int]:
        async with self.engine.connect() as conn:
            return [h["tree_size"] for h in await store.tree_heads(conn, CHAIN)]


@pytest.fixture
async def ledger(platform: Platform) -> AsyncIterator[Ledger]:
    admin = make_url(platform.env["DATABASE_URL"])
    server = create_async_engine(admin.set(database="postgres"), isolation_level="AUTOCOMMIT")
    async with server.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    admin_dsn = admin.set(database=DATABASE).render_as_string(hide_password=False)
    runtime = await prepare_database(admin_dsn, ROLE, uuid.uuid4().hex)
    engine = create_engine(runtime, application_name="head-outage-test", search_path=store.SCHEMA)
    try:
        yield Ledger(engine, admin_dsn)
    finally:
        await engine.dispose()
        async with server.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        await server.dispose()


class DatabaseLostAfterWritingOut(TreeHeadLog):
    """The external log, after which the ledger's database connections are cut (as a failover cuts them)."""

    def __init__(self, directory: Path, admin_dsn: str) -> None:
        super().__init__(directory)
        self.admin_dsn = admin_dsn.replace("postgresql+asyncpg://", "postgresql://")

    def append(self, chain_id: str, line: str) -> None:
        super().append(chain_id, line)
        asyncio.run(self._cut())  # this runs in a worker thread (the publisher's to_thread), with no loop of its own

    async def _cut(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = $1 AND usename = $2", DATABASE, ROLE)
        finally:
            await conn.close()


def publisher(head_log: TreeHeadLog, ledger: Ledger) -> Publisher:
    return Publisher(ledger.engine, SIGNER, [SIGNER.public_key()], KEYS, head_log)


async def test_a_head_the_database_lost_is_stored_before_the_next_and_the_chain_verifies(
    ledger: Ledger, tmp_path: Path,
) -> None:
    await ledger.append(5)
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises for a terminated connection
        await publisher(DatabaseLostAfterWritingOut(tmp_path, ledger.admin_dsn), ledger).publish(CHAIN)
    assert [h["tree_size"] for h in TreeHeadLog(tmp_path).newest(CHAIN)] == [5]
    assert await ledger.stored_heads() == []

    await ledger.append(3)
    head_log = TreeHeadLog(tmp_path)
    assert (await publisher(head_log, ledger).publish(CHAIN))["tree_size"] == 8  # type: ignore[index]

    assert await ledger.stored_heads() == [5, 8]
    report = await checker.check_chain(ledger.engine, CHAIN, hmac_keys=KEYS, public_keys=[SIGNER.public_key()],
                                       head_log=head_log)
    assert report.ok and report.problems == [] and report.external_tree_heads == 2, report


async def test_a_head_in_the_log_that_is_older_than_the_database_newest_is_not_stored_again(
    ledger: Ledger, tmp_path: Path,
) -> None:
    """Older than what the database holds, a head missing from it looks like a removal: verification says so."""
    head_log = TreeHeadLog(tmp_path)
    await ledger.append(4)
    await publisher(head_log, ledger).publish(CHAIN)
    await ledger.append(2)
    await publisher(head_log, ledger).publish(CHAIN)
    admin = create_async_engine(ledger.admin_dsn)  # the runtime role may not delete: the owner removes one
    try:
        async with admin.begin() as conn:
            await conn.execute(text("ALTER TABLE audit.tree_heads DISABLE TRIGGER USER"))
            await conn.execute(text("DELETE FROM audit.tree_heads WHERE tree_size = 4"))
            await conn.execute(text("ALTER TABLE audit.tree_heads ENABLE TRIGGER USER"))
    finally:
        await admin.dispose()
    await ledger.append(1)
    await publisher(head_log, ledger).publish(CHAIN)

    assert await ledger.stored_heads() == [6, 7]
    report = await checker.check_chain(ledger.engine, CHAIN, hmac_keys=KEYS, public_keys=[SIGNER.public_key()],
                                       head_log=head_log)
    assert any("missing from the database" in p for p in report.problems), report
