"""SQL for identity, in the ``auth`` schema."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.text import username_key

SCHEMA = "auth"

_USER_COLUMNS = "id, org_id, username, password_hash, role, active, must_change_password"


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    org_id: uuid.UUID | None
    username: str
    password_hash: str
    role: str
    active: bool
    must_change_password: bool = False


@dataclass(frozen=True)
class Organization:
    id: uuid.UUID
    name: str
    slug: str


# -- organisations and users -------------------------------------------------------------------------------


async def user_by_username(conn: AsyncConnection, username: str) -> User | None:
    """By the username's normal form, computed here and stored at creation: SQL never normalises, so it
    cannot disagree with the lockout key (see ``shared.text.username_key``)."""
    row = (await conn.execute(
        text(f"SELECT {_USER_COLUMNS} FROM users WHERE username_key = :k"), {"k": username_key(username)},
    )).first()
    return User(*row) if row else None


async def user_by_id(conn: AsyncConnection, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (await conn.execute(
        text(f"SELECT {_USER_COLUMNS} FROM users WHERE id = :id{lock}"), {"id": user_id}
    )).first()
    return User(*row) if row else None


async def users_of_org(conn: AsyncConnection, org_id: uuid.UUID) -> list[tuple[User, bool]]:
    """The organisation's users, each with whether MFA is enabled."""
    rows = (await conn.execute(
        text("SELECT u.id, u.org_id, u.username, u.password_hash, u.role, u.active, u.must_change_password, "
             "m.enabled_at IS NOT NULL FROM users u LEFT JOIN mfa_secrets m ON m.user_id = u.id "
             "WHERE u.org_id = :o ORDER BY lower(u.username)"), {"o": org_id},
    )).all()
    return [(User(*r[:7]), bool(r[7])) for r in rows]


async def has_active_admin(conn: AsyncConnection, org_id: uuid.UUID) -> bool:
    return bool(await conn.scalar(
        text("SELECT 1 FROM users WHERE org_id = :o AND role = 'org_admin' AND active LIMIT 1"), {"o": org_id}))


async def org_by_slug(conn: AsyncConnection, slug: str) -> uuid.UUID | None:
    return await conn.scalar(text("SELECT id FROM organizations WHERE slug = :s"), {"s": slug})


async def org_by_id(conn: AsyncConnection, org_id: uuid.UUID) -> Organization | None:
    row = (await conn.execute(text("SELECT id, name, slug FROM organizations WHERE id = :id"), {"id": org_id})).first()
    return Organization(*row) if row else None


async def insert_org(conn: AsyncConnection, org_id: uuid.UUID, name: str, slug: str) -> None:
    await conn.execute(text("INSERT INTO organizations (id, name, slug) VALUES (:id, :n, :s)"),
                       {"id": org_id, "n": name, "s": slug})


async def insert_user(conn: AsyncConnection, user: User) -> None:
    await conn.execute(
        text("INSERT INTO users (id, org_id, username, username_key, password_hash, role, active, "
             "must_change_password, password_changed_at) VALUES (:id, :org, :u, :k, :h, :r, :a, :m, now())"),
        {"id": user.id, "org": user.org_id, "u": user.username, "k": username_key(user.username),
         "h": user.password_hash, "r": user.role, "a": user.active, "m": user.must_change_password},
    )


async def update_password_hash(conn: AsyncConnection, user_id: uuid.UUID, password_hash: str) -> None:
    await conn.execute(text("UPDATE users SET password_hash = :h WHERE id = :id"), {"h": password_hash, "id": user_id})


async def set_password(conn: AsyncConnection, user_id: uuid.UUID, password_hash: str, *, must_change: bool) -> None:
    await conn.execute(
        text("UPDATE users SET password_hash = :h, must_change_password = :m, password_changed_at = now() "
             "WHERE id = :id"), {"h": password_hash, "m": must_change, "id": user_id},
    )


async def deactivate_user(conn: AsyncConnection, user_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(text("UPDATE users SET active = false, deactivated_at = :n WHERE id = :id"),
                       {"n": now, "id": user_id})


async def set_role(conn: AsyncConnection, user_id: uuid.UUID, role: str) -> None:
    await conn.execute(text("UPDATE users SET role = :r WHERE id = :id"), {"r": role, "id": user_id})


# -- sessions and refresh tokens -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    user_id: uuid.UUID
    expires_at: datetime
    mfa: bool
    revoked_at: datetime | None


async def insert_session(conn: AsyncConnection, session_id: uuid.UUID, user_id: uuid.UUID, now: datetime,
                         expires_at: datetime, mfa: bool) -> None:
    await conn.execute(
        text("INSERT INTO sessions (id, user_id, created_at, expires_at, mfa) VALUES (:id, :u, :n, :e, :m)"),
        {"id": session_id, "u": user_id, "n": now, "e": expires_at, "m": mfa},
    )


async def session_by_id(conn: AsyncConnection, session_id: uuid.UUID) -> Session | None:
    row = (await conn.execute(
        text("SELECT id, user_id, expires_at, mfa, revoked_at FROM sessions WHERE id = :id"), {"id": session_id},
    )).first()
    return Session(*row) if row else None


async def revoke_sessions(conn: AsyncConnection, *, now: datetime, reason: str, user_id: uuid.UUID,
                          session_id: uuid.UUID | None = None) -> list[uuid.UUID]:
    """Revoke one session of a user, or all of them; returns the ids that were live until now."""
    only = " AND id = :s" if session_id is not None else ""
    rows = await conn.scalars(
        text(f"UPDATE sessions SET revoked_at = :n, revoked_reason = :r WHERE user_id = :u{only} "
             "AND revoked_at IS NULL RETURNING id"),
        {"n": now, "r": reason, "u": user_id, "s": session_id},
    )
    revoked = list(rows.all())
    if revoked:
        await conn.execute(
            text("UPDATE refresh_tokens SET revoked_at = :n WHERE family_id = ANY(:f) AND revoked_at IS NULL"),
            {"n": now, "f": revoked},
        )
    return revoked


async def insert_refresh(conn: AsyncConnection, *, token_hash: str, family_id: uuid.UUID, user_id: uuid.UUID,
                         issued_at: datetime, expires_at: datetime, idle_expires_at: datetime | None = None) -> None:
    await conn.execute(
        text("INSERT INTO refresh_tokens (token_hash, family_id, user_id, issued_at, expires_at, idle_expires_at) "
             "VALUES (:h, :f, :u, :i, :e, :d)"),
        {"h": token_hash, "f": family_id, "u": user_id, "i": issued_at, "e": expires_at, "d": idle_expires_at},
    )


@dataclass(frozen=True)
class RefreshRow:
    family_id: uuid.UUID
    user_id: uuid.UUID
    expires_at: datetime
    idle_expires_at: datetime | None
    used_at: datetime | None
    revoked_at: datetime | None
    successor_hash: str | None
    successor_unused: bool


async def refresh_for_update(conn: AsyncConnection, token_hash: str) -> RefreshRow | None:
    """The token and its session, locked: concurrent presentations of one family are decided one by one."""
    row = (await conn.execute(
        text("SELECT t.family_id, t.user_id, t.expires_at, t.idle_expires_at, t.used_at, "
             "coalesce(t.revoked_at, s.revoked_at), t.successor_hash, "
             "(n.token_hash IS NOT NULL AND n.used_at IS NULL AND n.revoked_at IS NULL) "
             "FROM refresh_tokens t JOIN sessions s ON s.id = t.family_id "
             "LEFT JOIN refresh_tokens n ON n.token_hash = t.successor_hash "
             "WHERE t.token_hash = :h FOR UPDATE OF t, s"), {"h": token_hash},
    )).first()
    return RefreshRow(*row) if row else None


async def mark_refresh_used(conn: AsyncConnection, token_hash: str, now: datetime, successor_hash: str) -> None:
    await conn.execute(
        text("UPDATE refresh_tokens SET used_at = coalesce(used_at, :n), successor_hash = :s WHERE token_hash = :h"),
        {"n": now, "h": token_hash, "s": successor_hash},
    )


async def supersede_refresh(conn: AsyncConnection, token_hash: str, now: datetime) -> None:
    """The successor a client never received (it retried): from now on presenting it is reuse."""
    await conn.execute(text("UPDATE refresh_tokens SET used_at = :n WHERE token_hash = :h AND used_at IS NULL"),
                       {"n": now, "h": token_hash})


# -- revocation snapshot ----------------------------------------------------------------------------------------


async def recent_revocations(conn: AsyncConnection, since: datetime) -> tuple[list[tuple[uuid.UUID, datetime]],
                                                                             list[tuple[uuid.UUID, datetime]]]:
    """Users deactivated and sessions revoked since ``since`` (older ones have no unexpired token left)."""
    users = (await conn.execute(
        text("SELECT id, coalesce(deactivated_at, now()) FROM users WHERE NOT active "
             "AND (deactivated_at IS NULL OR deactivated_at > :s)"), {"s": since},
    )).all()
    sessions = (await conn.execute(
        text("SELECT id, revoked_at FROM sessions WHERE revoked_at > :s"), {"s": since},
    )).all()
    return [tuple(r) for r in users], [tuple(r) for r in sessions]  # type: ignore[misc]


# -- MFA -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MfaSecret:
    secret_ciphertext: str
    enabled: bool
    last_step: int | None


async def mfa_secret(conn: AsyncConnection, user_id: uuid.UUID, *, for_update: bool = False) -> MfaSecret | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (await conn.execute(
        text(f"SELECT secret_ciphertext, enabled_at IS NOT NULL, last_step FROM mfa_secrets WHERE user_id = :u{lock}"),
        {"u": user_id},
    )).first()
    return MfaSecret(*row) if row else None


async def put_pending_mfa_secret(conn: AsyncConnection, user_id: uuid.UUID, ciphertext: str) -> None:
    await conn.execute(
        text("INSERT INTO mfa_secrets (user_id, secret_ciphertext) VALUES (:u, :c) ON CONFLICT (user_id) DO UPDATE "
             "SET secret_ciphertext = excluded.secret_ciphertext, last_step = NULL, created_at = now() "
             "WHERE mfa_secrets.enabled_at IS NULL"), {"u": user_id, "c": ciphertext},
    )


async def advance_totp_step(conn: AsyncConnection, user_id: uuid.UUID, step: int) -> bool:
    """Compare-and-set: record ``step`` as the last accepted one unless a later or equal one already is."""
    result = await conn.execute(
        text("UPDATE mfa_secrets SET last_step = :s WHERE user_id = :u AND (last_step IS NULL OR last_step < :s)"),
        {"s": step, "u": user_id},
    )
    return result.rowcount == 1


async def enable_mfa(conn: AsyncConnection, user_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(text("UPDATE mfa_secrets SET enabled_at = :n WHERE user_id = :u"), {"n": now, "u": user_id})


async def delete_mfa(conn: AsyncConnection, user_id: uuid.UUID) -> bool:
    await conn.execute(text("DELETE FROM backup_codes WHERE user_id = :u"), {"u": user_id})
    result = await conn.execute(text("DELETE FROM mfa_secrets WHERE user_id = :u"), {"u": user_id})
    return result.rowcount == 1


async def mfa_enabled(conn: AsyncConnection, user_id: uuid.UUID) -> bool:
    return bool(await conn.scalar(
        text("SELECT 1 FROM mfa_secrets WHERE user_id = :u AND enabled_at IS NOT NULL"), {"u": user_id}))


async def replace_backup_codes(conn: AsyncConnection, user_id: uuid.UUID,
                               codes: list[tuple[uuid.UUID, bytes, bytes]]) -> None:
    await conn.execute(text("DELETE FROM backup_codes WHERE user_id = :u"), {"u": user_id})
    await conn.execute(
        text("INSERT INTO backup_codes (id, user_id, salt, digest) VALUES (:id, :u, :s, :d)"),
        [{"id": i, "u": user_id, "s": s, "d": d} for i, s, d in codes],
    )


async def backup_codes(conn: AsyncConnection, user_id: uuid.UUID, *, used: bool) -> list[tuple[uuid.UUID, bytes, bytes]]:
    condition = "IS NOT NULL" if used else "IS NULL"
    rows = (await conn.execute(
        text(f"SELECT id, salt, digest FROM backup_codes WHERE user_id = :u AND used_at {condition} FOR UPDATE"),
        {"u": user_id},
    )).all()
    return [(r[0], bytes(r[1]), bytes(r[2])) for r in rows]


async def use_backup_code(conn: AsyncConnection, code_id: uuid.UUID, now: datetime) -> bool:
    result = await conn.execute(
        text("UPDATE backup_codes SET used_at = :n WHERE id = :id AND used_at IS NULL"), {"n": now, "id": code_id})
    return result.rowcount == 1


async def backup_codes_left(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    return int(await conn.scalar(
        text("SELECT count(*) FROM backup_codes WHERE user_id = :u AND used_at IS NULL"), {"u": user_id}) or 0)


@dataclass(frozen=True)
class Challenge:
    user_id: uuid.UUID
    expires_at: datetime
    attempts: int
    used_at: datetime | None


async def insert_challenge(conn: AsyncConnection, token_hash: str, user_id: uuid.UUID, now: datetime,
                           expires_at: datetime) -> None:
    await conn.execute(
        text("INSERT INTO mfa_challenges (token_hash, user_id, created_at, expires_at) VALUES (:h, :u, :n, :e)"),
        {"h": token_hash, "u": user_id, "n": now, "e": expires_at},
    )


async def challenge_for_update(conn: AsyncConnection, token_hash: str) -> Challenge | None:
    row = (await conn.execute(
        text("SELECT user_id, expires_at, attempts, used_at FROM mfa_challenges WHERE token_hash = :h FOR UPDATE"),
        {"h": token_hash},
    )).first()
    return Challenge(*row) if row else None


async def update_challenge(conn: AsyncConnection, token_hash: str, *, attempts: int,
                           used_at: datetime | None) -> None:
    await conn.execute(
        text("UPDATE mfa_challenges SET attempts = :a, used_at = :u WHERE token_hash = :h"),
        {"a": attempts, "u": used_at, "h": token_hash},
    )


# -- login throttling --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throttle:
    failures: int
    last_failure_at: datetime | None
    locked_until: datetime | None


async def throttle_for_update(conn: AsyncConnection, key: str) -> Throttle:
    """The failure record of one username digest, locked (created empty if missing): attempts on one
    account are decided one at a time, so parallel guesses cannot slip past the lockout."""
    await conn.execute(text("INSERT INTO login_throttle (key) VALUES (:k) ON CONFLICT DO NOTHING"), {"k": key})
    row = (await conn.execute(
        text("SELECT failures, last_failure_at, locked_until FROM login_throttle WHERE key = :k FOR UPDATE"),
        {"k": key},
    )).one()
    return Throttle(*row)


async def record_failure(conn: AsyncConnection, key: str, *, failures: int, now: datetime,
                         locked_until: datetime | None) -> None:
    await conn.execute(
        text("UPDATE login_throttle SET failures = :f, last_failure_at = :n, locked_until = :l WHERE key = :k"),
        {"f": failures, "n": now, "l": locked_until, "k": key},
    )


async def clear_failures(conn: AsyncConnection, key: str) -> None:
    await conn.execute(text("DELETE FROM login_throttle WHERE key = :k"), {"k": key})


# -- outbox and housekeeping ------------------------------------------------------------------------------------


async def outbox_add(conn: AsyncConnection, event_id: uuid.UUID, topic: str, key: str, body: bytes) -> None:
    await conn.execute(text("INSERT INTO outbox (event_id, topic, key, body) VALUES (:e, :t, :k, :b)"),
                       {"e": event_id, "t": topic, "k": key, "b": body})


async def outbox_remove(conn: AsyncConnection, event_ids: list[uuid.UUID]) -> None:
    await conn.execute(text("DELETE FROM outbox WHERE event_id = ANY(:ids)"), {"ids": event_ids})


async def outbox_claim(conn: AsyncConnection, older_than_seconds: float, limit: int = 500) -> list[Any]:
    """Events committed but not yet published (a publish failed or the process died in between)."""
    return list((await conn.execute(
        text("SELECT event_id, topic, key, body FROM outbox WHERE created_at < now() - make_interval(secs => :a) "
             "ORDER BY created_at LIMIT :l FOR UPDATE SKIP LOCKED"), {"a": older_than_seconds, "l": limit},
    )).all())


async def prune(conn: AsyncConnection, now: datetime, throttle_older_than: datetime) -> None:
    await conn.execute(text("DELETE FROM mfa_challenges WHERE expires_at < :n"), {"n": now})
    await conn.execute(
        text("DELETE FROM login_throttle WHERE last_failure_at < :t AND (locked_until IS NULL OR locked_until < :n)"),
        {"t": throttle_older_than, "n": now},
    )
