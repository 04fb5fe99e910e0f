"""SQL for identity, in the ``auth`` schema."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

SCHEMA = "auth"


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    org_id: uuid.UUID | None
    username: str
    password_hash: str
    role: str
    active: bool


async def user_by_username(conn: AsyncConnection, username: str) -> User | None:
    row = (await conn.execute(
        text("SELECT id, org_id, username, password_hash, role, active FROM users WHERE lower(username) = lower(:u)"),
        {"u": username},
    )).first()
    return User(*row) if row else None


async def user_by_id(conn: AsyncConnection, user_id: uuid.UUID) -> User | None:
    row = (await conn.execute(
        text("SELECT id, org_id, username, password_hash, role, active FROM users WHERE id = :id"), {"id": user_id}
    )).first()
    return User(*row) if row else None


async def org_by_slug(conn: AsyncConnection, slug: str) -> uuid.UUID | None:
    return await conn.scalar(text("SELECT id FROM organizations WHERE slug = :s"), {"s": slug})


async def insert_org(conn: AsyncConnection, org_id: uuid.UUID, name: str, slug: str) -> None:
    await conn.execute(text("INSERT INTO organizations (id, name, slug) VALUES (:id, :n, :s)"),
                       {"id": org_id, "n": name, "s": slug})


async def insert_user(conn: AsyncConnection, user: User) -> None:
    await conn.execute(
        text("INSERT INTO users (id, org_id, username, password_hash, role, active) "
             "VALUES (:id, :org, :u, :h, :r, :a)"),
        {"id": user.id, "org": user.org_id, "u": user.username, "h": user.password_hash, "r": user.role,
         "a": user.active},
    )


async def update_password_hash(conn: AsyncConnection, user_id: uuid.UUID, password_hash: str) -> None:
    await conn.execute(text("UPDATE users SET password_hash = :h WHERE id = :id"), {"h": password_hash, "id": user_id})


async def insert_refresh(conn: AsyncConnection, *, token_hash: str, family_id: uuid.UUID, user_id: uuid.UUID,
                         issued_at: datetime, expires_at: datetime) -> None:
    await conn.execute(
        text("INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at) "
             "VALUES (:h, :f, :u, :i, :e)"),
        {"h": token_hash, "f": family_id, "u": user_id, "i": issued_at, "e": expires_at},
    )


async def refresh_for_update(conn: AsyncConnection, token_hash: str) -> tuple | None:
    return (await conn.execute(
        text("SELECT family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens "
             "WHERE token_hash = :h FOR UPDATE"), {"h": token_hash},
    )).first()


async def mark_refresh_used(conn: AsyncConnection, token_hash: str, now: datetime) -> None:
    await conn.execute(text("UPDATE refresh_tokens SET used_at = :n WHERE token_hash = :h"), {"n": now, "h": token_hash})


async def revoke_family(conn: AsyncConnection, family_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        text("UPDATE refresh_tokens SET revoked_at = :n WHERE family_id = :f AND revoked_at IS NULL"),
        {"n": now, "f": family_id},
    )
