"""SQL of the audit ledger (schema ``audit``): entries, Merkle nodes, signed tree heads, the chain registry.

Every table is insert-only (triggers refuse UPDATE, DELETE and TRUNCATE), and the service's login role may
only SELECT and INSERT. A chain's head is its last entry, read after taking the chain's advisory lock, so
two appenders can never fork a chain or reuse a sequence number.

Merkle nodes of level >= 1 live in ``merkle_nodes``; a level-0 node (a leaf hash) is derived from the entry's
stored hash whenever a query asks for one, see :func:`nodes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.ledger import LedgerEntry, canonical_actor
from audit.merkle import leaf_hash

SCHEMA = "audit"
TABLES = ("chains", "entries", "merkle_nodes", "tree_heads")
#: First key of the two-key advisory locks that serialise appends per chain ("AUDT").
LOCK_CLASS = 0x41554454

_COLUMNS = (
    "chain_id, seq, event_id, event_type, actor, tenant_id, occurred_at, content, prev_hash, entry_hash, "
    "key_id, hmac"
)
#: An entry's fields after its chain id, in ``LedgerEntry`` order, as text where the hash covers text: every
#: read selects the rows of one chain, so the chain id is not read back (verification's hottest query).
READ_COLUMNS = (
    "seq, event_id::text, event_type, actor, tenant_id::text, occurred_at, content, "
    "prev_hash, entry_hash, key_id, hmac"
)


def chain_lock_key(chain_id: str) -> int:
    """A signed 32-bit key per chain (the second key of the chain's advisory lock)."""
    return int.from_bytes(hashlib.sha256(chain_id.encode()).digest()[:4], "big", signed=True)


async def raw(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one, for the few bulk reads where rows are hot."""
    fairy = await conn.get_raw_connection()
    return fairy.driver_connection


# -- appending ---------------------------------------------------------------------------------------------


async def lock_chains(conn: AsyncConnection, chain_ids: Iterable[str]) -> None:
    """Take each chain's transaction-scoped advisory lock, in key order (so two appenders cannot deadlock)."""
    keys = sorted({chain_lock_key(c) for c in chain_ids})
    for key in keys:  # one statement per lock keeps the order certain; a batch rarely spans many chains
        await conn.execute(text("SELECT pg_advisory_xact_lock(:cls, :key)"), {"cls": LOCK_CLASS, "key": key})


async def heads(conn: AsyncConnection, chain_ids: Sequence[str]) -> dict[str, tuple[int, bytes | None]]:
    """(last seq, last entry hash) of each chain; (0, None) for a chain without entries."""
    rows = await conn.execute(
        text(
            "SELECT c, e.seq, e.entry_hash FROM unnest(CAST(:c AS text[])) AS c LEFT JOIN LATERAL "
            "(SELECT seq, entry_hash FROM entries WHERE chain_id = c ORDER BY seq DESC LIMIT 1) e ON true"
        ),
        {"c": list(chain_ids)},
    )
    return {r[0]: (r[1] or 0, bytes(r[2]) if r[2] is not None else None) for r in rows}


async def known_event_ids(conn: AsyncConnection, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.scalars(
        text("SELECT event_id FROM entries WHERE event_id = ANY(:ids)"), {"ids": list(event_ids)}
    )
    return set(rows.all())


async def register_chains(conn: AsyncConnection, chain_ids: Sequence[str]) -> None:
    await conn.execute(
        text("INSERT INTO chains (chain_id) SELECT unnest(CAST(:c AS text[])) ON CONFLICT DO NOTHING"),
        {"c": list(chain_ids)},
    )


async def insert_entries(conn: AsyncConnection, entries: Sequence[LedgerEntry], refs: Sequence[str]) -> None:
    """One statement for the whole batch; ``refs`` holds each entry's identifiers joined by spaces."""
    await conn.execute(
        text(
            f"INSERT INTO entries ({_COLUMNS}, refs) SELECT c, s, e, t, a, tn, o, ct, p, h, k, m, "
            "string_to_array(r, ' ') FROM unnest(CAST(:c AS text[]), CAST(:s AS bigint[]), "
            "CAST(:e AS uuid[]), CAST(:t AS text[]), CAST(:a AS text[]), CAST(:tn AS uuid[]), "
            "CAST(:o AS text[]), CAST(:ct AS bytea[]), CAST(:p AS bytea[]), CAST(:h AS bytea[]), "
            "CAST(:k AS text[]), CAST(:m AS bytea[]), CAST(:r AS text[])) "
            "AS u(c, s, e, t, a, tn, o, ct, p, h, k, m, r)"
        ),
        {
            "c": [e.chain_id for e in entries],
            "s": [e.seq for e in entries],
            "e": [e.event_id for e in entries],
            "t": [e.event_type for e in entries],
            "a": [canonical_actor(e.actor).decode() for e in entries],
            "tn": [e.tenant_id for e in entries],
            "o": [e.occurred_at for e in entries],
            "ct": [e.content for e in entries],
            "p": [e.prev_hash for e in entries],
            "h": [e.entry_hash for e in entries],
            "k": [e.key_id for e in entries],
            "m": [e.hmac for e in entries],
            "r": list(refs),
        },
    )


async def insert_nodes(conn: AsyncConnection, nodes: Sequence[tuple[str, int, int, bytes]]) -> None:
    """Merkle nodes ``(chain_id, level >= 1, idx, hash)``; each is written once, when its subtree completes.

    (A node that exists already is left as it is: that only happens after rows were removed behind the
    service's back, and verification reports it.)"""
    if not nodes:
        return
    await conn.execute(
        text(
            "INSERT INTO merkle_nodes (chain_id, level, idx, hash) SELECT * FROM unnest(CAST(:c AS text[]), "
            "CAST(:l AS smallint[]), CAST(:i AS bigint[]), CAST(:h AS bytea[])) ON CONFLICT DO NOTHING"
        ),
        {
            "c": [n[0] for n in nodes],
            "l": [n[1] for n in nodes],
            "i": [n[2] for n in nodes],
            "h": [n[3] for n in nodes],
        },
    )


# -- Merkle nodes -----------------------------------------------------------------------------------------


async def nodes(
    conn: AsyncConnection, chain_id: str, positions: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """The stored nodes at ``(level, idx)``, in one round trip; level 0 comes from the entries' hashes.

    Missing nodes are simply absent from the answer.
    """
    wanted = set(positions)
    leaves = sorted(i + 1 for level, i in wanted if level == 0)
    inner = sorted((level, i) for level, i in wanted if level > 0)
    if not wanted:
        return {}
    rows = await (await raw(conn)).fetch(
        "SELECT n.level, n.idx, n.hash FROM unnest($2::smallint[], $3::bigint[]) AS w(level, idx) "
        "JOIN merkle_nodes n ON n.chain_id = $1 AND n.level = w.level AND n.idx = w.idx "
        "UNION ALL SELECT 0::smallint, seq - 1, entry_hash FROM entries "
        "WHERE chain_id = $1 AND seq = ANY($4::bigint[])",
        chain_id,
        [p[0] for p in inner],
        [p[1] for p in inner],
        leaves,
    )
    return {(r[0], r[1]): (leaf_hash(r[2]) if r[0] == 0 else r[2]) for r in rows}


async def node_levels(
    conn: AsyncConnection, chain_id: str, level_ranges: dict[int, tuple[int, int]]
) -> dict[int, tuple[int, int, bytes]]:
    """:func:`raw_node_levels` on a SQLAlchemy connection."""
    return await raw_node_levels(await raw(conn), chain_id, level_ranges)


async def raw_node_levels(
    pg: Any, chain_id: str, level_ranges: dict[int, tuple[int, int]]
) -> dict[int, tuple[int, int, bytes]]:
    """For each level, the stored nodes with ``lo <= idx < hi`` concatenated in order:
    ``{level: (first idx found, count, hashes)}``. One query, aggregated in the database, one level at a
    time (each level's sort then stays small instead of one sort of every node spilling to disk)."""
    if not level_ranges:
        return {}
    levels = sorted(level_ranges)
    rows = await pg.fetch(
        "SELECT w.level, a.first, a.n, a.hashes "
        "FROM unnest($2::smallint[], $3::bigint[], $4::bigint[]) AS w(level, lo, hi) "
        "CROSS JOIN LATERAL (SELECT min(n.idx) AS first, count(*) AS n, "
        "string_agg(n.hash, ''::bytea ORDER BY n.idx) AS hashes FROM merkle_nodes n "
        "WHERE n.chain_id = $1 AND n.level = w.level AND n.idx >= w.lo AND n.idx < w.hi) AS a "
        "WHERE a.n > 0",
        chain_id,
        levels,
        [level_ranges[lv][0] for lv in levels],
        [level_ranges[lv][1] for lv in levels],
    )
    return {r[0]: (r[1], r[2], bytes(r[3])) for r in rows}


async def entry_hashes(conn: AsyncConnection, chain_id: str, upto_seq: int) -> list[tuple[int, bytes]]:
    """(seq, stored entry hash) of seq 1..upto_seq in order (rebuilds a frontier whose nodes are missing)."""
    rows = await (await raw(conn)).fetch(
        "SELECT seq, entry_hash FROM entries WHERE chain_id = $1 AND seq >= 1 AND seq <= $2 ORDER BY seq",
        chain_id,
        upto_seq,
    )
    return [(r[0], r[1]) for r in rows]


# -- reading entries --------------------------------------------------------------------------------------


def entry_of(chain_id: str, row: Sequence[Any]) -> LedgerEntry:
    """A LedgerEntry from a row of ``chain_id`` selected with :data:`READ_COLUMNS`."""
    actor = row[3]
    return LedgerEntry(
        chain_id=chain_id,
        seq=row[0],
        event_id=row[1],
        event_type=row[2],
        actor=json.loads(actor) if isinstance(actor, str) else actor,
        tenant_id=row[4],
        occurred_at=row[5],
        content=bytes(row[6]),
        prev_hash=bytes(row[7]),
        entry_hash=bytes(row[8]),
        key_id=row[9],
        hmac=bytes(row[10]),
    )


@dataclass(frozen=True)
class Filters:
    since: str | None = None  # occurred_at >= since (normalised RFC 3339, compared as text)
    until: str | None = None  # occurred_at < until
    actor_user: uuid.UUID | None = None
    actor_name: str | None = None  # a service name or a role, when the actor filter is not a user id
    event_type: str | None = None
    entity: str | None = None


async def entries(
    conn: AsyncConnection,
    chain_id: str,
    *,
    filters: Filters = Filters(),
    after: int | None = None,
    before: int | None = None,
    limit: int = 100,
    descending: bool = True,
) -> list[LedgerEntry]:
    """A page of a chain, newest first by default, keyset-paged by seq."""
    clauses = ["chain_id = $1"]
    args: list[Any] = [chain_id]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if after is not None:
        clauses.append(f"seq > {arg(after)}")
    if before is not None:
        clauses.append(f"seq < {arg(before)}")
    if filters.since is not None:
        clauses.append(f"occurred_at >= {arg(filters.since)}")
    if filters.until is not None:
        clauses.append(f"occurred_at < {arg(filters.until)}")
    if filters.actor_user is not None:
        clauses.append(f"(actor::jsonb)->>'user_id' = {arg(str(filters.actor_user))}")
    if filters.actor_name is not None:
        name = arg(filters.actor_name)
        clauses.append(f"((actor::jsonb)->>'service' = {name} OR (actor::jsonb)->>'role' = {name})")
    if filters.event_type is not None:
        clauses.append(f"event_type = {arg(filters.event_type)}")
    if filters.entity is not None:
        clauses.append(f"refs @> ARRAY[{arg(filters.entity)}::text]")
    order = "DESC" if descending else "ASC"
    sql = (
        f"SELECT {READ_COLUMNS} FROM entries WHERE {' AND '.join(clauses)} ORDER BY seq {order} "
        f"LIMIT {arg(limit)}"
    )
    return [entry_of(chain_id, r) for r in await (await raw(conn)).fetch(sql, *args)]


async def entry(conn: AsyncConnection, chain_id: str, seq: int) -> LedgerEntry | None:
    row = await (await raw(conn)).fetchrow(
        f"SELECT {READ_COLUMNS} FROM entries WHERE chain_id = $1 AND seq = $2", chain_id, seq
    )
    return entry_of(chain_id, row) if row is not None else None


async def size_and_latest_head(conn: AsyncConnection, chain_id: str) -> tuple[int, dict[str, Any] | None]:
    """The chain's size and its newest signed head (by size, then time), in one round trip."""
    row = await (await raw(conn)).fetchrow(
        "SELECT (SELECT seq FROM entries WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1), "
        "(SELECT head FROM tree_heads WHERE chain_id = $1 "
        "ORDER BY tree_size DESC, timestamp_ms DESC LIMIT 1)",
        chain_id,
    )
    return int(row[0] or 0), json.loads(row[1]) if row[1] is not None else None


async def chain_size(conn: AsyncConnection, chain_id: str) -> int:
    """The chain's last sequence number (its Merkle tree size), 0 when it has no entries."""
    value = await conn.scalar(
        text("SELECT seq FROM entries WHERE chain_id = :c ORDER BY seq DESC LIMIT 1"), {"c": chain_id}
    )
    return int(value or 0)


#: Rows per page of a long read. Small enough that a page's rows reuse the memory the previous page freed:
#: with 20,000 rows a verification worker page-faulted and spent 0.9 µs of system time per entry mapping
#: and unmapping memory, with 4,096 rows 0.25 µs (measured on the 1M-entry benchmark chain).
PAGE_ROWS = 4096


async def row_pages(
    conn: AsyncConnection, chain_id: str, first: int, last: int, page: int = PAGE_ROWS
) -> AsyncIterator[list[Any]]:
    """Rows (:data:`READ_COLUMNS`, as asyncpg records) of seq first..last in order, a page at a time."""
    async for rows in raw_row_pages(await raw(conn), chain_id, first, last, page):
        yield rows


async def raw_row_pages(
    pg: Any, chain_id: str, first: int, last: int, page: int = PAGE_ROWS
) -> AsyncIterator[list[Any]]:
    """:func:`row_pages` on an asyncpg connection; the next page is requested before the current one is
    handed over, so the database works on it meanwhile."""
    sql = (
        f"SELECT {READ_COLUMNS} FROM entries WHERE chain_id = $1 AND seq >= $2 AND seq <= $3 "
        "ORDER BY seq LIMIT $4"
    )
    pending = asyncio.ensure_future(pg.fetch(sql, chain_id, first, last, page))
    while True:
        rows = await pending
        if not rows:
            return
        next_first = rows[-1][0] + 1
        more = len(rows) == page and next_first <= last
        if more:
            pending = asyncio.ensure_future(pg.fetch(sql, chain_id, next_first, last, page))
        yield rows
        if not more:
            return


# -- tree heads and chains --------------------------------------------------------------------------------


async def insert_tree_head(conn: AsyncConnection, head: dict[str, Any], head_json: str) -> None:
    await conn.execute(
        text(
            "INSERT INTO tree_heads (chain_id, tree_size, timestamp_ms, root_hash, key_id, head) "
            "VALUES (:c, :n, :t, :r, :k, :j) ON CONFLICT DO NOTHING"
        ),
        {
            "c": head["chain_id"],
            "n": head["tree_size"],
            "t": head["timestamp"],
            "r": bytes.fromhex(head["root_hash"]),
            "k": head["key_id"],
            "j": head_json,
        },
    )


async def tree_heads(
    conn: AsyncConnection, chain_id: str, *, limit: int | None = None, newest_first: bool = False
) -> list[dict[str, Any]]:
    """Signed heads of a chain exactly as published, by size then time."""
    order = "DESC" if newest_first else "ASC"
    sql = f"SELECT head FROM tree_heads WHERE chain_id = :c ORDER BY tree_size {order}, timestamp_ms {order}"
    params: dict[str, Any] = {"c": chain_id}
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    return [json.loads(r) for r in await conn.scalars(text(sql), params)]


async def tree_head_at(conn: AsyncConnection, chain_id: str, size: int) -> dict[str, Any] | None:
    """The newest signed head at ``size``, None if none was signed at that size."""
    return (await tree_heads_at(conn, chain_id, (size,))).get(size)


async def tree_heads_at(conn: AsyncConnection, chain_id: str, sizes: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The newest signed head at each of ``sizes`` (absent where none was signed), in one round trip."""
    rows = await (await raw(conn)).fetch(
        "SELECT DISTINCT ON (tree_size) tree_size, head FROM tree_heads "
        "WHERE chain_id = $1 AND tree_size = ANY($2::bigint[]) ORDER BY tree_size, timestamp_ms DESC",
        chain_id,
        sorted(set(sizes)),
    )
    return {r[0]: json.loads(r[1]) for r in rows}


@dataclass(frozen=True)
class ChainState:
    chain_id: str
    size: int
    head_size: int | None
    head_timestamp_ms: int | None


async def chain_states(conn: AsyncConnection) -> list[ChainState]:
    """Every chain with its size and its newest signed head (for the tree-head publisher)."""
    rows = await conn.execute(
        text(
            "SELECT c.chain_id, coalesce(e.seq, 0), h.tree_size, h.timestamp_ms FROM chains c "
            "LEFT JOIN LATERAL (SELECT seq FROM entries WHERE chain_id = c.chain_id "
            "ORDER BY seq DESC LIMIT 1) e ON true "
            "LEFT JOIN LATERAL (SELECT tree_size, timestamp_ms FROM tree_heads WHERE chain_id = c.chain_id "
            "ORDER BY tree_size DESC, timestamp_ms DESC LIMIT 1) h ON true ORDER BY c.chain_id"
        )
    )
    return [ChainState(r[0], int(r[1]), r[2], r[3]) for r in rows]


# -- roles ------------------------------------------------------------------------------------------------


async def role_problems(conn: AsyncConnection) -> list[str]:
    """Why the connected role must not run the ledger, if it must not: it could disable the triggers or
    change entries (superuser, owner or member of the owner of a table or of the schema, CREATEROLE, or any
    right beyond SELECT and INSERT), or it lacks what appending needs."""
    problems: list[str] = []
    me = (
        await conn.execute(
            text(
                "SELECT current_user, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles "
                "WHERE rolname = current_user"
            )
        )
    ).one()
    if me.rolsuper:
        problems.append(f"role {me.current_user} is a superuser")
    if me.rolcreaterole:
        problems.append(f"role {me.current_user} has CREATEROLE")
    schema = (
        await conn.execute(
            text(
                "SELECT pg_has_role(current_user, nspowner, 'MEMBER') AS owner, "
                "has_schema_privilege(current_user, oid, 'CREATE') AS can_create "
                "FROM pg_namespace WHERE nspname = :s"
            ),
            {"s": SCHEMA},
        )
    ).one_or_none()
    if schema is None:
        return [f"schema {SCHEMA} does not exist: run the audit migrations (clinomic-audit migrate)"]
    if schema.owner:
        problems.append(f"role {me.current_user} owns schema {SCHEMA}")
    if schema.can_create:
        problems.append(f"role {me.current_user} may create objects in schema {SCHEMA}")
    for table in TABLES:
        row = (
            await conn.execute(
                text(
                    "SELECT pg_has_role(current_user, c.relowner, 'MEMBER') AS owner, "
                    "has_table_privilege(current_user, c.oid, 'SELECT') AS can_select, "
                    "has_table_privilege(current_user, c.oid, 'INSERT') AS can_insert, "
                    "has_table_privilege(current_user, c.oid, 'UPDATE') AS can_update, "
                    "has_table_privilege(current_user, c.oid, 'DELETE') AS can_delete, "
                    "has_table_privilege(current_user, c.oid, 'TRUNCATE') AS can_truncate, "
                    "has_table_privilege(current_user, c.oid, 'TRIGGER') AS can_trigger, "
                    "has_table_privilege(current_user, c.oid, 'REFERENCES') AS can_reference "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND c.relname = :t"
                ),
                {"s": SCHEMA, "t": table},
            )
        ).one_or_none()
        if row is None:
            problems.append(f"table {SCHEMA}.{table} does not exist: run the audit migrations")
            continue
        if row.owner:
            problems.append(f"role {me.current_user} owns {SCHEMA}.{table}")
        extra = [
            name
            for name, allowed in (
                ("UPDATE", row.can_update),
                ("DELETE", row.can_delete),
                ("TRUNCATE", row.can_truncate),
                ("TRIGGER", row.can_trigger),
                ("REFERENCES", row.can_reference),
            )
            if allowed
        ]
        if extra:
            problems.append(f"role {me.current_user} may {'/'.join(extra)} {SCHEMA}.{table}")
        if not (row.can_select and row.can_insert):
            problems.append(f"role {me.current_user} lacks SELECT or INSERT on {SCHEMA}.{table}")
    return problems
