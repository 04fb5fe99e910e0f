"""Idempotent batch uploads: a client's ``Idempotency-Key`` is unique per tenant among batch jobs, with a
fingerprint of the uploaded file (SHA-256 of media type and bytes), so a retried upload finds its first job.

Revision ID: g0005
"""

import sqlalchemy as sa
from alembic import op

revision = "g0005"
down_revision = "g0004"


def upgrade() -> None:
    op.add_column("batch_jobs", sa.Column("idempotency_key", sa.Text))
    op.add_column("batch_jobs", sa.Column("request_fingerprint", sa.Text))
    op.create_index("batch_jobs_idempotency", "batch_jobs", ["tenant_id", "idempotency_key"], unique=True,
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("batch_jobs_idempotency", "batch_jobs")
    op.drop_column("batch_jobs", "request_fingerprint")
    op.drop_column("batch_jobs", "idempotency_key")
