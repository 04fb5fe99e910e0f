"""``clinomic-audit``: operator commands of the audit service (they talk to PostgreSQL, unlike
``clinomic-audit-verify``, which needs nothing but files).

    clinomic-audit provision --login-role clinomic_audit     # as an admin: roles (CREATEROLE or superuser)
    clinomic-audit migrate                                   # as the ledger's owner
    clinomic-audit export tenant:<uuid> --out ledger.jsonl --tree-heads heads.jsonl --public-key audit.pub.pem
    clinomic-audit publish                                   # sign due tree heads now
    clinomic-audit bench-service --entries 1000000           # append, verify and prove against PostgreSQL
    clinomic-audit bench-chunks --rows 20000                 # one chunk entry vs 250 per-row entries

Connections: ``provision`` uses ``DATABASE_URL`` (an admin); ``migrate`` uses
``AUDIT_MIGRATION_DATABASE_URL``, else ``DATABASE_URL``; the rest use the runtime role,
``AUDIT_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.engine import make_url

from audit import store
from audit.settings import WRITER_ROLE, AuditSettings

app = typer.Typer(
    help="Operator commands of the Clinomic audit ledger (PostgreSQL).",
    no_args_is_help=True,
    add_completion=False,
)


def runtime_url(admin_dsn: str, login_role: str, password: str | None) -> str:
    """The runtime role's URL on the same server and database as ``admin_dsn``."""
    return (
        make_url(admin_dsn).set(username=login_role, password=password).render_as_string(hide_password=False)
    )


async def provision_roles(admin_dsn: str, login_role: str, password: str | None, *,
                          align_existing: bool = True) -> None:
    """Create (or align) the writer group role and the service's login role; idempotent.

    The login role: LOGIN, INHERIT, no SUPERUSER/CREATEROLE/CREATEDB/BYPASSRLS, member of the writer group
    and of nothing it could use to reach the ledger's owner. An existing login role is aligned (attributes,
    and the password when one is given) only with ``align_existing``; otherwise it just joins the group, and
    the service's start-up check refuses it if it is privileged.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(admin_dsn, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            pg = await store.raw(conn)
            await pg.execute(f"""
                DO $$ BEGIN
                    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
                        CREATE ROLE {WRITER_ROLE} NOLOGIN;
                    END IF;
                END $$""")
            exists = await pg.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", login_role)
            if not exists or align_existing:
                verb = "ALTER" if exists else "CREATE"
                statement = await pg.fetchval(
                    f"SELECT format('{verb} ROLE %I WITH LOGIN INHERIT NOSUPERUSER NOCREATEROLE NOCREATEDB "
                    "NOBYPASSRLS NOREPLICATION' "
                    "|| CASE WHEN $2::text IS NULL THEN '' ELSE ' PASSWORD %L' END, "
                    "$1::text, $2::text)",
                    login_role,
                    password,
                )
                await pg.execute(statement)
            await pg.execute(
                await pg.fetchval(
                    "SELECT format('GRANT %I TO %I', $1::text, $2::text)", WRITER_ROLE, login_role
                )
            )
    finally:
        await engine.dispose()


async def prepare_database(admin_dsn: str, login_role: str, password: str | None) -> str:
    """Everything a deployment needs before the service starts: roles, then migrations as the admin (who
    thereby owns the ledger). Returns the runtime role's URL."""
    from audit.app import migrate_as_owner

    await provision_roles(admin_dsn, login_role, password)
    await migrate_as_owner(admin_dsn)
    return runtime_url(admin_dsn, login_role, password)


def _settings() -> AuditSettings:
    return AuditSettings()


@app.command()
def provision(
    login_role: Annotated[str, typer.Option(help="The audit service's login role.")] = "clinomic_audit",
    password_env: Annotated[
        str, typer.Option(help="Environment variable holding its password.")
    ] = "AUDIT_DB_PASSWORD",
) -> None:
    """Create the writer group role and the service's login role (run with an admin's DATABASE_URL)."""
    settings = _settings()
    asyncio.run(provision_roles(settings.dsn, login_role, os.environ.get(password_env) or None))
    typer.echo(f"role {login_role} can log in and only SELECT/INSERT the ledger (via {WRITER_ROLE})")


@app.command("migrate")
def migrate_command() -> None:
    """Apply the audit migrations as the ledger's owner (AUDIT_MIGRATION_DATABASE_URL, else DATABASE_URL)."""
    from audit.app import migrate_as_owner

    settings = _settings()
    asyncio.run(migrate_as_owner(settings.migration_dsn or settings.dsn))
    typer.echo("audit schema migrated")


async def _export(chain_id: str, out: Path, heads_out: Path | None, key_out: Path | None) -> int:
    from cryptography.hazmat.primitives import serialization
    from shared.db import create_engine

    from audit.treeheads import TreeHeadLog, head_json
    from audit.verifier import entry_line, export_header

    settings = _settings()
    engine = create_engine(
        settings.runtime_dsn, application_name="clinomic-audit-export", search_path=store.SCHEMA
    )
    count = 0
    try:
        async with engine.connect() as conn:
            size = await store.chain_size(conn, chain_id)
            with out.open("w", encoding="utf-8", newline="\n") as handle:
                handle.write(export_header(chain_id))
                async for rows in store.row_pages(conn, chain_id, 1, size):
                    handle.write("".join(entry_line(store.entry_of(chain_id, r)) for r in rows))
                    count += len(rows)
            if heads_out is not None:
                heads = {head_json(h) for h in await store.tree_heads(conn, chain_id)}
                heads |= {head_json(h) for h in TreeHeadLog(settings.audit_tree_head_dir).read(chain_id)[0]}
                ordered = sorted(
                    heads, key=lambda line: (json.loads(line)["tree_size"], json.loads(line)["timestamp"])
                )
                heads_out.write_text("".join(line + "\n" for line in ordered), encoding="utf-8")
        if key_out is not None:
            key_out.write_bytes(
                b"".join(
                    k.public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                    for k in settings.tree_head_public_keys()[:1]
                )
            )
    finally:
        await engine.dispose()
    return count


@app.command("export")
def export_command(
    chain_id: Annotated[str, typer.Argument(help="tenant:<organisation uuid> or platform")],
    out: Annotated[Path, typer.Option("--out", help="The ledger file to write.")],
    tree_heads: Annotated[
        Path | None,
        typer.Option("--tree-heads", help="Also write the chain's signed heads (database and external log)."),
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Also write the tree-head public key (PEM).")
    ] = None,
) -> None:
    """Write a chain's ledger file for ``clinomic-audit-verify`` (with its tree heads and public key)."""
    count = asyncio.run(_export(chain_id, out, tree_heads, public_key))
    typer.echo(f"{count} entries of {chain_id} written to {out}")


@app.command()
def publish() -> None:
    """Sign and publish the tree head of every chain that changed (what the service does on its schedule)."""
    from shared.db import create_engine

    from audit.treeheads import Publisher, TreeHeadLog

    settings = _settings()

    async def run() -> list[dict[str, Any]]:
        engine = create_engine(
            settings.runtime_dsn, application_name="clinomic-audit-publish", search_path=store.SCHEMA
        )
        try:
            publisher = Publisher(
                engine,
                settings.tree_head_key(),
                settings.tree_head_public_keys(),
                settings.hmac_keys(),
                TreeHeadLog(settings.audit_tree_head_dir),
            )
            return await publisher.publish_due()
        finally:
            await engine.dispose()

    for head in asyncio.run(run()):
        typer.echo(f"{head['chain_id']}: size {head['tree_size']} root {head['root_hash']}")


@app.command("bench-service")
def bench_service(
    entries: Annotated[int, typer.Option(min=1, help="Events to append (one chain).")] = 1_000_000,
    batch: Annotated[
        int, typer.Option(min=1, help="Events per append (the subscriber's batch size).")
    ] = 1000,
    proofs: Annotated[int, typer.Option(min=1, help="Proofs of each kind to time.")] = 1000,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="An admin URL of the PostgreSQL to use (default: DATABASE_URL, else an embedded server)."
        ),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the benchmark database afterwards.")] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Verification worker processes (default: one per CPU).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Append throughput (through the Appender), full verification speed and proof latency, at N entries."""
    from audit import bench_service as bench

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    dsn = database_url or os.environ.get("DATABASE_URL")
    if dsn:
        figures = asyncio.run(
            bench.run(
                dsn,
                entries=entries,
                batch=batch,
                proof_count=proofs,
                keep=keep,
                workers=workers,
                progress=say,
            )
        )
    else:
        figures = bench.with_embedded_postgres(
            lambda dsn: bench.run(
                dsn, entries=entries, batch=batch, proof_count=proofs, workers=workers, progress=say
            ),
            say,
        )
    if json_output:
        typer.echo(json.dumps(figures, indent=2))
        return
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        typer.echo(f"{name:<{width}}  {value}")



@app.command("bench-chunks")
def bench_chunks(
    rows: Annotated[int, typer.Option(min=250, help="Rows to append each way, each round.")] = 20_000,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="An admin URL of the PostgreSQL to use (default: DATABASE_URL, else an embedded server)."
        ),
    ] = None,
) -> None:
    """Append cost of one chunk entry per 250 rows against 250 per-row entries (three rounds)."""
    from audit import bench_service as bench

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    dsn = database_url or os.environ.get("DATABASE_URL")
    if dsn:
        figures = asyncio.run(bench.compare_chunks(dsn, rows=rows, progress=say))
    else:
        figures = bench.with_embedded_postgres(
            lambda admin: bench.compare_chunks(admin, rows=rows, progress=say), say
        )
    typer.echo(json.dumps(figures, indent=2))


if __name__ == "__main__":  # pragma: no cover
    app()
