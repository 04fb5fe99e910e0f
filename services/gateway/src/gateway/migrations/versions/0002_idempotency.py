"""Idempotent classify: a client's ``Idempotency-Key`` is unique per tenant; the outcome is kept to replay it.

Revision ID: g0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "g0002"
down_revision = "g0001"


def upgrade() -> None:
    op.add_column("screening_intake", sa.Column("idempotency_key", sa.Text))
    op.add_column("screening_intake", sa.Column("request_fingerprint", sa.Text))
    op.add_column("screening_intake", sa.Column("outcome", JSONB))
    op.create_index("screening_intake_idempotency", "screening_intake", ["tenant_id", "idempotency_key"],
                    unique=True, postgresql_where=sa.text("idempotency_key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("screening_intake_idempotency", "screening_intake")
    for column in ("outcome", "request_fingerprint", "idempotency_key"):
        op.drop_column("screening_intake", column)
