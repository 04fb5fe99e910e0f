"""``clinomic-ops backup``: one consistent, restorable backup of the whole platform.

What is written into ``<dest>/clinomic-<UTC time>/``:

* ``database.dump``: ``pg_dump`` custom format (compressed) of every schema of the platform's database,
  service schemas and tenant schemas alike, taken in one snapshot;
* ``tree-heads/<chain>.jsonl``: the audit ledger's external tree-head log (``AUDIT_TREE_HEAD_DIR``), cut
  to what is consistent with that snapshot;
* ``manifest.json``: versions, Alembic revisions per schema, row counts per table (counted in the same
  snapshot), roles and grants to recreate, ledger chains with their newest signed tree head, PHI key ids in
  use, and the size and SHA-256 of every other file.

The snapshot: a REPEATABLE READ transaction exports its snapshot (``pg_export_snapshot``) and stays open
while ``pg_dump --snapshot`` dumps exactly what it sees, so the row counts, the revisions and the dump agree
with each other, whatever the services write meanwhile. No key is ever written (see docs/operations.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinomic_ops import platform
from clinomic_ops.pgtools import OpsError, database_name, find_binary, libpq_env, run_with_progress, safe_url

FORMAT = "clinomic-backup/1"
DUMP_FILE = "database.dump"
HEADS_DIR = "tree-heads"
MANIFEST = "manifest.json"


def sha256_file(path: Path, progress: Any = None, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            if progress is not None:
                progress.update(len(block))
    return digest.hexdigest()


def bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool | None, **kw: Any) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled if enabled is not None else None,
        file=sys.stderr,
        leave=False,
        **kw,
    )


async def connect(dsn: str) -> Any:
    """An asyncpg connection from a SQLAlchemy URL, with a clear error when the server cannot be reached."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        return await asyncpg.connect(url, timeout=10, server_settings={"application_name": "clinomic-ops"})
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise OpsError(f"cannot connect to PostgreSQL at {safe_url(dsn)}: {exc}") from None


@dataclass
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())


def _cut_tree_heads(
    source: Path | None, target: Path, chains: dict[str, dict[str, Any]], in_db: dict[str, set[str]]
) -> dict[str, Any]:
    """Copy each chain's external tree-head log, keeping the heads consistent with the snapshot: every head
    the snapshot's database holds, and every head no newer than the snapshot's newest head of that chain
    (one missing from the database is evidence that it was deleted there, and is kept). Heads signed after
    the snapshot are left out: restored, they would claim entries the backup does not have."""
    from audit.treeheads import file_name

    summary: dict[str, Any] = {"source": str(source) if source else None, "kept": 0, "left_out": 0}
    if source is None or not source.is_dir():
        return summary
    target.mkdir(parents=True, exist_ok=True)
    by_file = {file_name(chain_id): chain_id for chain_id in set(chains) | set(in_db)}
    for path in sorted(source.glob("*.jsonl")):
        chain_id = by_file.get(path.name)
        stored = in_db.get(chain_id or "", set())
        newest = -1
        for line in stored:
            ts = json.loads(line).get("timestamp")
            if isinstance(ts, int):
                newest = max(newest, ts)
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                head = json.loads(line)
                ts = head.get("timestamp") if isinstance(head, dict) else None
            except ValueError:
                ts = None  # not a head: kept, the verifier reports it
            if line in stored or not isinstance(ts, int) or ts <= newest:
                kept.append(line)
            else:
                summary["left_out"] += 1
        (target / path.name).write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        summary["kept"] += len(kept)
    return summary


async def backup(
    dsn: str,
    dest: Path,
    *,
    tree_head_dir: Path | None,
    progress: bool | None = None,
    compression: int = 6,
    name: str | None = None,
) -> BackupResult:
    started = time.perf_counter()
    now = datetime.now(UTC)
    final = dest / (name or f"clinomic-{now.strftime('%Y%m%dT%H%M%SZ')}")
    if final.exists():
        raise OpsError(f"{final} already exists")
    pg = await connect(dsn)  # first: an unreachable server leaves nothing behind
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    work = dest / f".{final.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)  # the dump holds PHI ciphertexts and clinical data: owner only
    try:
        server_num = int(await pg.fetchval("SHOW server_version_num"))
        server_version = await pg.fetchval("SHOW server_version")
        pg_dump = find_binary("pg_dump", server_num // 10000)
        transaction = pg.transaction(isolation="repeatable_read", readonly=True)
        await transaction.start()
        try:
            snapshot = await pg.fetchval("SELECT pg_export_snapshot()")
            snapshot_at = await pg.fetchval(
                "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            )
            in_schemas = await platform.schemas(pg)
            in_tables = await platform.tables(pg, in_schemas)
            with bar(len(in_tables), "counting rows", "table", enabled=progress) as counting:
                counts = await platform.row_counts(pg, in_tables, counting)
            revisions = await platform.revisions(pg, in_schemas)
            roles = await platform.roles(pg, in_schemas)
            chains = await platform.audit_chains(pg)
            heads_in_db = await platform.database_tree_heads(pg)
            tenants = [s for s in in_schemas if platform.TENANT_SCHEMA.match(s)]
            phi = await platform.phi_key_ids(pg, tenants)
            timings["inspect_seconds"] = round(time.perf_counter() - mark, 3)
            mark = time.perf_counter()
            dump_path = work / DUMP_FILE
            with bar(len(in_tables), "pg_dump", "table", enabled=progress) as dumping:

                def on_line(line: str) -> None:
                    if "dumping contents of table" in line:
                        dumping.update(1)

                run_with_progress(
                    [
                        str(pg_dump.path),
                        "--format=custom",
                        f"--compress={compression}",
                        "--verbose",
                        f"--snapshot={snapshot}",
                        "--file",
                        str(dump_path),
                    ],
                    libpq_env(dsn),
                    on_line=on_line,
                    what="pg_dump",
                )
            # Still inside the snapshot: the external log is cut against the heads this snapshot holds.
            timings["pg_dump_seconds"] = round(time.perf_counter() - mark, 3)
            heads_summary = _cut_tree_heads(tree_head_dir, work / HEADS_DIR, chains, heads_in_db)
        finally:
            await transaction.rollback()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        await pg.close()

    mark = time.perf_counter()
    files = sorted(p for p in work.rglob("*") if p.is_file())
    for path in [*files, *(p for p in work.rglob("*") if p.is_dir())]:
        path.chmod(0o600 if path.is_file() else 0o700)
    total = sum(p.stat().st_size for p in files)
    entries: dict[str, dict[str, Any]] = {}
    with bar(total, "checksums", "B", enabled=progress, unit_scale=True) as summing:
        for path in files:
            entries[path.relative_to(work).as_posix()] = {
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path, summing),
            }
    timings["checksum_seconds"] = round(time.perf_counter() - mark, 3)
    manifest = {
        "format": FORMAT,
        "timings": timings,
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "snapshot_at": snapshot_at,
        "versions": {
            "packages": platform.versions(),
            "python": sys.version.split()[0],
            "postgresql_server": server_version,
            "postgresql_server_num": server_num,
            "pg_dump": pg_dump.version,
            "pg_dump_major": pg_dump.major,
        },
        "database": {"name": database_name(dsn), "url": safe_url(dsn)},
        "schemas": in_schemas,
        "alembic": {
            "revisions": revisions,
            "heads": {schema: _head(schema) for schema in revisions},
        },
        "tables": counts,
        "roles": roles,
        "audit": {
            "chains": {
                chain_id: {
                    **info,
                    "newest_tree_head": json.loads(info["newest_tree_head"])
                    if info["newest_tree_head"]
                    else None,
                }
                for chain_id, info in chains.items()
            },
            "tree_head_log": heads_summary,
        },
        "phi_key_ids": phi,
        "files": entries,
        "keys": "not included: back MASTER_ENCRYPTION_KEY, PHI_BLIND_INDEX_KEY, AUDIT_SIGNING_KEY(S), "
        "AUDIT_TREE_HEAD_KEY and the other secrets up separately (docs/operations.md)",
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (work / MANIFEST).chmod(0o600)
    fd = os.open(work, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    work.rename(final)
    return BackupResult(final, manifest, time.perf_counter() - started)


def _head(schema: str) -> str | None:
    from shared.db import head_revision

    migrations = platform.migrations_for(schema)
    return head_revision(migrations) if migrations is not None else None
