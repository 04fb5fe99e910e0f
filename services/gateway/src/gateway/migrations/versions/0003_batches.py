"""Bulk screening: a job per upload and its chunks, the durable record that the accepted rows were accepted.

A job keeps the counts and the report of rejected rows (row number, field, reason; never a value). A chunk
keeps the command published for it until the screening service reports it recorded, and then the outcome
of each of its rows (no PHI: screening id, status, label, risk class, reason).

Revision ID: g0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "g0003"
down_revision = "g0002"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", UUID(as_uuid=True), nullable=False),
        sa.Column("submitted_by", UUID(as_uuid=True)),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("rejected_rows", JSONB, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("recorded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("classified", sa.Integer, nullable=False, server_default="0"),
        sa.Column("risk_low", sa.Integer, nullable=False, server_default="0"),
        sa.Column("risk_intermediate", sa.Integer, nullable=False, server_default="0"),
        sa.Column("risk_high", sa.Integer, nullable=False, server_default="0"),
        sa.Column("progressed_at", TS),
        sa.Column("completed_at", TS),
        sa.CheckConstraint("source IN ('csv', 'json')", name="batch_jobs_source"),
    )
    op.create_index("batch_jobs_tenant_created", "batch_jobs", ["tenant_id", "created_at"])
    op.create_table(
        "batch_chunks",
        sa.Column("job_id", UUID(as_uuid=True), sa.ForeignKey("batch_jobs.id"), primary_key=True),
        sa.Column("chunk", sa.Integer, primary_key=True),
        sa.Column("first_row", sa.Integer, nullable=False),
        sa.Column("last_row", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("command", sa.LargeBinary, nullable=False),
        sa.Column("published_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("recorded_at", TS),
        sa.Column("outcomes", JSONB),
    )
    op.create_index("batch_chunks_pending", "batch_chunks", ["published_at"],
                    postgresql_where=sa.text("recorded_at IS NULL"))
    op.create_index("batch_chunks_recorded_at", "batch_chunks", ["recorded_at"])
    op.create_index("batch_chunks_job_last_row", "batch_chunks", ["job_id", "last_row"])


def downgrade() -> None:
    op.drop_table("batch_chunks")
    op.drop_table("batch_jobs")
