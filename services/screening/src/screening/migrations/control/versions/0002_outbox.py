"""The outbox of record events: written in the same transaction as the change (or view) they describe.

Revision ID: c0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "c0002"
down_revision = "c0001"


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("outbox_created_at", "outbox", ["created_at"])


def downgrade() -> None:
    op.drop_table("outbox")
