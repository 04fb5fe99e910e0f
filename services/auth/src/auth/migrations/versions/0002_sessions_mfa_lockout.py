"""Sessions (refresh families), TOTP MFA and backup codes, MFA challenges, login throttling, event outbox.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, UUID

revision = "0002"
down_revision = "0001"

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("users", sa.Column("must_change_password", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("users", sa.Column("deactivated_at", TZ))
    op.add_column("users", sa.Column("password_changed_at", TZ))

    op.create_table(
        "sessions",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("mfa", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("revoked_at", TZ),
        sa.Column("revoked_reason", sa.Text),
    )
    op.create_index("sessions_revoked_at", "sessions", ["revoked_at"])
    # Families issued before sessions existed become sessions of their own.
    op.execute(
        "INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at) "
        "SELECT family_id, min(user_id::text)::uuid, min(issued_at), max(expires_at), max(revoked_at) "
        "FROM refresh_tokens GROUP BY family_id"
    )
    op.add_column("refresh_tokens", sa.Column("idle_expires_at", TZ))
    op.add_column("refresh_tokens", sa.Column("successor_hash", sa.Text))
    op.create_foreign_key("refresh_tokens_session_fk", "refresh_tokens", "sessions", ["family_id"], ["id"])

    op.create_table(
        "mfa_secrets",
        sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("secret_ciphertext", sa.Text, nullable=False),
        sa.Column("enabled_at", TZ),
        sa.Column("last_step", sa.BigInteger),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "backup_codes",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("salt", BYTEA, nullable=False),
        sa.Column("digest", BYTEA, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("used_at", TZ),
    )
    op.create_table(
        "mfa_challenges",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("used_at", TZ),
    )
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_failure_at", TZ),
        sa.Column("locked_until", TZ),
    )
    op.create_table(
        "outbox",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("body", BYTEA, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now(), index=True),
    )


def downgrade() -> None:
    for table in ("outbox", "login_throttle", "mfa_challenges", "backup_codes", "mfa_secrets"):
        op.drop_table(table)
    op.drop_constraint("refresh_tokens_session_fk", "refresh_tokens")
    op.drop_column("refresh_tokens", "successor_hash")
    op.drop_column("refresh_tokens", "idle_expires_at")
    op.drop_table("sessions")
    for column in ("password_changed_at", "deactivated_at", "must_change_password"):
        op.drop_column("users", column)
