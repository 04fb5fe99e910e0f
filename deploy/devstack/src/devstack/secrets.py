"""Development secrets: generated once per checkout into ``.clinomic/dev.env`` (never committed)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def generate() -> dict[str, str]:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "MASTER_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AUDIT_SIGNING_KEY": secrets.token_urlsafe(48),
        "JWT_PRIVATE_KEY": pem.replace("\n", "\\n"),
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
