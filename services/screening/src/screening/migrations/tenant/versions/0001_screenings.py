"""Patients and screenings of one organisation (applied to every tenant schema).

Revision ID: t0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "t0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("external_id", sa.Text, nullable=False, unique=True),
        sa.Column("name_ciphertext", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "screenings",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("patient_id", UUID(as_uuid=True), sa.ForeignKey("patients.id"), nullable=False, index=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("cbc", JSONB, nullable=False),
        sa.Column("assessment", JSONB),
        sa.Column("rejection_reason", sa.Text),
        sa.Column("label", sa.Text),
        sa.Column("risk_class", sa.SmallInteger),
        sa.Column("model_version", sa.Text),
        sa.Column("requested_by", UUID(as_uuid=True)),
        sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("screenings_recorded_at_id", "screenings", ["recorded_at", "id"])


def downgrade() -> None:
    op.drop_table("screenings")
    op.drop_table("patients")
