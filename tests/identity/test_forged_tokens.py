"""Every verifying service (gateway, auth, screening, audit) refuses each kind of forged or invalid access
token with 401. A control token, signed with the real key and valid claims, is accepted by all of them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.identity.conftest import Endpoints, Forger, MakeUser, Org, b64url, claims_of, session_of, wait_until

REFUSED = {"gateway": 401, "auth": 401, "screening": 401, "audit": 401}


@pytest.fixture
async def genuine(gateway: httpx.AsyncClient, make_user: MakeUser) -> dict[str, Any]:
    """The claims of a real session of a lab technician, to forge variations of."""
    return claims_of((await session_of(gateway, await make_user()))["access_token"])


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_genuine_token_is_accepted_by_every_service(genuine: dict, forger: Forger,
                                                            endpoints: Endpoints) -> None:
    statuses = await endpoints.statuses(headers(forger.sign(genuine)))
    # classify answers 422 to its empty body, audit 403 to a lab technician: both after authentication.
    assert statuses == {"gateway": 422, "auth": 200, "screening": 200, "audit": 403}


async def test_alg_none_is_refused(genuine: dict, forger: Forger, endpoints: Endpoints) -> None:
    token = f"{b64url(json.dumps({'alg': 'none', 'typ': 'JWT', 'kid': forger.kid}).encode())}." \
            f"{b64url(json.dumps(genuine).encode())}."
    assert await endpoints.statuses(headers(token)) == REFUSED


async def test_hs256_signed_with_the_public_key_is_refused(genuine: dict, forger: Forger,
                                                           endpoints: Endpoints) -> None:
    token = jwt.encode(genuine, forger.public_x.encode(), algorithm="HS256", headers={"kid": forger.kid})
    assert await endpoints.statuses(headers(token)) == REFUSED


async def test_a_wrong_audience_is_refused(genuine: dict, forger: Forger, endpoints: Endpoints) -> None:
    assert await endpoints.statuses(headers(forger.sign(genuine | {"aud": "another-platform"}))) == REFUSED


async def test_a_wrong_issuer_is_refused(genuine: dict, forger: Forger, endpoints: Endpoints) -> None:
    assert await endpoints.statuses(headers(forger.sign(genuine | {"iss": "https://evil.example"}))) == REFUSED


async def test_an_expired_token_is_refused(genuine: dict, forger: Forger, endpoints: Endpoints) -> None:
    now = int(time.time())
    expired = genuine | {"iat": now - 1000, "nbf": now - 1000, "exp": now - 60}
    assert await endpoints.statuses(headers(forger.sign(expired))) == REFUSED


async def test_a_not_yet_valid_token_is_refused(genuine: dict, forger: Forger, endpoints: Endpoints) -> None:
    now = int(time.time())
    future = genuine | {"iat": now, "nbf": now + 600, "exp": now + 1200}
    assert await endpoints.statuses(headers(forger.sign(future))) == REFUSED


async def test_a_token_signed_by_another_key_under_our_key_id_is_refused(genuine: dict, forger: Forger,
                                                                         endpoints: Endpoints) -> None:
    token = forger.sign(genuine, key=Ed25519PrivateKey.generate())
    assert await endpoints.statuses(headers(token)) == REFUSED


async def test_a_tampered_payload_is_refused(genuine: dict, forger: Forger, endpoints: Endpoints) -> None:
    head, _, signature = forger.sign(genuine).split(".")
    promoted = b64url(json.dumps(genuine | {"role": "org_admin"}).encode())
    assert await endpoints.statuses(headers(f"{head}.{promoted}.{signature}")) == REFUSED


async def test_a_token_of_a_deactivated_user_is_refused_everywhere(
    gateway: httpx.AsyncClient, make_user: MakeUser, org: Org, endpoints: Endpoints
) -> None:
    member = await make_user()
    tokens = await session_of(gateway, member)
    assert (await endpoints.statuses(headers(tokens["access_token"])))["auth"] == 200
    response = await gateway.post(f"/api/auth/users/{member.id}/deactivate", headers=org.admin_headers)
    assert response.status_code == 204

    async def refused() -> bool:
        return await endpoints.statuses(headers(tokens["access_token"])) == REFUSED

    assert await wait_until(refused, timeout=10), await endpoints.statuses(headers(tokens["access_token"]))
    refresh = await gateway.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 401


async def test_a_token_with_a_role_nobody_has_is_refused(forger: Forger, endpoints: Endpoints) -> None:
    now = int(time.time())
    stranger = {"iss": "clinomic-auth", "aud": "clinomic", "sub": str(uuid.uuid4()), "org": None,
                "role": "superuser", "mfa": True, "jti": "x", "iat": now, "nbf": now, "exp": now + 60}
    assert await endpoints.statuses(headers(forger.sign(stranger))) == REFUSED
