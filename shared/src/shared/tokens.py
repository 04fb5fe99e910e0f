"""Access-token verification for every service: EdDSA only, issuer and audience pinned, keys from JWKS."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
import jwt


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    ORG_ADMIN = "org_admin"
    LAB_TECHNICIAN = "lab_technician"
    DOCTOR = "doctor"
    AUDITOR = "auditor"


class InvalidToken(Exception):
    """The token is not one this platform issued, or no longer valid. Callers answer 401."""


ALGORITHMS = ["EdDSA"]


@dataclass(frozen=True)
class Principal:
    """The verified caller: whose request it is, in which organisation, with which role."""

    user_id: uuid.UUID
    org_id: uuid.UUID | None
    role: Role
    mfa: bool
    token_id: str


class TokenVerifier:
    """Verifies access tokens against the auth service's JWKS, refetching it when an unknown ``kid`` appears."""

    def __init__(self, jwks_url: str, *, issuer: str, audience: str, refetch_interval_s: float = 10.0) -> None:
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._refetch_interval_s = refetch_interval_s
        self._lock = asyncio.Lock()

    def load_jwks(self, jwks: dict[str, Any]) -> None:
        keys = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                keys[jwk["kid"]] = jwt.PyJWK.from_dict(jwk, algorithm="EdDSA")
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def refresh(self) -> None:
        async with self._lock:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.get(self._jwks_url)
                response.raise_for_status()
                self.load_jwks(response.json())

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token has no key id")
        if kid not in self._keys and time.monotonic() - self._fetched_at > self._refetch_interval_s:
            try:
                await self.refresh()
            except httpx.HTTPError as exc:
                raise InvalidToken("signing keys unavailable") from exc
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        return self.decode(token, key)

    def decode(self, token: str, key: Any) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["iss", "aud", "sub", "role", "jti", "iat", "exp"]},
                leeway=5,
            )
            return Principal(
                user_id=uuid.UUID(claims["sub"]),
                org_id=uuid.UUID(claims["org"]) if claims.get("org") else None,
                role=Role(claims["role"]),
                mfa=bool(claims.get("mfa", False)),
                token_id=str(claims["jti"]),
            )
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise InvalidToken("token rejected") from exc
