"""An organisation may declare the expected prevalence of B12 deficiency among the adults it screens.

Revision ID: t0004
"""

import sqlalchemy as sa
from alembic import op

revision = "t0004"
down_revision = "t0003"


def upgrade() -> None:
    op.add_column("policy", sa.Column("expected_prevalence", sa.Float))
    op.create_check_constraint("policy_expected_prevalence_fraction", "policy",
                               "expected_prevalence > 0 AND expected_prevalence < 1")


def downgrade() -> None:
    op.drop_constraint("policy_expected_prevalence_fraction", "policy")
    op.drop_column("policy", "expected_prevalence")
