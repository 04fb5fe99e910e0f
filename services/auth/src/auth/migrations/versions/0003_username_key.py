"""Usernames compared in one normal form: ``username_key`` (NFKC + casefold, computed in Python), unique.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

from shared.text import username_key

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("users", sa.Column("username_key", sa.Text))
    bind = op.get_bind()
    for user_id, username in bind.execute(sa.text("SELECT id, username FROM users")).all():
        bind.execute(sa.text("UPDATE users SET username_key = :k WHERE id = :id"),
                     {"k": username_key(username), "id": user_id})
    op.alter_column("users", "username_key", nullable=False)
    # Two names that normalise alike are one account name: the second is refused at creation (409).
    op.create_index("users_username_key_unique", "users", ["username_key"], unique=True)


def downgrade() -> None:
    op.drop_index("users_username_key_unique", "users")
    op.drop_column("users", "username_key")
