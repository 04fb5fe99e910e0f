"""What the operator commands know of the platform's database: which schemas belong to which service, where
each service's migrations are, and the read-only queries both commands share (row counts, revisions,
roles, ledger chains, PHI key ids).

Every service's own code stays the authority: migrations are found in each service package, the ledger is
verified with ``audit.checker``, names are decrypted with ``shared.crypto.PhiCipher``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Schemas PostgreSQL itself owns; never dumped, compared or dropped.
SYSTEM_SCHEMA = re.compile(r"^(pg_.*|information_schema)$")
TENANT_SCHEMA = re.compile(r"^tenant_[0-9a-f]{32}$")
AUDIT_SCHEMA = "audit"
#: The audit ledger's group role (SELECT and INSERT only), as created by ``clinomic-audit provision``.
AUDIT_WRITER_ROLE = "clinomic_audit_writer"
DISTRIBUTIONS = (
    "clinomic-shared",
    "clinomic-auth",
    "clinomic-gateway",
    "clinomic-inference",
    "clinomic-screening",
    "clinomic-audit",
    "clinomic-devstack",
    "clinomic-ops",
)
#: Patient names and consent texts: table, ciphertext column, key-id column (as screening.store has them).
ENCRYPTED_COLUMNS = (
    ("patients", "name_ciphertext", "name_key_id"),
    ("consents", "text_ciphertext", "text_key_id"),
)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {package} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def migration_sets() -> dict[str, Path]:
    """Schema (``tenant`` for every tenant schema) → that schema's Alembic scripts, in the service packages."""
    return {
        "auth": _package_dir("auth") / "migrations",
        "gateway": _package_dir("gateway") / "migrations",
        "screening": _package_dir("screening") / "migrations" / "control",
        "audit": _package_dir("audit") / "migrations",
        "tenant": _package_dir("screening") / "migrations" / "tenant",
    }


def migrations_for(schema: str) -> Path | None:
    sets = migration_sets()
    if TENANT_SCHEMA.match(schema):
        return sets["tenant"]
    return sets.get(schema)


def versions() -> dict[str, str]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def qident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Table:
    schema: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def sql(self) -> str:
        return f"{qident(self.schema)}.{qident(self.name)}"


async def schemas(pg: Any) -> list[str]:
    rows = await pg.fetch("SELECT nspname FROM pg_namespace ORDER BY nspname")
    return [r[0] for r in rows if not SYSTEM_SCHEMA.match(r[0])]


async def tables(pg: Any, in_schemas: list[str]) -> list[Table]:
    rows = await pg.fetch(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY($1::text[]) "
        "ORDER BY 1, 2",
        in_schemas,
    )
    return [Table(r[0], r[1]) for r in rows]


async def row_counts(pg: Any, in_tables: list[Table], progress: Any = None) -> dict[str, int]:
    counts = {}
    for table in in_tables:
        counts[table.key] = int(await pg.fetchval(f"SELECT count(*) FROM {table.sql}"))
        if progress is not None:
            progress.update(1)
    return counts


async def revisions(pg: Any, in_schemas: list[str]) -> dict[str, str | None]:
    """Each schema's Alembic revision (schemas without a version table are left out)."""
    found: dict[str, str | None] = {}
    for schema in in_schemas:
        exists = await pg.fetchval(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'alembic_version'",
            schema,
        )
        if exists:
            found[schema] = await pg.fetchval(
                f"SELECT version_num FROM {qident(schema)}.alembic_version LIMIT 1"
            )
    return found


async def roles(pg: Any, in_schemas: list[str]) -> list[dict[str, Any]]:
    """The roles the dumped objects grant rights to, and their members (no passwords, never superusers'
    attributes beyond the flag itself): what a restore must create before the grants can be replayed."""
    granted = await pg.fetch(
        """
        WITH acls AS (
            SELECT c.relacl AS acl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY($1::text[])
            UNION ALL SELECT nspacl FROM pg_namespace WHERE nspname = ANY($1::text[])
            UNION ALL SELECT p.proacl FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = ANY($1::text[])
        )
        SELECT DISTINCT r.rolname FROM acls, LATERAL aclexplode(acl) g
          JOIN pg_roles r ON r.oid = g.grantee
         WHERE acl IS NOT NULL AND r.rolname NOT LIKE 'pg\\_%' AND NOT r.rolsuper
        """,
        in_schemas,
    )
    names = {r[0] for r in granted}
    members = await pg.fetch(
        "SELECT m.rolname, g.rolname FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member "
        "JOIN pg_roles g ON g.oid = a.roleid WHERE g.rolname = ANY($1::text[]) AND NOT m.rolsuper",
        sorted(names),
    )
    member_of: dict[str, list[str]] = {}
    for member, group in members:
        member_of.setdefault(member, []).append(group)
        names.add(member)
    rows = await pg.fetch(
        "SELECT rolname, rolcanlogin, rolinherit FROM pg_roles WHERE rolname = ANY($1::text[]) ORDER BY 1",
        sorted(names),
    )
    return [
        {"name": r[0], "login": r[1], "inherit": r[2], "member_of": sorted(member_of.get(r[0], []))}
        for r in rows
    ]


async def audit_chains(pg: Any) -> dict[str, dict[str, Any]]:
    """Per chain: its size, the key ids that sealed it, its last entry's link, hash and HMAC (lets a
    restore check the configured HMAC key before touching anything) and its newest signed tree head."""
    exists = await pg.fetchval("SELECT to_regclass('audit.chains') IS NOT NULL")
    if not exists:
        return {}
    chains: dict[str, dict[str, Any]] = {}
    for (chain_id,) in await pg.fetch("SELECT chain_id FROM audit.chains ORDER BY chain_id"):
        last = await pg.fetchrow(
            "SELECT seq, key_id, prev_hash, entry_hash, hmac FROM audit.entries WHERE chain_id = $1 "
            "ORDER BY seq DESC LIMIT 1",
            chain_id,
        )
        key_ids = [
            r[0]
            for r in await pg.fetch(
                "SELECT DISTINCT key_id FROM audit.entries WHERE chain_id = $1 ORDER BY 1", chain_id
            )
        ]
        head = await pg.fetchval(
            "SELECT head FROM audit.tree_heads WHERE chain_id = $1 "
            "ORDER BY tree_size DESC, timestamp_ms DESC LIMIT 1",
            chain_id,
        )
        chains[chain_id] = {
            "size": int(last["seq"]) if last else 0,
            "key_ids": key_ids,
            "last_entry": None
            if last is None
            else {
                "seq": int(last["seq"]),
                "key_id": last["key_id"],
                "prev_hash": bytes(last["prev_hash"]).hex(),
                "entry_hash": bytes(last["entry_hash"]).hex(),
                "hmac": bytes(last["hmac"]).hex(),
            },
            "newest_tree_head": head,
        }
    return chains


async def database_tree_heads(pg: Any) -> dict[str, set[str]]:
    """Every signed head in the database, per chain, as its stored JSON line."""
    exists = await pg.fetchval("SELECT to_regclass('audit.tree_heads') IS NOT NULL")
    if not exists:
        return {}
    heads: dict[str, set[str]] = {}
    for chain_id, line in await pg.fetch("SELECT chain_id, head FROM audit.tree_heads"):
        heads.setdefault(chain_id, set()).add(line)
    return heads


async def phi_key_ids(pg: Any, tenant_schemas: list[str]) -> dict[str, dict[str, int]]:
    """Per tenant schema, how many stored ciphertexts each PHI key id made (``-``: made before key ids)."""
    usage: dict[str, dict[str, int]] = {}
    for schema in tenant_schemas:
        counts: dict[str, int] = {}
        for table, ciphertext, key_id in ENCRYPTED_COLUMNS:
            exists = await pg.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{qident(schema)}.{table}")
            if not exists:
                continue
            rows = await pg.fetch(
                f"SELECT {key_id}, count(*) FROM {qident(schema)}.{table} "
                f"WHERE {ciphertext} IS NOT NULL GROUP BY 1"
            )
            for kid, count in rows:
                counts[kid or "-"] = counts.get(kid or "-", 0) + int(count)
        usage[schema] = counts
    return usage
