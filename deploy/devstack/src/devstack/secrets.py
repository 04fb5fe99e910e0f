"""Development secrets: generated once per checkout into ``.clinomic/dev.env`` (never committed)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _ed25519_pem() -> str:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem.replace("\n", "\\n")


def generate() -> dict[str, str]:
    return {
        "MASTER_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AUDIT_SIGNING_KEY": secrets.token_urlsafe(48),
        "JWT_PRIVATE_KEY": _ed25519_pem(),
        # Signs the audit ledger's Merkle tree heads (a different key from the tokens' on purpose).
        "AUDIT_TREE_HEAD_KEY": _ed25519_pem(),
        # Password of the audit service's own login role (SELECT/INSERT on the ledger only).
        "AUDIT_DB_PASSWORD": secrets.token_urlsafe(24),
        # HMAC key of the blind index for exact-match patient name search (screening service).
        "PHI_BLIND_INDEX_KEY": secrets.token_urlsafe(48),
        # HMAC key of the pseudonymous patient keys on the de-identified analytics stream (screening service).
        "ANALYTICS_PSEUDONYM_KEY": secrets.token_urlsafe(48),
        # Fernet key that encrypts TOTP secrets at rest (auth service).
        "MFA_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        # Presented by every service on, and demanded for, the internal routes (docs/security.md).
        "INTERNAL_SERVICE_TOKEN": secrets.token_urlsafe(48),
    }


def load_or_create(path: Path) -> dict[str, str]:
    """Secrets from the environment win; missing ones come from (or are added to) ``path``."""
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                stored[name] = value
    fresh = generate()
    missing = {k: v for k, v in fresh.items() if k not in stored}
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored |= missing
        path.write_text("".join(f"{k}={v}\n" for k, v in stored.items()))
        path.chmod(0o600)
    return {k: os.environ.get(k, v) for k, v in stored.items()}
