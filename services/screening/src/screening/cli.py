"""Operator commands of the screening service: tenant schemas, their migrations, PHI key rotation.

    clinomic-screening migrate             control schema and every tenant schema to the newest revision
    clinomic-screening status              each schema's revision (exit 1 when one is behind)
    clinomic-screening provision ORG...    provision tenant schemas of existing organisations
    clinomic-screening keys                which PHI key ids the stored data uses, per tenant
    clinomic-screening rotate-keys         re-encrypt every stored name and consent text under the newest key
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from screening import rotation, store
from screening.settings import ScreeningSettings
from shared.crypto import BlindIndex, PhiCipher
from shared.db import create_engine, head_revision, in_schema, migrate, schema_revision, tenant_schema
from shared.settings import load_or_exit

app = typer.Typer(help="Clinomic screening service commands", no_args_is_help=True)


def _engine(settings: ScreeningSettings) -> AsyncEngine:
    return create_engine(settings.dsn, application_name="clinomic-screening-cli", pool_size=2)


async def _registry(engine: AsyncEngine) -> store.TenantRegistry:
    await migrate(engine, store.CONTROL_MIGRATIONS, store.CONTROL_SCHEMA)
    registry = store.TenantRegistry(engine)
    await registry.load()
    return registry


async def _report(engine: AsyncEngine, tenants: set[uuid.UUID]) -> bool:
    """Print each schema's revision; True when all are at head."""
    rows = [(store.CONTROL_SCHEMA, store.CONTROL_MIGRATIONS)] + \
        [(tenant_schema(org), store.TENANT_MIGRATIONS) for org in sorted(tenants)]
    all_current = True
    for schema, migrations in rows:
        current, head = await schema_revision(engine, schema), head_revision(migrations)
        all_current &= current == head
        typer.echo(f"{schema}\t{current or '-'}\t{'current' if current == head else f'behind (head {head})'}")
    return all_current


@app.command("migrate")
def migrate_command() -> None:
    """Bring the control schema and every tenant schema to the newest revision; report each."""
    async def run() -> bool:
        engine = _engine(ScreeningSettings())
        try:
            registry = await _registry(engine)
            for org in sorted(registry.tenants):
                await migrate(engine, store.TENANT_MIGRATIONS, tenant_schema(org))
            return await _report(engine, registry.tenants)
        finally:
            await engine.dispose()

    raise typer.Exit(0 if asyncio.run(run()) else 1)


@app.command("status")
def status_command() -> None:
    """Report each schema's migration revision; exit 1 when one is not at the newest."""
    async def run() -> bool:
        engine = _engine(ScreeningSettings())
        try:
            registry = store.TenantRegistry(engine)
            await registry.load()
            return await _report(engine, registry.tenants)
        finally:
            await engine.dispose()

    raise typer.Exit(0 if asyncio.run(run()) else 1)


@app.command("provision")
def provision_command(organizations: Annotated[list[uuid.UUID], typer.Argument(help="Organisation ids")]) -> None:
    """Create and migrate the schemas of existing organisations (idempotent)."""
    async def run() -> None:
        engine = _engine(ScreeningSettings())
        try:
            registry = await _registry(engine)
            for org in organizations:
                typer.echo(f"{await registry.provision(org)}\tprovisioned")
        finally:
            await engine.dispose()

    asyncio.run(run())


@app.command("keys")
def keys_command() -> None:
    """Which key ids stored PHI values were encrypted with, per tenant ('-': stored before key ids)."""
    settings = load_or_exit(ScreeningSettings, "screening")
    cipher = PhiCipher(settings.phi_keys())

    async def run() -> None:
        engine = _engine(settings)
        try:
            registry = store.TenantRegistry(engine)
            await registry.load()
            typer.echo(f"configured key ids (newest first): {', '.join(cipher.key_ids)}")
            for org in sorted(registry.tenants):
                async with in_schema(engine, tenant_schema(org)) as conn:
                    usage = await store.key_usage(conn)
                described = ", ".join(f"{k or '-'}: {n}" for k, n in sorted(usage.items(), key=str)) or "no PHI"
                typer.echo(f"{tenant_schema(org)}\t{described}")
        finally:
            await engine.dispose()

    asyncio.run(run())


@app.command("rotate-keys")
def rotate_keys_command(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Values re-encrypted per transaction")] = 200,
    max_rows: Annotated[int | None, typer.Option(min=1, help="Stop after this many (resume by re-running)")] = None,
) -> None:
    """Re-encrypt every stored name and consent text under the newest MASTER_ENCRYPTION_KEY key.

    Safe while the platform runs and resumable: each batch commits, and only values not yet under the newest
    key are touched. Exit status 0 when nothing is left, 1 otherwise (interrupted, or unreadable values).
    """
    from tqdm import tqdm

    settings = load_or_exit(ScreeningSettings, "screening")
    cipher = PhiCipher(settings.phi_keys())
    index = BlindIndex(settings.blind_index_key())

    async def run() -> rotation.RotationReport:
        engine = _engine(settings)
        try:
            registry = store.TenantRegistry(engine)
            await registry.load()
            tenants = sorted(registry.tenants)
            total = sum((await rotation.stale_by_tenant(engine, tenants, cipher)).values())
            if max_rows is not None:
                total = min(total, max_rows)
            with tqdm(total=total, unit="value", desc=f"re-encrypting under key {cipher.current_key_id}",
                      file=sys.stderr) as bar:
                return await rotation.rotate(engine, tenants, cipher, index, batch_size=batch_size,
                                             max_rows=max_rows, progress=bar.update)
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    typer.echo(f"rotated {report.rotated} values; {report.remaining} left under older keys")
    for where, ids in report.unreadable.items():
        typer.echo(f"unreadable with the configured keys: {len(ids)} in {where}", err=True)
    raise typer.Exit(0 if report.remaining == 0 and not report.unreadable else 1)


def main() -> None:
    app()
