"""A screening may carry when its blood was drawn, as the lab reported it (null: not reported).

Revision ID: t0005
"""

import sqlalchemy as sa
from alembic import op

revision = "t0005"
down_revision = "t0004"


def upgrade() -> None:
    op.add_column("screenings", sa.Column("collected_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("screenings", "collected_at")
