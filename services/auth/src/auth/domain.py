"""Identity rules without I/O: token claims, password policy, TOTP steps, lockout, refresh rotation, authority.

Each rule is a pure function of its inputs (time included) so that it can be tested directly and with
hypothesis; the service applies them inside transactions.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache

import pyotp

from shared.text import fold_accents, username_key
from shared.tokens import Role, Scope

# -- access tokens -------------------------------------------------------------------------------------------


def access_claims(*, user_id: uuid.UUID, org_id: uuid.UUID | None, role: str, mfa: bool, issuer: str,
                  audience: str, now: datetime, ttl: timedelta, session_id: uuid.UUID | None = None,
                  scope: Scope | None = None) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": audience,
        "sub": str(user_id),
        "org": str(org_id) if org_id else None,
        "role": role,
        "mfa": mfa,
        "jti": str(uuid.uuid4()),
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    if scope is not None:
        claims["scope"] = scope.value
    return claims


def new_refresh_token() -> str:
    """256 bits from the OS CSPRNG; only its hash is ever stored."""
    return secrets.token_urlsafe(32)


def refresh_token_hash(token: str) -> str:
    """SHA-256 suffices for a 256-bit random secret (no dictionary to try); it also names MFA challenges."""
    return hashlib.sha256(token.encode()).hexdigest()


def username_digest(username: str, key: bytes) -> str:
    """A keyed digest of the username's one normal form (``shared.text.username_key``, the same form the
    user lookup compares): the lockout counter of every spelling that reaches an account is that account's.
    It also lets the ledger correlate failed logins without storing what was typed."""
    return hmac.new(key, username_key(username).encode(), hashlib.sha256).hexdigest()[:32]


# -- what a successful authentication leads to ---------------------------------------------------------------


class Next(StrEnum):
    """The step after a verified factor: more proof, a restricted token, or a full session."""

    MFA = "mfa_required"
    PASSWORD_CHANGE = "password_change_required"
    MFA_ENROLMENT = "mfa_enrolment_required"
    AUTHENTICATED = "authenticated"


def next_step(*, mfa_enabled: bool, mfa_done: bool, must_change_password: bool, role: Role,
              mfa_required_roles: frozenset[Role]) -> Next:
    """Password first, then the second factor, then a forced password change, then enforced enrolment."""
    if mfa_enabled and not mfa_done:
        return Next.MFA
    if must_change_password:
        return Next.PASSWORD_CHANGE
    if role in mfa_required_roles and not mfa_enabled:
        return Next.MFA_ENROLMENT
    return Next.AUTHENTICATED


def restricted_scope(step: Next) -> Scope | None:
    return {Next.PASSWORD_CHANGE: Scope.PASSWORD_CHANGE, Next.MFA_ENROLMENT: Scope.MFA_ENROLMENT}.get(step)


# -- passwords (NIST SP 800-63B §5.1.1.2, ASVS V2.1) ------------------------------------------------------------

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128
#: zxcvbn's guessability score (0-4) below which a password is refused as too easy to guess.
MIN_GUESSABILITY_SCORE = 3


def normalise_password(password: str) -> str:
    """NFKC, so the same password typed on another keyboard or system hashes the same (800-63B)."""
    return unicodedata.normalize("NFKC", password)


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The 30 000 most common passwords from leaked corpora, as shipped with zxcvbn."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def password_problems(password: str, *, context: Iterable[str] = ()) -> list[str]:
    """Why a new password is refused (empty when it is accepted). Never echoes the password.

    Length counts Unicode code points after NFKC; any character is allowed; there are no composition rules
    (no "one digit, one symbol"), only a refusal of what is easy to guess: common and breached passwords,
    repeats and sequences, and passwords built on context words such as the username.
    """
    normalised = normalise_password(password)
    length = len(normalised)
    if length < MIN_PASSWORD_LENGTH:
        return [f"must be at least {MIN_PASSWORD_LENGTH} characters long"]
    if length > MAX_PASSWORD_LENGTH:
        return [f"must be at most {MAX_PASSWORD_LENGTH} characters long"]
    folded = normalised.casefold()
    # Accents folded too: one accent (``Pàssword1234``) must not turn a listed password into an unlisted one.
    candidates = {folded, folded.strip(), fold_accents(folded), fold_accents(folded).strip()}
    if candidates & common_passwords():
        return ["appears in a list of common or breached passwords"]
    words = [fold_accents(w.casefold()) for w in context if w and len(w) >= 4]
    if any(w in fold_accents(folded) for w in words):
        return ["must not contain your username or the platform's name"]
    from zxcvbn import zxcvbn

    # Scored without accents, which add next to nothing for a guesser who tries them on dictionary words.
    estimate = zxcvbn(fold_accents(normalised), user_inputs=words, max_length=MAX_PASSWORD_LENGTH)
    if estimate["score"] < MIN_GUESSABILITY_SCORE:
        warning = estimate["feedback"].get("warning") or "it follows a predictable pattern"
        return [f"is too easy to guess: {warning.rstrip('.')}"]
    return []


def temporary_password() -> str:
    """What an administrator's reset sets: 120 random bits, to be changed at the next login."""
    return secrets.token_urlsafe(15)


# -- TOTP (RFC 6238) -------------------------------------------------------------------------------------------

TOTP_PERIOD_SECONDS = 30
TOTP_DIGITS = 6
#: Steps accepted either side of the current one (clock drift, slow typing).
TOTP_WINDOW = 1


class TotpVerdict(StrEnum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"  # right code, but of a step already accepted or earlier (ASVS 2.8.4)
    INVALID = "invalid"


@dataclass(frozen=True)
class TotpCheck:
    verdict: TotpVerdict
    step: int | None = None


def totp_step(now: float) -> int:
    return math.floor(now / TOTP_PERIOD_SECONDS)


def totp_code(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD_SECONDS).generate_otp(step)


def check_totp(secret: str, code: str, now: float, last_step: int | None) -> TotpCheck:
    """Accept a code of the current step ±1 that is later than the last step accepted for this secret.

    A matching code of ``last_step`` or earlier is a replay: each code works once, and once a step has been
    accepted no code of an earlier step works either. The service stores the returned step as the new
    ``last_step`` with a compare-and-set, so two concurrent uses of one code cannot both pass.
    """
    candidate = "".join(code.split())
    if len(candidate) != TOTP_DIGITS or not (candidate.isascii() and candidate.isdigit()):  # "١٢٣٤٥٦" too
        return TotpCheck(TotpVerdict.INVALID)
    current = totp_step(now)
    matches = [s for s in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1)
               if hmac.compare_digest(totp_code(secret, s), candidate)]
    fresh = [s for s in matches if last_step is None or s > last_step]
    if fresh:
        return TotpCheck(TotpVerdict.ACCEPTED, max(fresh))
    if matches:
        return TotpCheck(TotpVerdict.REPLAYED, max(matches))
    return TotpCheck(TotpVerdict.INVALID)


def new_totp_secret() -> str:
    """160 random bits in base32, the size RFC 4226 recommends."""
    return pyotp.random_base32(32)


# -- backup codes ------------------------------------------------------------------------------------------------

BACKUP_CODE_COUNT = 10
_BACKUP_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud and typed by hand
_BACKUP_LENGTH = 24  # log2(31) × 24 ≈ 119 bits ≥ 112 (ASVS 2.6.2): safe with a fast salted hash


def new_backup_codes(count: int = BACKUP_CODE_COUNT) -> list[str]:
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_BACKUP_ALPHABET) for _ in range(_BACKUP_LENGTH))
        codes.append("-".join(raw[i:i + 4] for i in range(0, _BACKUP_LENGTH, 4)))
    return codes


def normalise_backup_code(code: str) -> str:
    return "".join(ch for ch in code.casefold() if ch.isalnum())


def backup_code_digest(code: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + normalise_backup_code(code).encode()).digest()


def matching_backup_code(code: str, stored: Iterable[tuple[object, bytes, bytes]]) -> object | None:
    """The id of the stored ``(id, salt, digest)`` the code matches; every candidate is compared."""
    found = None
    for ident, salt, digest in stored:
        if hmac.compare_digest(backup_code_digest(code, salt), digest):
            found = ident
    return found


# -- lockout ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockoutPolicy:
    threshold: int = 10
    base_seconds: float = 60.0
    max_seconds: float = 3600.0
    reset_seconds: float = 86400.0


def lockout_seconds(failures: int, policy: LockoutPolicy) -> float:
    """Lock for ``base`` at the threshold-th consecutive failure, doubling with each further one, capped."""
    if failures < policy.threshold:
        return 0.0
    exponent = min(failures - policy.threshold, 32)
    return min(policy.base_seconds * 2.0 ** exponent, policy.max_seconds)


def effective_failures(failures: int, last_failure_at: datetime | None, now: datetime,
                       policy: LockoutPolicy) -> int:
    """Consecutive failures still counted: none once the last failure is older than ``reset_seconds``."""
    if last_failure_at is None or now - last_failure_at >= timedelta(seconds=policy.reset_seconds):
        return 0
    return failures


def retry_after(locked_until: datetime | None, now: datetime) -> int:
    """Whole seconds until a lock ends (0: not locked)."""
    if locked_until is None or locked_until <= now:
        return 0
    return max(1, math.ceil((locked_until - now).total_seconds()))


# -- refresh tokens (RFC 9700 §4.14.2) -------------------------------------------------------------------------


class RefreshVerdict(StrEnum):
    ROTATE = "rotate"
    GRACE = "grace"  # the immediately previous token, retried within the grace window: rotate again
    REUSED = "reused"
    EXPIRED = "expired"  # the session's absolute lifetime is over
    IDLE = "idle"  # unused for longer than the idle timeout
    REVOKED = "revoked"


@dataclass(frozen=True)
class StoredRefresh:
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None
    idle_expires_at: datetime | None = None
    #: True when this token has been rotated and the token it was rotated into is still unused.
    successor_unused: bool = False


def judge_refresh(stored: StoredRefresh, now: datetime, *, grace: timedelta = timedelta(0)) -> RefreshVerdict:
    """A used token presented again means it was stolen or replayed: the whole family goes (RFC 9700).

    The one exception is a client's retry: within ``grace`` of its rotation, the immediately previous token
    (the one whose successor nobody has used yet) rotates again, and that successor stops working.
    """
    if stored.revoked_at is not None:
        return RefreshVerdict.REVOKED
    if stored.used_at is not None:
        if stored.successor_unused and now - stored.used_at < grace:
            return RefreshVerdict.GRACE
        return RefreshVerdict.REUSED
    if now >= stored.expires_at:
        return RefreshVerdict.EXPIRED
    if stored.idle_expires_at is not None and now >= stored.idle_expires_at:
        return RefreshVerdict.IDLE
    return RefreshVerdict.ROTATE


def refresh_expiry(now: datetime, session_expires_at: datetime, idle: timedelta) -> datetime:
    """When a newly issued refresh token stops working if it is not used: never after its session."""
    return min(now + idle, session_expires_at)


# -- who may administer whom ---------------------------------------------------------------------------------


ASSIGNABLE_BY_ORG_ADMIN = frozenset({Role.ORG_ADMIN, Role.LAB_TECHNICIAN, Role.DOCTOR, Role.AUDITOR})


def may_administer(*, actor_role: Role, actor_org: uuid.UUID | None, actor_id: uuid.UUID,
                   target_role: Role, target_org: uuid.UUID | None, target_id: uuid.UUID) -> bool:
    """An org admin administers the users of its own organisation; a platform admin, organisations' admins.

    Nobody administers themselves through these routes (no self-deactivation or self-demotion that would
    leave an organisation without an administrator).
    """
    if actor_id == target_id:
        return False
    if actor_role is Role.ORG_ADMIN:
        return actor_org is not None and target_org == actor_org and target_role in ASSIGNABLE_BY_ORG_ADMIN
    if actor_role is Role.PLATFORM_ADMIN:
        return target_role is Role.ORG_ADMIN and target_org is not None
    return False


def may_assign(*, actor_role: Role, new_role: Role) -> bool:
    if actor_role is Role.ORG_ADMIN:
        return new_role in ASSIGNABLE_BY_ORG_ADMIN
    if actor_role is Role.PLATFORM_ADMIN:
        return new_role is Role.ORG_ADMIN
    return False
