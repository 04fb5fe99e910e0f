"""Identity events: organisations, users and the authentication trail, all on ``clinomic.identity``.

None carries a password, token, TOTP secret or code, backup code or typed-in username: users are named by
id, failed logins by a keyed digest of what was typed. Every verifier reads ``UserDeactivated`` and
``SessionsRevoked`` to refuse access tokens before they expire (``shared.tokens.watch_revocations``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class OrganizationCreatedV1(_Event):
    """Tells the screening service to provision the organisation's schema."""

    organization_id: uuid.UUID
    slug: str


class UserCreatedV1(_Event):
    user_id: uuid.UUID
    role: str


class LoginSucceededV1(_Event):
    user_id: uuid.UUID
    client_ip: str | None
    #: ``password``, ``password+totp`` or ``password+backup_code``
    method: str | None = None


class LoginFailedV1(_Event):
    """A failed login; the username is a keyed hash so that typed-in passwords never land in the ledger."""

    username_digest: str
    user_id: uuid.UUID | None
    client_ip: str | None
    #: ``credentials`` (unknown user, wrong password or inactive account alike), ``locked``, ``mfa``
    reason: str | None = None


class AccountLockedV1(_Event):
    """Too many consecutive failures for one username (known or not): refused until ``locked_until``."""

    username_digest: str
    user_id: uuid.UUID | None
    failures: int
    locked_until: datetime
    client_ip: str | None


class MfaEnabledV1(_Event):
    user_id: uuid.UUID


class MfaDisabledV1(_Event):
    user_id: uuid.UUID
    #: ``user`` (with a fresh TOTP code) or ``admin_reset``
    by: Literal["user", "admin_reset"]


class BackupCodeUsedV1(_Event):
    user_id: uuid.UUID
    remaining: int


class BackupCodesRegeneratedV1(_Event):
    user_id: uuid.UUID


class TotpReplayRefusedV1(_Event):
    """A TOTP code of an already accepted (or earlier) time step was presented again (ASVS 2.8.4)."""

    user_id: uuid.UUID
    purpose: Literal["login", "enrolment", "disable", "backup_codes"]
    client_ip: str | None


class BackupCodeReuseRefusedV1(_Event):
    user_id: uuid.UUID
    client_ip: str | None


class RefreshTokenReuseDetectedV1(_Event):
    """An already-used refresh token came back (RFC 9700 §4.14.2): its whole session was revoked."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    client_ip: str | None


class SessionsRevokedV1(_Event):
    """Sessions (refresh-token families) ended; verifiers refuse their access tokens from now on."""

    user_id: uuid.UUID
    session_ids: list[uuid.UUID]
    reason: Literal["logout", "logout_all", "refresh_token_reuse", "password_changed", "password_reset",
                    "deactivated", "role_requires_mfa"]


class PasswordChangedV1(_Event):
    user_id: uuid.UUID
    #: True when an administrator's reset forced the change
    forced: bool


class PasswordResetV1(_Event):
    """An administrator set a temporary password; the user must change it at the next login."""

    user_id: uuid.UUID
    mfa_reset: bool


class UserDeactivatedV1(_Event):
    user_id: uuid.UUID


class RoleChangedV1(_Event):
    user_id: uuid.UUID
    old_role: str
    new_role: str


ORGANIZATION_CREATED = ("OrganizationCreated", 1)
USER_CREATED = ("UserCreated", 1)
LOGIN_SUCCEEDED = ("LoginSucceeded", 1)
LOGIN_FAILED = ("LoginFailed", 1)
ACCOUNT_LOCKED = ("AccountLocked", 1)
MFA_ENABLED = ("MfaEnabled", 1)
MFA_DISABLED = ("MfaDisabled", 1)
BACKUP_CODE_USED = ("BackupCodeUsed", 1)
BACKUP_CODES_REGENERATED = ("BackupCodesRegenerated", 1)
TOTP_REPLAY_REFUSED = ("TotpReplayRefused", 1)
BACKUP_CODE_REUSE_REFUSED = ("BackupCodeReuseRefused", 1)
REFRESH_TOKEN_REUSE_DETECTED = ("RefreshTokenReuseDetected", 1)
SESSIONS_REVOKED = ("SessionsRevoked", 1)
PASSWORD_CHANGED = ("PasswordChanged", 1)
PASSWORD_RESET = ("PasswordReset", 1)
USER_DEACTIVATED = ("UserDeactivated", 1)
ROLE_CHANGED = ("RoleChanged", 1)
