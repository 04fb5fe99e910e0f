"""The registry of provisioned tenant schemas.

Revision ID: c0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "c0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("org_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("schema_name", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("tenants")
