"""``clinomic-ops``: operator commands that span every service (docs/operations.md).

    clinomic-ops backup ./backups                 # consistent backup of every schema + external tree heads
    clinomic-ops restore ./backups/clinomic-...   # into an empty database, then verify
    clinomic-ops restore BACKUP --force           # over an existing database (asks; --yes to skip)
    clinomic-ops verify-backup BACKUP             # checksums and manifest only, no database

The database comes from ``--database-url``, else ``DATABASE_URL`` (or ``POSTGRES_*``), as for the services;
it must be an admin/owner connection (the role that ran the migrations). Keys come from the environment,
as the services read them; the backup never contains one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from clinomic_ops.pgtools import OpsError

app = typer.Typer(
    help="Clinomic operator commands: backup and restore of the whole platform (docs/operations.md).",
    no_args_is_help=True,
    add_completion=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="Admin URL of the platform's database (default: DATABASE_URL / POSTGRES_*)."
    ),
]
TreeHeadDir = Annotated[
    Path | None,
    typer.Option(
        "--tree-head-dir", help="The audit ledger's external tree-head log (default: AUDIT_TREE_HEAD_DIR)."
    ),
]
Progress = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bars (default: when stderr is a terminal)."),
]


def _dsn(database_url: str | None) -> str:
    from shared.settings import CommonSettings

    from clinomic_ops.pgtools import asyncpg_dsn

    return asyncpg_dsn(database_url) if database_url else CommonSettings().dsn


def _tree_head_dir(option: Path | None) -> Path | None:
    if option is not None:
        return option
    value = os.environ.get("AUDIT_TREE_HEAD_DIR")
    return Path(value) if value else None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"clinomic-ops: {message}", err=True)
    return typer.Exit(code)


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="Directory under which clinomic-<UTC time>/ is written.")],
    database_url: DatabaseUrl = None,
    tree_head_dir: TreeHeadDir = None,
    compression: Annotated[int, typer.Option(min=0, max=9, help="pg_dump compression level.")] = 6,
    progress: Progress = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write one consistent backup: every service and tenant schema (pg_dump custom format, one snapshot), the
    external tree-head log cut to that snapshot, and a manifest with versions, revisions, row counts, roles,
    chains and the SHA-256 of every file. Keys are never included."""
    from clinomic_ops.backup import backup as run_backup

    heads = _tree_head_dir(tree_head_dir)
    try:
        result = asyncio.run(
            run_backup(
                _dsn(database_url), dest, tree_head_dir=heads, progress=progress, compression=compression
            )
        )
    except OpsError as exc:
        raise _fail(f"backup FAILED: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - an unexpected failure still ends in one clear line and a non-zero status
        raise _fail(f"backup FAILED: {type(exc).__name__}: {exc}") from None
    if heads is None:
        typer.echo(
            "warning: AUDIT_TREE_HEAD_DIR is not set: the backup holds no external tree-head log", err=True
        )
    manifest = result.manifest
    summary = {
        "backup": str(result.path),
        "bytes": result.bytes,
        "seconds": round(result.seconds, 2),
        "schemas": len(manifest["schemas"]),
        "tables": len(manifest["tables"]),
        "rows": sum(manifest["tables"].values()),
        "audit_chains": len(manifest["audit"]["chains"]),
        "tree_heads_left_out": manifest["audit"]["tree_head_log"]["left_out"],
        **manifest["timings"],
    }
    if json_output:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"backup written to {result.path}")
    for key, value in summary.items():
        if key != "backup":
            typer.echo(f"  {key}: {value}")


@app.command("verify-backup")
def verify_backup(
    backup_dir: Annotated[Path, typer.Argument(help="A backup directory (clinomic-<UTC time>).")],
    progress: Progress = None,
) -> None:
    """Check a backup's files against its manifest (sizes and SHA-256) without touching any database."""
    from clinomic_ops.restore import check_files, load_manifest

    try:
        manifest = load_manifest(backup_dir)
        check_files(backup_dir, manifest, progress)
    except OpsError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"{backup_dir}: {len(manifest['files'])} file(s) match the manifest "
        f"(taken {manifest['snapshot_at']}, {len(manifest['tables'])} tables)"
    )


@app.command()
def restore(
    backup_dir: Annotated[Path, typer.Argument(help="A backup directory written by `clinomic-ops backup`.")],
    database_url: DatabaseUrl = None,
    tree_head_dir: TreeHeadDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the contents of a database that is not empty.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before replacing (with --force).")
    ] = False,
    sample: Annotated[
        int, typer.Option(min=1, help="Names and consent texts decrypted per tenant to verify.")
    ] = 20,
    verify_workers: Annotated[
        int | None,
        typer.Option(min=1, help="Processes for verifying long audit chains (default: one per CPU)."),
    ] = None,
    progress: Progress = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Restore a backup into an empty database (or --force over an existing one, after confirmation), migrate
    forward if the backup is older than the code, and verify: row counts, every audit chain against the restored
    tree heads, the audit role's rights, and a sample of names decrypted with the configured keys. Exits 1 when
    it refuses or fails, saying whether anything was changed."""
    from clinomic_ops.restore import restore as run_restore

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            return False
        return typer.confirm(question, default=False)

    try:
        report = asyncio.run(
            run_restore(
                backup_dir,
                _dsn(database_url),
                tree_head_dir=_tree_head_dir(tree_head_dir),
                force=force,
                confirm=confirm,
                sample=sample,
                progress=progress,
                audit_password=os.environ.get("AUDIT_DB_PASSWORD"),
                verify_workers=verify_workers,
            )
        )
    except OpsError as exc:
        raise _fail(f"restore FAILED: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - an unexpected failure still ends in one clear line and a non-zero status
        raise _fail(f"restore FAILED: {type(exc).__name__}: {exc}") from None
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "changed": report.changed,
                    "database": report.database,
                    "steps": report.steps,
                    "problems": report.problems,
                    "chains": report.chains,
                    "migrated": report.migrated,
                    "names_checked": report.names_checked,
                    "seconds": round(report.seconds, 2),
                }
            )
        )
    else:
        for step in report.steps:
            typer.echo(f"  {step}")
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"  problem: {problem}", err=True)
        raise _fail(
            f"restore FAILED verification of {report.database}; the database was changed and must not "
            "be used as it is"
        )
    if not json_output:
        typer.echo(f"restore of {backup_dir} into {report.database} verified in {report.seconds:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    app()
