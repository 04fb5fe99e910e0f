"""``clinomic-ops restore``: a backup into an empty database (or, with ``--force``, over an existing one),
checked before anything is changed and verified before success is declared.

Before any change (a refusal here leaves the server exactly as it was):

1. the manifest reads and every file's size and SHA-256 match it;
2. the configured keys fit the backup: every PHI key id the data uses is configured (``MASTER_ENCRYPTION_KEY``),
   the configured HMAC keys reproduce each chain's last HMAC, and each chain's newest tree head verifies under
   the configured tree-head public keys;
3. the server answers, a ``pg_restore`` fit for the archive and the server exists, and the database is empty
   (or ``--force`` was given and confirmed, and nobody else is connected to it).

Then: roles (the audit ledger's writer group and login role through ``audit.ops.provision_roles``, other
granted roles without any privileged attribute), ``pg_restore --single-transaction`` (a failure leaves no
half-restored schema), the external tree-head log, row counts against the manifest, migrations forward to
the installed code's heads, and verification: the audit runtime role may still only SELECT and INSERT the
ledger (``audit.store.role_problems``), every chain verifies against the restored tree heads
(``audit.checker.check_chain``: entries, HMACs, Merkle nodes, database and external heads), each chain's
newest head is the manifest's, and a sample of names and consent texts decrypts with the configured keys.
"""

from __future__ import annotations

import asyncio
import hmac as hmac_lib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinomic_ops import platform
from clinomic_ops.backup import DUMP_FILE, FORMAT, HEADS_DIR, MANIFEST, bar, connect, sha256_file
from clinomic_ops.pgtools import (
    OpsError,
    database_name,
    find_binary,
    libpq_env,
    run_with_progress,
    safe_url,
    with_database,
)

#: How long a restore into an occupied database waits for sessions that are closing to be gone.
SESSION_SETTLE_SECONDS = 5.0


@dataclass
class Keys:
    """What the restore needs from the environment to verify (never read from the backup)."""

    phi: Any  # shared.crypto.PhiCipher
    hmac: dict[str, bytes]
    tree_head_public: list[Any]

    @classmethod
    def from_environment(cls) -> Keys:
        from audit.settings import AuditSettings
        from screening.settings import ScreeningSettings
        from shared.crypto import PhiCipher
        from shared.settings import SecretProblem

        try:
            audit = AuditSettings()
            return cls(
                PhiCipher(ScreeningSettings().phi_keys()), audit.hmac_keys(), audit.tree_head_public_keys()
            )
        except SecretProblem as problem:
            raise OpsError(f"keys: {problem}") from None


@dataclass
class RestoreReport:
    ok: bool = False
    changed: bool = False
    database: str = ""
    steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    migrated: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    names_checked: int = 0
    seconds: float = 0.0

    def note(self, message: str) -> None:
        self.steps.append(message)


def load_manifest(backup: Path) -> dict[str, Any]:
    path = backup / MANIFEST
    if not path.is_file():
        raise OpsError(f"{backup} is not a backup: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpsError(f"the backup is corrupt: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OpsError(f"the backup is not in format {FORMAT}")
    return manifest


def check_files(backup: Path, manifest: dict[str, Any], progress: bool | None) -> None:
    """Every file the manifest lists, with its size and SHA-256; no other file."""
    files: dict[str, dict[str, Any]] = manifest.get("files") or {}
    if DUMP_FILE not in files:
        raise OpsError(f"the backup is corrupt: the manifest lists no {DUMP_FILE}")
    problems = []
    present = {p.relative_to(backup).as_posix() for p in backup.rglob("*") if p.is_file()} - {MANIFEST}
    for extra in sorted(present - set(files)):
        problems.append(f"{extra} is not in the manifest")
    total = sum(int(f["bytes"]) for f in files.values())
    with bar(total, "checking backup", "B", enabled=progress, unit_scale=True) as checking:
        for name, expected in sorted(files.items()):
            path = backup / name
            if not path.is_file():
                problems.append(f"{name} is missing")
                continue
            if path.stat().st_size != int(expected["bytes"]):
                problems.append(
                    f"{name} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}"
                )
                checking.update(int(expected["bytes"]))
                continue
            if sha256_file(path, checking) != expected["sha256"]:
                problems.append(f"{name}: SHA-256 does not match the manifest")
    if problems:
        raise OpsError("the backup is corrupt, nothing was restored: " + "; ".join(problems))


def check_keys(manifest: dict[str, Any], keys: Keys) -> None:
    """Refuse, before any change, keys that cannot read or verify this backup."""
    from audit.ledger import entry_hmac
    from audit.merkle import verify_tree_head

    problems = []
    configured = set(keys.phi.key_ids)
    for schema, usage in (manifest.get("phi_key_ids") or {}).items():
        missing = sorted(k for k in usage if k != "-" and k not in configured)
        if missing:
            problems.append(
                f"{schema} holds PHI encrypted under key id(s) {', '.join(missing)}, which MASTER_ENCRYPTION_KEY "
                f"lacks (configured: {', '.join(keys.phi.key_ids)})"
            )
    for chain_id, chain in (manifest.get("audit", {}).get("chains") or {}).items():
        last = chain.get("last_entry")
        if last:
            key = keys.hmac.get(last["key_id"])
            if key is None:
                problems.append(
                    f"audit chain {chain_id} is sealed with HMAC key id {last['key_id']!r}, which is "
                    "not configured (AUDIT_KEY_ID/AUDIT_SIGNING_KEYS)"
                )
            else:
                mac = entry_hmac(key, bytes.fromhex(last["prev_hash"]), bytes.fromhex(last["entry_hash"]))
                if not hmac_lib.compare_digest(mac.hex(), last["hmac"]):
                    problems.append(
                        f"AUDIT_SIGNING_KEY(S) for key id {last['key_id']!r} is not the key that "
                        f"sealed audit chain {chain_id}"
                    )
        head = chain.get("newest_tree_head")
        if head and not any(verify_tree_head(head, k) for k in keys.tree_head_public):
            problems.append(
                f"the newest tree head of audit chain {chain_id} does not verify under the configured "
                "tree-head keys (AUDIT_TREE_HEAD_KEY, AUDIT_TREE_HEAD_PUBLIC_KEYS)"
            )
    if problems:
        raise OpsError("wrong keys for this backup, nothing was restored: " + "; ".join(problems))


async def _server(admin_dsn: str) -> tuple[int, bool]:
    """The server's version number, and whether the target database exists (through ``postgres``)."""
    pg = await connect(with_database(admin_dsn, "postgres"))
    try:
        num = int(await pg.fetchval("SHOW server_version_num"))
        exists = bool(
            await pg.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database_name(admin_dsn))
        )
        return num, exists
    finally:
        await pg.close()


async def _occupied(dsn: str) -> tuple[list[str], int]:
    """The database's non-system schemas that hold anything, and how many other sessions are connected."""
    pg = await connect(dsn)
    try:
        rows = await pg.fetch(
            "SELECT n.nspname FROM pg_namespace n WHERE n.nspname !~ '^(pg_|information_schema$)' AND "
            "(n.nspname <> 'public' OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid) "
            " OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = n.oid)) ORDER BY 1"
        )
        others = await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [r[0] for r in rows], int(others)
    finally:
        await pg.close()


async def _sessions_after_settling(dsn: str, seconds: float = SESSION_SETTLE_SECONDS) -> int:
    """Other sessions still connected after up to ``seconds``: a client that has just closed its connection
    (an earlier command, a stopped service) keeps its server process in ``pg_stat_activity`` until that
    process has exited, which on a busy machine takes a moment."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        _, others = await _occupied(dsn)
        if not others or asyncio.get_running_loop().time() >= deadline:
            return others
        await asyncio.sleep(0.25)


async def _wipe(dsn: str, schemas: list[str]) -> None:
    pg = await connect(dsn)
    try:
        async with pg.transaction():
            for schema in schemas:
                if schema == "public":
                    for name, kind in await pg.fetch(
                        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
                    ):
                        what = {"v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE", "f": "FOREIGN TABLE"}
                        await pg.execute(
                            f"DROP {what.get(kind, 'TABLE')} IF EXISTS public.{platform.qident(name)} CASCADE"
                        )
                else:
                    await pg.execute(f"DROP SCHEMA {platform.qident(schema)} CASCADE")
    finally:
        await pg.close()


async def _create_database(admin_dsn: str) -> None:
    pg = await connect(with_database(admin_dsn, "postgres"))
    try:
        await pg.execute(f"CREATE DATABASE {platform.qident(database_name(admin_dsn))}")
    finally:
        await pg.close()


async def _restore_roles(
    dsn: str, roles: list[dict[str, Any]], audit_password: str | None, report: RestoreReport
) -> None:
    """Create the roles the dump grants to. The audit ledger's login roles go through the audit service's own
    provisioning (LOGIN, no privileged attribute, member of the writer group); every other role is created
    without SUPERUSER, CREATEROLE, CREATEDB or BYPASSRLS, whatever it had, and without a password."""
    from audit.ops import provision_roles

    for role in roles:
        if role["login"] and platform.AUDIT_WRITER_ROLE in role["member_of"]:
            await provision_roles(dsn, role["name"], audit_password)
            report.note(f"role {role['name']}: audit login role, SELECT/INSERT on the ledger only")
    pg = await connect(dsn)
    try:
        for role in roles:
            exists = await pg.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role["name"])
            if not exists:
                await pg.execute(
                    f"CREATE ROLE {platform.qident(role['name'])} WITH {'LOGIN' if role['login'] else 'NOLOGIN'} "
                    f"{'INHERIT' if role['inherit'] else 'NOINHERIT'} NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS"
                )
                report.note(f"role {role['name']} created")
        for role in roles:
            for group in role["member_of"]:
                member = await pg.fetchval("SELECT pg_has_role($1, $2, 'MEMBER')", role["name"], group)
                if not member:
                    await pg.execute(f"GRANT {platform.qident(group)} TO {platform.qident(role['name'])}")
    finally:
        await pg.close()


def _write_tree_heads(backup: Path, target: Path, report: RestoreReport) -> None:
    """Put the backup's external heads into the configured log. The log is append-only evidence: lines
    already there stay, lines of the backup that are missing are appended (fsynced, like the service)."""
    from audit.treeheads import TreeHeadLog

    log = TreeHeadLog(target)
    source = backup / HEADS_DIR
    if not source.is_dir():
        report.note("the backup holds no external tree-head log")
        return
    added = 0
    for path in sorted(source.glob("*.jsonl")):
        existing = set()
        if (target / path.name).exists():
            existing = set((target / path.name).read_text(encoding="utf-8").splitlines())
        missing = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and line not in existing
        ]
        if missing:
            with (target / path.name).open("a", encoding="utf-8") as handle:
                handle.write("".join(f"{line}\n" for line in missing))
                handle.flush()
                os.fsync(handle.fileno())
        added += len(missing)
    report.note(f"external tree-head log {log.directory}: {added} head(s) written")


async def _check_counts(
    dsn: str, manifest: dict[str, Any], report: RestoreReport, progress: bool | None
) -> None:
    expected: dict[str, int] = manifest.get("tables") or {}
    pg = await connect(dsn)
    try:
        found_tables = {t.key: t for t in await platform.tables(pg, await platform.schemas(pg))}
        with bar(len(expected), "counting rows", "table", enabled=progress) as counting:
            for key, count in sorted(expected.items()):
                table = found_tables.get(key)
                if table is None:
                    report.problems.append(f"table {key} is missing after the restore")
                    continue
                got = int(await pg.fetchval(f"SELECT count(*) FROM {table.sql}"))
                if got != count:
                    report.problems.append(f"table {key}: {got} rows, the manifest says {count}")
                counting.update(1)
    finally:
        await pg.close()
    if not report.problems:
        report.note(f"row counts of {len(expected)} tables equal the manifest")


async def _migrate_forward(dsn: str, report: RestoreReport) -> None:
    """Bring every service schema and tenant schema to the installed code's newest revision, each through
    the same ``shared.db.migrate`` the services run at start (the ledger as its owner, like ``clinomic-audit
    migrate``); only schemas behind are touched."""
    from shared.db import create_engine, head_revision, migrate

    pg = await connect(dsn)
    try:
        in_schemas = await platform.schemas(pg)
        before = await platform.revisions(pg, in_schemas)
    finally:
        await pg.close()
    engine = create_engine(dsn, application_name="clinomic-ops-restore", pool_size=1)
    try:
        for schema, revision in sorted(before.items()):
            migrations = platform.migrations_for(schema)
            if migrations is None:
                continue
            head = head_revision(migrations)
            if revision != head:
                await migrate(engine, migrations, schema)
                report.migrated[schema] = (revision, head)
    finally:
        await engine.dispose()
    if report.migrated:
        report.note("migrated forward: " + ", ".join(f"{s} {a}→{b}" for s, (a, b) in report.migrated.items()))
    else:
        report.note("every schema is at the installed code's newest revision")


async def _check_audit_role(dsn: str, roles: list[dict[str, Any]], report: RestoreReport) -> None:
    """As each audit login role (``SET ROLE`` from the admin's session), the audit service's own start-up check
    must find nothing: it may SELECT and INSERT the ledger and nothing else."""
    from audit import store
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    names = [r["name"] for r in roles if r["login"] and platform.AUDIT_WRITER_ROLE in r["member_of"]]
    if not names:
        report.note("no audit login role in the backup")
        return
    engine = create_async_engine(dsn, pool_size=1)
    try:
        for name in names:
            async with engine.connect() as conn:
                await conn.execute(text(f"SET ROLE {platform.qident(name)}"))
                problems = await store.role_problems(conn)
                await conn.execute(text("RESET ROLE"))
                await conn.rollback()
            if problems:
                report.problems.append(f"audit role {name}: " + "; ".join(problems))
            else:
                report.note(f"audit role {name} may only SELECT and INSERT the ledger")
    finally:
        await engine.dispose()


async def _check_chains(
    dsn: str,
    manifest: dict[str, Any],
    keys: Keys,
    tree_head_dir: Path,
    report: RestoreReport,
    progress: bool | None,
    workers: int | None,
) -> None:
    from audit import checker, store
    from audit.treeheads import TreeHeadLog
    from shared.db import create_engine

    chains: dict[str, dict[str, Any]] = manifest.get("audit", {}).get("chains") or {}
    engine = create_engine(dsn, application_name="clinomic-ops-verify", search_path=store.SCHEMA, pool_size=2)
    pool = checker.VerifierPool(dsn, workers)
    log = TreeHeadLog(tree_head_dir)
    try:
        with bar(
            sum(c["size"] for c in chains.values()),
            "verifying audit chains",
            "entry",
            enabled=progress,
            unit_scale=True,
        ) as verifying:
            for chain_id, expected in sorted(chains.items()):
                result = await checker.check_chain(
                    engine,
                    chain_id,
                    hmac_keys=keys.hmac,
                    public_keys=keys.tree_head_public,
                    head_log=log,
                    pool=pool,
                )
                verifying.update(expected["size"])
                async with engine.connect() as conn:
                    size, newest = await store.size_and_latest_head(conn, chain_id)
                summary = {
                    "ok": result.ok,
                    "entries": result.checked,
                    "tree_heads": result.tree_heads_checked,
                    "external_tree_heads": result.external_tree_heads,
                    "seconds": result.seconds,
                }
                report.chains[chain_id] = summary
                if not result.ok:
                    report.problems.append(
                        f"audit chain {chain_id} does not verify: {result.reason or 'problem'} at "
                        f"{result.first_broken_seq}; " + "; ".join(result.problems)
                    )
                if size != expected["size"]:
                    report.problems.append(
                        f"audit chain {chain_id} has {size} entries, the manifest says {expected['size']}"
                    )
                want = expected.get("newest_tree_head")
                if want is not None and (newest is None or newest.get("signature") != want.get("signature")):
                    report.problems.append(
                        f"audit chain {chain_id}: the newest tree head is not the manifest's"
                    )
    finally:
        pool.close()
        await engine.dispose()
    if chains and all(c["ok"] for c in report.chains.values()):
        report.note(f"{len(chains)} audit chain(s) verify (entries, HMACs, Merkle nodes, tree heads)")


async def _check_names(dsn: str, keys: Keys, sample: int, report: RestoreReport) -> None:
    """Decrypt up to ``sample`` names and consent texts per tenant with the configured keys."""
    pg = await connect(dsn)
    failed = 0
    try:
        tenants = [s for s in await platform.schemas(pg) if platform.TENANT_SCHEMA.match(s)]
        for schema in tenants:
            for table, column, _ in platform.ENCRYPTED_COLUMNS:
                if not await pg.fetchval(
                    "SELECT to_regclass($1) IS NOT NULL", f"{platform.qident(schema)}.{table}"
                ):
                    continue
                rows = await pg.fetch(
                    f"SELECT {column} FROM {platform.qident(schema)}.{table} WHERE {column} IS NOT NULL "
                    f"ORDER BY random() LIMIT $1",
                    sample,
                )
                for (ciphertext,) in rows:
                    try:
                        keys.phi.decrypt(ciphertext)
                    except ValueError:
                        failed += 1
                    report.names_checked += 1
    finally:
        await pg.close()
    if failed:
        report.problems.append(
            f"{failed} of {report.names_checked} sampled PHI values do not decrypt with "
            "MASTER_ENCRYPTION_KEY (wrong or missing key)"
        )
    else:
        report.note(
            f"{report.names_checked} sampled names and consent texts decrypt with the configured keys"
        )


async def restore(
    backup: Path,
    dsn: str,
    *,
    tree_head_dir: Path | None,
    force: bool = False,
    confirm: Callable[[str], bool] | None = None,
    sample: int = 20,
    progress: bool | None = None,
    audit_password: str | None = None,
    verify_workers: int | None = None,
    keys: Keys | None = None,
) -> RestoreReport:
    """Check, restore, migrate forward and verify; raises :class:`OpsError` when refused before any change,
    returns a report (``ok`` False with ``problems``) when the restore or its verification failed."""
    started = time.perf_counter()
    report = RestoreReport(database=safe_url(dsn))
    manifest = load_manifest(backup)
    check_files(backup, manifest, progress)
    report.note(f"{len(manifest['files'])} file(s) match the manifest")
    keys = keys or Keys.from_environment()
    check_keys(manifest, keys)
    report.note("the configured keys fit the backup")
    if tree_head_dir is None:
        raise OpsError(
            "no external tree-head log is configured: set AUDIT_TREE_HEAD_DIR (the audit service's) "
            "or pass --tree-head-dir"
        )
    server_num, exists = await _server(dsn)
    dumped_by = int(manifest["versions"].get("postgresql_server_num") or 0)
    if dumped_by // 10000 > server_num // 10000:
        raise OpsError(
            f"the backup comes from PostgreSQL {dumped_by // 10000}; this server is "
            f"{server_num // 10000}: restore into a server at least as new; nothing was restored"
        )
    pg_restore = find_binary(
        "pg_restore", server_num // 10000, at_least=int(manifest["versions"].get("pg_dump_major") or 0)
    )
    occupied: list[str] = []
    if exists:
        occupied, others = await _occupied(dsn)
        if occupied and not force:
            raise OpsError(
                f"database {database_name(dsn)} is not empty (schemas: {', '.join(occupied)}); "
                "use --force to replace its contents; nothing was restored"
            )
        if occupied and others:
            others = await _sessions_after_settling(dsn)
        if occupied and others:
            raise OpsError(
                f"{others} other session(s) are connected to {database_name(dsn)}: stop the platform's "
                "services first; nothing was restored"
            )
        if occupied and (
            confirm is None
            or not confirm(
                f"Replace every schema of database {database_name(dsn)} ({', '.join(occupied)}) with the backup?"
            )
        ):
            raise OpsError("not confirmed; nothing was restored")

    # -- from here on the server changes ------------------------------------------------------------------
    report.changed = True
    try:
        return await _apply(
            backup,
            dsn,
            manifest,
            keys,
            report,
            exists=exists,
            occupied=occupied,
            pg_restore=pg_restore,
            tree_head_dir=tree_head_dir,
            sample=sample,
            progress=progress,
            audit_password=audit_password,
            verify_workers=verify_workers,
            started=started,
        )
    except OpsError as exc:
        done = "; ".join(report.steps[-3:]) or "nothing yet"
        raise OpsError(f"{exc}\n(the server was changed; last steps: {done})") from None


async def _apply(
    backup: Path,
    dsn: str,
    manifest: dict[str, Any],
    keys: Keys,
    report: RestoreReport,
    *,
    exists: bool,
    occupied: list[str],
    pg_restore: Any,
    tree_head_dir: Path,
    sample: int,
    progress: bool | None,
    audit_password: str | None,
    verify_workers: int | None,
    started: float,
) -> RestoreReport:
    if not exists:
        await _create_database(dsn)
        report.note(f"database {database_name(dsn)} created")
    if occupied:
        await _wipe(dsn, occupied)
        report.note(f"dropped schemas {', '.join(occupied)}")
    await _restore_roles(dsn, manifest.get("roles") or [], audit_password, report)
    tables = len(manifest.get("tables") or {})
    with bar(tables, "pg_restore", "table", enabled=progress) as restoring:

        def on_line(line: str) -> None:
            if "processing data for table" in line:
                restoring.update(1)

        run_with_progress(
            [
                str(pg_restore.path),
                "--no-owner",
                "--single-transaction",
                "--exit-on-error",
                "--verbose",
                "--dbname",
                database_name(dsn),
                str(backup / DUMP_FILE),
            ],
            libpq_env(dsn),
            on_line=on_line,
            what=f"pg_restore ({pg_restore.path}, PostgreSQL {pg_restore.major})",
        )
    report.note(f"database restored with {pg_restore.path} ({pg_restore.version})")
    _write_tree_heads(backup, tree_head_dir, report)
    await _check_counts(dsn, manifest, report, progress)
    if report.problems:
        report.seconds = time.perf_counter() - started
        return report
    await _migrate_forward(dsn, report)
    await _check_audit_role(dsn, manifest.get("roles") or [], report)
    await _check_chains(dsn, manifest, keys, tree_head_dir, report, progress, verify_workers)
    await _check_names(dsn, keys, sample, report)
    report.ok = not report.problems
    report.seconds = time.perf_counter() - started
    return report


def run(coro: Any) -> Any:
    return asyncio.run(coro)
