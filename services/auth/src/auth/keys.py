"""The Ed25519 keys that sign access tokens, and their public JWKs (kid = RFC 7638 thumbprint).

``JWT_PRIVATE_KEY`` holds one or more PEM blocks, newest first: the first signs, every one is published
in the JWKS, so tokens signed by a retiring key keep verifying until they expire (see docs/identity.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.settings import SecretProblem


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey
    kid: str

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem.replace("\\n", "\n").encode(), password=None)
        except (ValueError, TypeError):
            raise SecretProblem("JWT_PRIVATE_KEY is not a readable PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SecretProblem("JWT_PRIVATE_KEY must be an Ed25519 key")
        x = _b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
        return cls(key, _b64(hashlib.sha256(thumbprint.encode()).digest()))

    def public_jwk(self) -> dict[str, Any]:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw), "kid": self.kid, "alg": "EdDSA", "use": "sig"}


_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL)


@dataclass(frozen=True)
class SigningKeys:
    """The signing key (first) and the retiring keys that still verify (the rest)."""

    keys: tuple[SigningKey, ...]

    @classmethod
    def from_pem(cls, pems: str) -> SigningKeys:
        blocks = _PEM_BLOCK.findall(pems.replace("\\n", "\n"))
        if not blocks:
            raise SecretProblem("JWT_PRIVATE_KEY is not a readable PEM private key")
        keys = tuple(SigningKey.from_pem(block) for block in blocks)
        if len({k.kid for k in keys}) != len(keys):
            raise SecretProblem("JWT_PRIVATE_KEY lists the same key twice")
        return cls(keys)

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}


def generate_pem() -> str:
    """A fresh Ed25519 private key in PEM (used by the dev launcher and tests)."""
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                       serialization.NoEncryption())
        .decode()
    )
