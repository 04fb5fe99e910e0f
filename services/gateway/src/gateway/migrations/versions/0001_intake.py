"""Screenings accepted by the gateway, kept until the screening service has recorded them.

Revision ID: g0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "g0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "screening_intake",
        sa.Column("screening_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("command", sa.LargeBinary, nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("recorded_at", sa.DateTime(timezone=True)),
    )
    op.create_index("screening_intake_pending", "screening_intake", ["published_at"],
                    postgresql_where=sa.text("recorded_at IS NULL"))


def downgrade() -> None:
    op.drop_table("screening_intake")
