"""``clinomic-ops``: operator commands that span every service (docs/operations.md).

    clinomic-ops backup ./backups                 # consistent backup of every schema + external tree heads
    clinomic-ops restore ./backups/clinomic-...   # into an empty database, then verify
    clinomic-ops restore BACKUP --force           # over an existing database (asks; --yes to skip)
    clinomic-ops verify-backup BACKUP             # checksums and manifest only, no database
    S3_BUCKET=b clinomic-ops backup ./backups --keep 7  # and upload to S3, keeping the 7 newest there
    clinomic-ops restore s3://b/clinomic-...      # fetch from S3, then restore as from a directory

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
    help="Clinomic operator commands: backup and restore of the whole platform, demo data "
    "(docs/operations.md).",
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
S3Bucket = Annotated[
    str | None,
    typer.Option("--s3-bucket", envvar="S3_BUCKET", help="Also upload the backup to this S3 bucket."),
]
S3Prefix = Annotated[
    str, typer.Option("--s3-prefix", envvar="S3_PREFIX", help="Key prefix of the backups in the bucket.")
]
S3Endpoint = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint-url",
        envvar="S3_ENDPOINT_URL",
        help="An S3-compatible endpoint (MinIO, Ceph, ...); default: AWS. Credentials: AWS_* variables only.",
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


def _fetched(source: str, endpoint: str | None, work: Path, progress: bool | None) -> Path:
    """A local backup directory: ``source`` itself, or the ``s3://`` backup it names fetched into ``work``."""
    from clinomic_ops import s3

    if not source.startswith(s3.SCHEME):
        return Path(source)
    bucket, prefix, name = s3.parse_url(source)
    return s3.S3Backups(bucket, prefix, endpoint).download(name, work, progress=progress)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"clinomic-ops: {message}", err=True)
    return typer.Exit(code)


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="Directory under which clinomic-<UTC time>/ is written.")],
    database_url: DatabaseUrl = None,
    tree_head_dir: TreeHeadDir = None,
    compression: Annotated[int, typer.Option(min=0, max=9, help="pg_dump compression level.")] = 6,
    s3_bucket: S3Bucket = None,
    s3_prefix: S3Prefix = "",
    s3_endpoint_url: S3Endpoint = None,
    keep: Annotated[
        int | None,
        typer.Option(min=1, help="After the upload, delete all but the N newest backups under the prefix."),
    ] = None,
    progress: Progress = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Write one consistent backup: every service and tenant schema (pg_dump custom format, one snapshot), the
    external tree-head log cut to that snapshot, and a manifest with versions, revisions, row counts, roles,
    chains and the SHA-256 of every file. Keys are never included. With a bucket (S3_BUCKET), the bucket is
    checked first (unreachable: nothing is written), then the backup is uploaded and --keep applied."""
    from clinomic_ops.backup import backup as run_backup
    from clinomic_ops.s3 import S3Backups

    if keep is not None and not s3_bucket:
        raise _fail("--keep applies to the backups in S3: set S3_BUCKET or pass --s3-bucket")
    heads = _tree_head_dir(tree_head_dir)
    try:
        store = S3Backups(s3_bucket, s3_prefix, s3_endpoint_url) if s3_bucket else None
        if store is not None:
            store.check()
    except OpsError as exc:
        raise _fail(f"backup FAILED, nothing was written: {exc}") from None
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
    uploaded, pruned = None, []
    if store is not None:
        try:
            uploaded = store.upload(result.path, progress=progress)
        except OpsError as exc:
            raise _fail(
                f"backup written to {result.path}, but its upload FAILED (nothing of it is left in the "
                f"bucket): {exc}"
            ) from None
        try:
            pruned = store.prune(keep) if keep is not None else []
        except OpsError as exc:
            raise _fail(
                f"backup written to {result.path} and uploaded to {uploaded.url}, but retention FAILED: {exc}"
            ) from None
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
    if uploaded is not None:
        summary |= {
            "s3_url": uploaded.url,
            "s3_objects": uploaded.objects,
            "s3_upload_seconds": round(uploaded.seconds, 3),
            "s3_pruned": pruned,
        }
    if json_output:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"backup written to {result.path}")
    for key, value in summary.items():
        if key != "backup":
            typer.echo(f"  {key}: {value}")


@app.command("seed-demo")
def seed_demo(
    gateway_url: Annotated[
        str, typer.Option(envvar="CLINOMIC_GATEWAY_URL", help="The running platform's gateway.")
    ] = "http://127.0.0.1:8000",
    org: Annotated[
        str, typer.Option(help="Slug of the demo organisation: 'demo' or 'demo-<name>'.")
    ] = "demo",
    org_name: Annotated[
        str | None, typer.Option(help="Its display name (default: 'Demo Clinic', or with the slug's suffix).")
    ] = None,
    password: Annotated[
        str, typer.Option(envvar="DEMO_PASSWORD", help="The demo users' password (as ./run prints it).")
    ] = "Demo@2024",
    patients: Annotated[int, typer.Option(min=1, max=10_000, help="Patients, each with a consent.")] = 120,
    screenings: Annotated[int, typer.Option(min=0, max=100_000, help="Screenings through classify.")] = 300,
    population: Annotated[
        str, typer.Option(help="Synthetic cohort the CBCs come from (india-lab, us-lab).")
    ] = "india-lab",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic patients and CBCs.")] = 7,
    clean: Annotated[
        bool,
        typer.Option(
            "--clean",
            help="First delete the organisation's labs, doctors, patients, consents and screenings "
            "(and nothing else).",
        ),
    ] = False,
    skip_screenings: Annotated[
        bool, typer.Option("--skip-screenings", help="Labs, doctors, patients and consents only.")
    ] = False,
    if_empty: Annotated[
        bool,
        typer.Option("--if-empty", help="Exit 0 without change when the organisation already holds data."),
    ] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 8,
    database_url: DatabaseUrl = None,
    progress: Progress = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Create a believable demo organisation on a running platform: users (auth's seed), then labs, doctors,
    patients with consents and screenings of synthetic CBCs through the gateway's API, so everything is
    audited and published as in real use. Needs the platform's environment (database, broker, keys)."""
    import dataclasses

    from clinomic_ops import demo

    try:
        demo.check_slug(org)
        name = org_name or ("Demo Clinic" if org == "demo" else f"Demo Clinic {org.removeprefix('demo-')}")
        plan = demo.plan(patients=patients, screenings=screenings, seed=seed, population=population)
        report = asyncio.run(
            demo.seed(
                gateway_url=gateway_url, dsn=_dsn(database_url), slug=org, name=name, password=password,
                demo=plan, clean_first=clean, skip_screenings=skip_screenings, if_empty=if_empty,
                concurrency=concurrency, progress=progress,
            )
        )
    except OpsError as exc:
        raise _fail(f"seed-demo FAILED: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - an unexpected failure still ends in one clear line and a non-zero status
        raise _fail(f"seed-demo FAILED: {type(exc).__name__}: {exc}") from None
    if json_output:
        typer.echo(json.dumps(dataclasses.asdict(report)))
        return
    if report.cleaned:
        typer.echo(f"cleaned: {report.cleaned}")
    if report.labs == 0 and report.skipped:
        typer.echo(f"organisation {report.slug} ({report.organization_id}): {report.skipped}; left as it is")
        return
    typer.echo(
        f"organisation {report.slug} ({report.organization_id}): {report.labs} labs, "
        f"{report.doctors} doctors, "
        f"{report.patients} patients with consents, {report.screenings} screenings "
        f"(risk classes {report.risk_classes}, rejected {report.rejected}) in {report.seconds:.1f} s"
        + (f"; skipped: {report.skipped}" if report.skipped else "")
    )


@app.command("verify-backup")
def verify_backup(
    backup_dir: Annotated[
        str, typer.Argument(help="A backup directory (clinomic-<UTC time>), or s3://BUCKET/PREFIX/NAME.")
    ],
    s3_endpoint_url: S3Endpoint = None,
    progress: Progress = None,
) -> None:
    """Check a backup's files against its manifest (sizes and SHA-256) without touching any database."""
    import tempfile

    from clinomic_ops.restore import check_files, load_manifest

    with tempfile.TemporaryDirectory(prefix="clinomic-ops-") as work:
        try:
            local = _fetched(backup_dir, s3_endpoint_url, Path(work), progress)
            manifest = load_manifest(local)
            check_files(local, manifest, progress)
        except OpsError as exc:
            raise _fail(str(exc)) from None
    typer.echo(
        f"{backup_dir}: {len(manifest['files'])} file(s) match the manifest "
        f"(taken {manifest['snapshot_at']}, {len(manifest['tables'])} tables)"
    )


@app.command("list-backups")
def list_backups(
    s3_bucket: S3Bucket = None,
    s3_prefix: S3Prefix = "",
    s3_endpoint_url: S3Endpoint = None,
) -> None:
    """The complete backups stored in S3 under the prefix, oldest first, as URLs `restore` accepts."""
    from clinomic_ops.s3 import S3Backups

    try:
        store = S3Backups(s3_bucket or "", s3_prefix, s3_endpoint_url)
        names = store.backups()
    except OpsError as exc:
        raise _fail(str(exc)) from None
    for name in names:
        typer.echo(store.url(name))


@app.command()
def restore(
    backup_dir: Annotated[
        str,
        typer.Argument(
            help="A backup directory written by `clinomic-ops backup`, or s3://BUCKET/PREFIX/NAME (fetched to "
            "a private temporary directory first, removed afterwards)."
        ),
    ],
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
    s3_endpoint_url: S3Endpoint = None,
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

    import tempfile

    work = tempfile.TemporaryDirectory(prefix="clinomic-ops-")
    try:
        report = asyncio.run(
            run_restore(
                _fetched(backup_dir, s3_endpoint_url, Path(work.name), progress),
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
    finally:
        work.cleanup()
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


@app.command("migrate-from-mongodb")
def migrate_from_mongodb(
    mongodb_uri: Annotated[
        str | None,
        typer.Option("--mongodb-uri", envvar="V1_MONGODB_URI", help="The live v1 MongoDB (mongodb://...)."),
    ] = None,
    dump: Annotated[
        Path | None,
        typer.Option("--dump", help="A mongodump directory (.bson or .bson.gz files) to read offline."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="The v1 database (default: the URI's, else 'clinomic'; in a dump: its one)."),
    ] = None,
    v1_encryption_key: Annotated[
        str | None,
        typer.Option(
            "--v1-encryption-key",
            envvar="V1_ENCRYPTION_KEY",
            help="v1's MASTER_ENCRYPTION_KEY (Fernet; several comma-separated) to decrypt patient names.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, check and report; change nothing.")] = False,
    org_filter: Annotated[
        str | None,
        typer.Option("--org-filter", metavar="ORG_ID", help="Migrate one v1 organisation (orgId) only."),
    ] = None,
    skip_screenings: Annotated[bool, typer.Option("--skip-screenings", help="Leave v1 screenings out.")] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Records per transaction and cursor batch.")
    ] = 500,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Where the JSON report goes (default: ./v1-migration-<UTC>.json)."),
    ] = None,
    temporary_passwords: Annotated[
        Path | None,
        typer.Option(
            "--temporary-passwords",
            help="Give created users random temporary passwords (changed at first login) and write them to "
            "this new file (0600); without it they get no usable password.",
        ),
    ] = None,
    mongodb_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for a MongoDB server (serverSelectionTimeoutMS).")
    ] = 5.0,
    database_url: DatabaseUrl = None,
    progress: Progress = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Migrate Clinomic v1 (MongoDB) into this platform: organisations, users, labs, doctors, patients (names
    re-encrypted with this platform's keys), consents and screenings (historical records, marked migrated), with
    one audit ledger entry per record created. Idempotent: a second run skips what the first created. Prints a
    report (read, created, skipped, refused with reasons per collection) and writes it as JSON
    (docs/v1-migration.md)."""
    from datetime import UTC, datetime

    from clinomic_ops.v1.run import Options, migrate, parse_keys
    from clinomic_ops.v1.source import DumpSource, MongoSource

    if (mongodb_uri is None) == (dump is None):
        raise _fail("give exactly one of --mongodb-uri and --dump")
    path = report or Path(f"v1-migration-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json")
    source = None
    try:
        if dump is not None:
            source = DumpSource(dump, db)
        else:
            source = MongoSource(str(mongodb_uri), db, timeout=mongodb_timeout, batch_size=batch_size)
        options = Options(
            dsn=_dsn(database_url),
            v1_keys=parse_keys(v1_encryption_key),
            dry_run=dry_run,
            org_filter=org_filter,
            skip_screenings=skip_screenings,
            batch_size=batch_size,
            temporary_passwords=temporary_passwords,
            progress=progress,
        )
        result = asyncio.run(migrate(source, options))
    except OpsError as exc:
        raise _fail(f"migrate-from-mongodb FAILED: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - an unexpected failure still ends in one clear line and a non-zero status
        raise _fail(f"migrate-from-mongodb FAILED: {type(exc).__name__}: {exc}") from None
    finally:
        if source is not None:
            source.close()
    result.write(path)
    if json_output:
        typer.echo(json.dumps(result.as_dict()))
    else:
        for line in result.lines():
            typer.echo(line)
        typer.echo(f"report written to {path}")


if __name__ == "__main__":  # pragma: no cover
    app()
