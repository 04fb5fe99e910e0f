"""The append-only ledger: chain heads and entries, with triggers that refuse any change.

Revision ID: a0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "a0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "chains",
        sa.Column("chain_id", sa.Text, primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "entries",
        sa.Column("chain_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("actor", JSONB, nullable=False),
        sa.Column("tenant_id", UUID(as_uuid=True)),
        sa.Column("occurred_at", sa.Text, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary, nullable=False),
        sa.Column("entry_hash", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("hmac", sa.LargeBinary, nullable=False),
        sa.Column("appended_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("entries_type", "entries", ["chain_id", "event_type", "seq"])
    op.execute(
        """
        CREATE FUNCTION refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the audit ledger is append-only: % refused', TG_OP;
        END $$
        """
    )
    op.execute("CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries "
               "FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change()")
    op.execute("CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries "
               "FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change()")


def downgrade() -> None:
    raise RuntimeError("the audit ledger is never downgraded")
