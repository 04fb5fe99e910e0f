"""A screening keeps the patient's external id it was recorded with, so that what its ``ScreeningRecorded``
carried can be rebuilt after the patient's external id is corrected (the audit ledger holds its digest).

Screenings recorded before this revision get the patient's current external id: the best the database knows.

Revision ID: t0006
"""

import sqlalchemy as sa
from alembic import op

revision = "t0006"
down_revision = "t0005"


def upgrade() -> None:
    op.add_column("screenings", sa.Column("patient_external_id", sa.Text))
    op.execute("UPDATE screenings s SET patient_external_id = p.external_id FROM patients p WHERE p.id = s.patient_id")
    op.alter_column("screenings", "patient_external_id", nullable=False)


def downgrade() -> None:
    op.drop_column("screenings", "patient_external_id")
