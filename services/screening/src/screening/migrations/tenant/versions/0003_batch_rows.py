"""Bulk screening: a screening of a batch keeps its job id and its row in the uploaded file.

Revision ID: t0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "t0003"
down_revision = "t0002"


def upgrade() -> None:
    op.add_column("screenings", sa.Column("batch_job_id", UUID(as_uuid=True)))
    op.add_column("screenings", sa.Column("batch_row", sa.Integer))
    op.create_index("screenings_batch_job", "screenings", ["batch_job_id", "batch_row"],
                    postgresql_where=sa.text("batch_job_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("screenings_batch_job", "screenings")
    op.drop_column("screenings", "batch_row")
    op.drop_column("screenings", "batch_job_id")
