"""Access tokens: only EdDSA tokens of our issuer, for our audience, unexpired, with a known key pass."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.keys import SigningKey
from shared.tokens import InvalidToken, Role, TokenVerifier

PEM = Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
KEY = SigningKey.from_pem(PEM)


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {"iss": "clinomic-auth", "aud": "clinomic", "sub": str(uuid.uuid4()), "org": str(uuid.uuid4()),
            "role": "lab_technician", "mfa": False, "jti": "j", "iat": now, "nbf": now, "exp": now + 60} | overrides


def sign(payload: dict[str, object], key: object = None, alg: str = "EdDSA", kid: str | None = None) -> str:
    return jwt.encode(payload, key or KEY.private_key, algorithm=alg, headers={"kid": kid or KEY.kid})


@pytest.fixture
def verifier() -> TokenVerifier:
    v = TokenVerifier("http://127.0.0.1:1/unused", issuer="clinomic-auth", audience="clinomic",
                      refetch_interval_s=3600)
    v.load_jwks({"keys": [KEY.public_jwk()]})
    return v


async def test_a_valid_token_yields_the_principal(verifier: TokenVerifier) -> None:
    principal = await verifier.verify(sign(claims()))
    assert principal.role is Role.LAB_TECHNICIAN


async def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": KEY.kid}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    with pytest.raises(InvalidToken):
        await verifier.verify(f"{header.decode()}.{body.decode()}.")


async def test_hs256_signed_with_the_public_key_is_refused(verifier: TokenVerifier) -> None:
    public = KEY.public_jwk()["x"].encode()
    forged = jwt.encode(claims(), public, algorithm="HS256", headers={"kid": KEY.kid})
    with pytest.raises(InvalidToken):
        await verifier.verify(forged)


@pytest.mark.parametrize("override", [{"aud": "elsewhere"}, {"iss": "someone-else"},
                                      {"exp": -120}, {"nbf": 600}])
async def test_wrong_audience_issuer_or_validity_window_is_refused(verifier: TokenVerifier, override: dict) -> None:
    """Times are offsets from now, computed when the test runs (not when it is collected)."""
    now = int(time.time())
    timed = {k: now + v if k in ("exp", "nbf") else v for k, v in override.items()}
    with pytest.raises(InvalidToken):
        await verifier.verify(sign(claims(**timed)))


async def test_a_token_signed_by_an_unknown_key_is_refused(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(sign(claims(), key=Ed25519PrivateKey.generate(), kid=KEY.kid))
