"""Clinical records of one organisation: labs, doctors, staff directory, patient details, consents, policy.

Names and consent texts are Fernet ciphertexts with the id of the key that made them (``*_key_id``), so a
rotation knows what is left and the service can refuse to start without a key the data needs. Names also
get a keyed blind index (``name_index``) for exact-match search. Existing patients keep their ciphertext;
``clinomic-screening rotate-keys`` fills in their key id and index.

Revision ID: t0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "t0002"
down_revision = "t0001"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "labs",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("code", sa.Text, unique=True),
        sa.Column("address", sa.Text),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_by", UUID(as_uuid=True)),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "staff",  # users of the organisation as announced by UserCreated (id and role only)
        sa.Column("user_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("seen_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "doctors",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("specialty", sa.Text),
        sa.Column("registration_number", sa.Text, unique=True),
        sa.Column("user_id", UUID(as_uuid=True), unique=True),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_by", UUID(as_uuid=True)),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.add_column("patients", sa.Column("name_key_id", sa.Text))
    op.add_column("patients", sa.Column("name_index", sa.Text))
    op.add_column("patients", sa.Column("age", sa.SmallInteger))
    op.add_column("patients", sa.Column("sex", sa.Text))
    op.add_column("patients", sa.Column("lab_id", UUID(as_uuid=True), sa.ForeignKey("labs.id")))
    op.add_column("patients", sa.Column("referring_doctor_id", UUID(as_uuid=True), sa.ForeignKey("doctors.id")))
    op.add_column("patients", sa.Column("created_by", UUID(as_uuid=True)))
    op.add_column("patients", sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()))
    op.create_index("patients_name_index", "patients", ["name_index"])
    op.create_index("patients_name_key_id", "patients", ["name_key_id"])
    op.create_index("patients_referring_doctor", "patients", ["referring_doctor_id"])
    op.create_index("patients_lab", "patients", ["lab_id"])
    op.create_index("patients_created_at_id", "patients", ["created_at", "id"])

    op.create_table(
        "consents",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("patient_id", UUID(as_uuid=True), sa.ForeignKey("patients.id"), nullable=False),
        sa.Column("consent_type", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("text_ciphertext", sa.Text, nullable=False),
        sa.Column("text_key_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("recorded_by", UUID(as_uuid=True), nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_by", UUID(as_uuid=True)),
        sa.Column("revoked_at", TS),
        sa.CheckConstraint("method IN ('verbal', 'written', 'electronic')", name="consents_method"),
        sa.CheckConstraint("status IN ('active', 'revoked')", name="consents_status"),
        sa.CheckConstraint("(status = 'revoked') = (revoked_at IS NOT NULL)", name="consents_revocation"),
    )
    op.create_index("consents_patient", "consents", ["patient_id", "consent_type"],
                    postgresql_where=sa.text("status = 'active'"))
    op.create_index("consents_text_key_id", "consents", ["text_key_id"])
    op.create_index("consents_recorded_at_id", "consents", ["recorded_at", "id"])

    op.create_table(
        "policy",  # one row: the organisation's clinical policy
        sa.Column("singleton", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("consent_required", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("consent_type", sa.Text, nullable=False, server_default="screening"),
        sa.Column("updated_by", UUID(as_uuid=True)),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("singleton", name="policy_one_row"),
    )
    op.execute("INSERT INTO policy (singleton) VALUES (true)")

    op.add_column("screenings", sa.Column("lab_id", UUID(as_uuid=True)))
    op.add_column("screenings", sa.Column("doctor_id", UUID(as_uuid=True)))
    op.add_column("screenings", sa.Column("consent_id", UUID(as_uuid=True)))
    op.create_index("screenings_lab", "screenings", ["lab_id"])
    op.create_index("screenings_doctor", "screenings", ["doctor_id"])
    op.create_index("screenings_risk_class", "screenings", ["risk_class"])


def downgrade() -> None:
    for index in ("screenings_risk_class", "screenings_doctor", "screenings_lab"):
        op.drop_index(index, "screenings")
    for column in ("consent_id", "doctor_id", "lab_id"):
        op.drop_column("screenings", column)
    op.drop_table("policy")
    op.drop_table("consents")
    for index in ("patients_created_at_id", "patients_lab", "patients_referring_doctor", "patients_name_key_id",
                  "patients_name_index"):
        op.drop_index(index, "patients")
    for column in ("updated_at", "created_by", "referring_doctor_id", "lab_id", "sex", "age", "name_index",
                   "name_key_id"):
        op.drop_column("patients", column)
    op.drop_table("doctors")
    op.drop_table("staff")
    op.drop_table("labs")
