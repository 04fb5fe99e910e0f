"""Merkle nodes, signed tree heads, search columns, append-only everywhere, and the runtime role's rights.

* ``chains`` becomes an insert-only registry: a chain's head is its last entry, read under an advisory
  lock, so the runtime role needs no UPDATE anywhere.
* ``merkle_nodes`` keeps every complete subtree of level >= 1 of each chain's RFC 9162 tree (level 0, the
  leaf hash, is SHA-256(0x00 || entries.entry_hash) and is not stored twice). Existing chains are
  backfilled here.
* ``tree_heads`` keeps every signed tree head exactly as it was signed.
* ``entries.refs`` lists the identifiers found in an event (screening, patient, user, correlation ids...)
  for the entity filter (GIN); actor and time get their own indexes.
* ``entries.actor`` becomes text (the actor's canonical JSON as appended): reading jsonb back costs its
  output function on every row that verification reads, and the hash covers the canonical form anyway.
* Every ledger table refuses UPDATE, DELETE and TRUNCATE (triggers), and the group role
  ``clinomic_audit_writer`` gets SELECT and INSERT on them, nothing else. The service's login role joins that
  group; it never owns the schema or the tables, so it cannot ALTER or DISABLE the triggers.

Revision ID: a0002
Revises: a0001
"""

import sqlalchemy as sa
from alembic import op

revision = "a0002"
down_revision = "a0001"

WRITER = "clinomic_audit_writer"
TABLES = ("chains", "entries", "merkle_nodes", "tree_heads")


def upgrade() -> None:
    op.execute("ALTER TABLE chains DROP COLUMN last_seq, DROP COLUMN last_hash")
    op.execute("ALTER TABLE chains ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()")

    op.execute("ALTER TABLE entries ADD COLUMN refs text[] NOT NULL DEFAULT '{}'")
    op.execute("CREATE INDEX entries_refs ON entries USING gin (refs)")
    op.execute("ALTER TABLE entries ALTER COLUMN actor TYPE text USING actor::text")
    op.execute("CREATE INDEX entries_actor ON entries (chain_id, ((actor::jsonb)->>'user_id'), seq)")
    op.execute("CREATE INDEX entries_time ON entries (chain_id, occurred_at, seq)")

    op.create_table(
        "merkle_nodes",
        sa.Column("chain_id", sa.Text, primary_key=True),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        sa.Column("idx", sa.BigInteger, primary_key=True),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.CheckConstraint("level >= 1 AND idx >= 0 AND octet_length(hash) = 32", name="merkle_nodes_shape"),
    )
    op.create_table(
        "tree_heads",
        sa.Column("chain_id", sa.Text, primary_key=True),
        sa.Column("tree_size", sa.BigInteger, primary_key=True),
        sa.Column("timestamp_ms", sa.BigInteger, primary_key=True),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("head", sa.Text, nullable=False),  # the signed head's JSON, byte for byte as published
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )

    for table in ("chains", "merkle_nodes", "tree_heads"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change()"
        )

    _backfill_merkle_nodes()

    op.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN
                CREATE ROLE {WRITER} NOLOGIN;
            END IF;
        END $$""")
    tables = ", ".join(TABLES)
    op.execute(f"REVOKE ALL ON {tables}, alembic_version FROM PUBLIC")
    op.execute(f"REVOKE ALL ON {tables}, alembic_version FROM {WRITER}")
    op.execute("REVOKE ALL ON FUNCTION refuse_ledger_change() FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA audit TO {WRITER}")
    op.execute(f"GRANT SELECT, INSERT ON {tables} TO {WRITER}")
    op.execute(f"GRANT SELECT ON alembic_version TO {WRITER}")


def _backfill_merkle_nodes() -> None:
    """Chains that existed before this revision get their stored nodes (levels >= 1) now."""
    from audit.merkle import MerkleTree, leaf_hash

    bind = op.get_bind()
    chains = [r[0] for r in bind.exec_driver_sql("SELECT DISTINCT chain_id FROM entries")]
    for chain_id in chains:
        hashes = [
            bytes(r[0])
            for r in bind.execute(
                sa.text("SELECT entry_hash FROM entries WHERE chain_id = :c ORDER BY seq"), {"c": chain_id}
            )
        ]
        levels = MerkleTree.from_leaf_hashes([leaf_hash(h) for h in hashes]).levels()
        rows = [
            {"c": chain_id, "l": level, "i": i, "h": data[i * 32 : (i + 1) * 32]}
            for level, data in enumerate(levels)
            if level >= 1
            for i in range(len(data) // 32)
        ]
        if rows:
            bind.execute(
                sa.text("INSERT INTO merkle_nodes (chain_id, level, idx, hash) VALUES (:c, :l, :i, :h)"), rows
            )
        bind.execute(
            sa.text("INSERT INTO chains (chain_id) VALUES (:c) ON CONFLICT DO NOTHING"), {"c": chain_id}
        )


def downgrade() -> None:
    raise RuntimeError("the audit ledger is never downgraded")
