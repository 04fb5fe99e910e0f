"""One schema per organisation: provisioned when it is created, migrated with all others, reported by the
CLI; a connection that names no tenant reads nothing at all."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from screening.store import CONTROL_MIGRATIONS, TENANT_MIGRATIONS, TenantRegistry
from shared.db import create_engine, head_revision, in_schema, tenant_schema
from tests.records.conftest import Tenant
from tests.records.helpers import eventually, ok, platform_admin

CLI = str(Path(sys.executable).parent / "clinomic-screening")


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=platform.env, capture_output=True, text=True, timeout=300)


async def _revision(engine: AsyncEngine, schema: str) -> str | None:
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT 1 FROM information_schema.tables WHERE table_schema = :s "
                                        "AND table_name = 'alembic_version'"), {"s": schema})
        return await conn.scalar(text(f'SELECT version_num FROM "{schema}".alembic_version')) if exists else None


async def test_creating_an_organisation_provisions_its_schema_at_the_newest_revision(
    gateway: httpx.AsyncClient, engine: AsyncEngine,
) -> None:
    slug = f"prov-{uuid.uuid4().hex[:8]}"
    org = ok(await gateway.post("/api/auth/organizations", json={"name": "Provisioned", "slug": slug},
                                headers=await platform_admin(gateway)), 201)
    schema = tenant_schema(uuid.UUID(org["id"]))
    assert await eventually(lambda: _revision(engine, schema), timeout=20) == head_revision(TENANT_MIGRATIONS)


async def test_status_reports_every_schema_and_its_revision(platform: Platform, engine: AsyncEngine,
                                                            org_a: Tenant, org_b: Tenant) -> None:
    ran = await asyncio.to_thread(cli, platform, "status")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = dict(line.split("\t", 1) for line in ran.stdout.splitlines())
    assert lines["screening"] == f"{head_revision(CONTROL_MIGRATIONS)}\tcurrent"
    async with engine.connect() as conn:
        tenants = (await conn.scalars(text("SELECT schema_name FROM screening.tenants"))).all()
    assert {tenant_schema(uuid.UUID(o.org.id)) for o in (org_a, org_b)} <= set(tenants)
    for schema in tenants:
        assert lines[schema] == f"{head_revision(TENANT_MIGRATIONS)}\tcurrent"


#: What the tenant revisions after t0001 added, undone newest first (t0006, t0005, t0004 with the policy table,
#: t0003, then t0002).
UNDO_AFTER_T0001 = (
    "ALTER TABLE screenings DROP COLUMN patient_external_id", "ALTER TABLE screenings DROP COLUMN collected_at",
    "DROP INDEX screenings_batch_job", "ALTER TABLE screenings DROP COLUMN batch_job_id, DROP COLUMN batch_row",
    "DROP TABLE policy", "DROP TABLE consents", "DROP INDEX screenings_risk_class", "DROP INDEX patients_created_at_id",
    "ALTER TABLE screenings DROP COLUMN lab_id, DROP COLUMN doctor_id, DROP COLUMN consent_id",
    "ALTER TABLE patients DROP COLUMN name_key_id, DROP COLUMN name_index, DROP COLUMN age, DROP COLUMN sex, "
    "DROP COLUMN lab_id, DROP COLUMN referring_doctor_id, DROP COLUMN created_by, DROP COLUMN updated_at",
    "DROP TABLE doctors", "DROP TABLE staff", "DROP TABLE labs",
)


async def test_migrate_brings_a_schema_left_behind_to_the_newest_revision(
    platform: Platform, engine: AsyncEngine,
) -> None:
    org = uuid.uuid4()
    assert (await asyncio.to_thread(cli, platform, "provision", str(org))).returncode == 0
    schema = tenant_schema(org)
    async with engine.begin() as conn:  # as if this schema had missed the last migration
        await conn.execute(text(f'UPDATE "{schema}".alembic_version SET version_num = :v'),
                           {"v": "t0001"})
        await conn.execute(text(f'SET LOCAL search_path TO "{schema}"'))
        for statement in UNDO_AFTER_T0001:
            await conn.execute(text(statement))
    behind = await asyncio.to_thread(cli, platform, "status")
    assert behind.returncode == 1 and f"{schema}\tt0001\tbehind" in behind.stdout
    migrated = await asyncio.to_thread(cli, platform, "migrate")
    assert migrated.returncode == 0 and f"{schema}\t{head_revision(TENANT_MIGRATIONS)}\tcurrent" in migrated.stdout
    assert await _revision(engine, schema) == head_revision(TENANT_MIGRATIONS)


async def test_migrating_to_t0006_gives_existing_screenings_their_patients_external_id(
    platform: Platform, engine: AsyncEngine,
) -> None:
    org, patient, screening = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert (await asyncio.to_thread(cli, platform, "provision", str(org))).returncode == 0
    schema = tenant_schema(org)
    async with engine.begin() as conn:  # a screening stored at t0005, before screenings kept the external id
        await conn.execute(text(f'SET LOCAL search_path TO "{schema}"'))
        await conn.execute(text("ALTER TABLE screenings DROP COLUMN patient_external_id"))
        await conn.execute(text("UPDATE alembic_version SET version_num = 't0005'"))
        await conn.execute(text("INSERT INTO patients (id, external_id) VALUES (:p, 'MRN-before-t0006')"),
                           {"p": patient})
        await conn.execute(text(
            "INSERT INTO screenings (id, patient_id, status, cbc, correlation_id, requested_at, recorded_at) "
            "VALUES (:s, :p, 'rejected', '{}', :s, now(), now())"), {"s": screening, "p": patient})
    migrated = await asyncio.to_thread(cli, platform, "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    async with engine.connect() as conn:
        kept = await conn.scalar(text(f'SELECT patient_external_id FROM "{schema}".screenings WHERE id = :s'),
                                 {"s": screening})
        nullable = await conn.scalar(text(
            "SELECT is_nullable FROM information_schema.columns WHERE table_schema = :schema "
            "AND table_name = 'screenings' AND column_name = 'patient_external_id'"), {"schema": schema})
    assert (kept, nullable) == ("MRN-before-t0006", "NO")


async def test_provision_creates_the_schema_of_an_existing_organisation(platform: Platform,
                                                                         engine: AsyncEngine) -> None:
    org = uuid.uuid4()
    ran = await asyncio.to_thread(cli, platform, "provision", str(org))
    assert ran.returncode == 0 and f"{tenant_schema(org)}\tprovisioned" in ran.stdout
    assert await _revision(engine, tenant_schema(org)) == head_revision(TENANT_MIGRATIONS)


async def test_one_new_organisation_provisioned_from_several_places_at_once_gets_one_schema(
    platform: Platform,
) -> None:
    """Its ``OrganizationCreated`` event and its first requests may all provision the schema together."""
    org = uuid.uuid4()
    engine = create_engine(platform.env["DATABASE_URL"], application_name="tenancy-test", pool_size=4)
    try:
        schemas = await asyncio.gather(*(TenantRegistry(engine).provision(org) for _ in range(4)))
        assert schemas == [tenant_schema(org)] * 4
        assert await _revision(engine, tenant_schema(org)) == head_revision(TENANT_MIGRATIONS)
    finally:
        await engine.dispose()


async def test_a_query_that_names_no_tenant_fails_instead_of_reading_one(platform: Platform) -> None:
    engine = create_engine(platform.env["DATABASE_URL"], application_name="tenancy-test", pool_size=1)
    try:
        async with engine.connect() as conn:
            with pytest.raises(ProgrammingError, match="does not exist"):
                await conn.execute(text("SELECT count(*) FROM patients"))
    finally:
        await engine.dispose()


async def test_a_tenant_transaction_sees_only_its_own_schema(platform: Platform, org_a: Tenant,
                                                             org_b: Tenant) -> None:
    engine = create_engine(platform.env["DATABASE_URL"], application_name="tenancy-test", pool_size=1)
    try:
        async with in_schema(engine, tenant_schema(uuid.UUID(org_a.org.id))) as conn:
            ids = set(map(str, (await conn.scalars(text("SELECT id FROM patients"))).all()))
        assert org_a.patient["id"] in ids and org_b.patient["id"] not in ids
        async with engine.connect() as conn:  # and the search path does not outlive its transaction
            with pytest.raises(ProgrammingError):
                await conn.execute(text("SELECT 1 FROM patients"))
    finally:
        await engine.dispose()
