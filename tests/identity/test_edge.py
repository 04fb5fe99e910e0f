"""The gateway's edge: security headers on every answer (413 and 422 included), CORS only for configured
origins, a ceiling on request bodies, and no way through /api/auth to the auth service's internal routes."""

from __future__ import annotations

import httpx

from devstack import stack

ALLOWED_ORIGIN = "https://app.clinomic.test"  # CORS_ORIGINS in tests/conftest.py
MAX_BODY = 1_048_576


async def test_every_answer_carries_the_security_headers(gateway: httpx.AsyncClient) -> None:
    for response in (await gateway.get("/health/live"), await gateway.get("/api/auth/me"),
                     await gateway.post("/api/auth/login", json={}),
                     await gateway.post("/api/auth/login", content=b"[" * 100,
                                        headers={"content-type": "application/json"})):
        assert_security_headers(response.headers)


async def test_a_configured_origin_passes_the_cors_preflight(gateway: httpx.AsyncClient) -> None:
    response = await gateway.options("/api/auth/login", headers={
        "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in response.headers


async def test_any_other_origin_gets_no_cors_permission(gateway: httpx.AsyncClient) -> None:
    preflight = await gateway.options("/api/auth/login", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    simple = await gateway.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


def assert_security_headers(headers: httpx.Headers) -> None:
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert headers["strict-transport-security"].startswith("max-age=")
    assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in headers["content-security-policy"]


def assert_too_large(response: httpx.Response) -> None:
    """413 in the platform's error shape, with the headers every other answer carries (issue 13, item 6)."""
    assert response.status_code == 413
    assert response.json()["errors"] == [{"field": "body", "message": f"must be at most {MAX_BODY} bytes",
                                          "type": "body_too_large"}]
    assert_security_headers(response.headers)


async def test_a_body_declared_larger_than_the_ceiling_gets_413(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/auth/login", content=b"{" + b" " * MAX_BODY + b"}",
                                  headers={"content-type": "application/json"})
    assert_too_large(response)


async def test_a_streamed_body_growing_past_the_ceiling_gets_413(gateway: httpx.AsyncClient) -> None:
    async def chunks():  # no content-length: only counting what arrives can stop it
        for _ in range(20):
            yield b" " * 65536

    response = await gateway.post("/api/auth/login", content=chunks(),
                                  headers={"content-type": "application/json"})
    assert_too_large(response)


async def test_the_auth_services_internal_routes_are_not_reachable_through_the_gateway(
    gateway: httpx.AsyncClient, platform: stack.Platform
) -> None:
    async with httpx.AsyncClient() as direct:
        credential = {"x-service-token": platform.env["INTERNAL_SERVICE_TOKEN"]}
        assert (await direct.get(f"{platform.urls['auth']}/internal/revocations",
                                 headers=credential)).status_code == 200
    for path in ("/api/auth/%2e%2e/%2e%2e/internal/revocations", "/api/auth/..%2F..%2Finternal/revocations",
                 "/internal/revocations"):
        assert (await gateway.get(path)).status_code in (401, 404), path  # 401: no service credential
