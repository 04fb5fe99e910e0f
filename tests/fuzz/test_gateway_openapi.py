"""Fuzzing the gateway from its own OpenAPI document (Schemathesis), with a signed-in user of each role: no
generated request ends in a 5xx, and every 4xx answer is in the platform's error shape. Raw bodies the schema
cannot describe (nested very deeply, oversized, invalid UTF-8, duplicate keys) are sent to every operation
that takes a JSON body. The examples are derandomised, so a failure reproduces run after run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck

from devstack.stack import Platform
from tests.conftest import bearer, login
from tests.records.helpers import new_org

#: Examples per operation and role: enough to reach every parameter's edge cases, bounded for CI.
EXAMPLES = 8
#: Operations that would end the fuzzing session itself or change its own credentials.
SKIPPED = ("/api/auth/logout", "/api/auth/password", "/api/auth/mfa")


@pytest.fixture(scope="module")
def document(platform: Platform) -> dict[str, Any]:
    """The gateway's OpenAPI document as its code builds it (production serves none)."""
    code = "import json; from gateway.app import create_app; print(json.dumps(create_app().openapi()))"
    done = subprocess.run([sys.executable, "-c", code], env=platform.env | {"LOG_LEVEL": "ERROR"},
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def problems_of(status: int, body: bytes, headers: Any) -> list[str]:
    """What is wrong with an answer: a 5xx, or a 4xx outside the platform's error shape."""
    if status >= 500:
        return [f"{status} answer"]
    if status < 400:
        return []
    try:
        content = json.loads(body)
    except ValueError:
        return [f"{status} answer is not JSON"]
    if not isinstance(content, dict) or not isinstance(content.get("detail"), str):
        return [f"{status} answer lacks a string detail: {str(content)[:200]}"]
    if status == 422:
        errors = content.get("errors")
        if not isinstance(errors, list) or not errors or not all(
                isinstance(e, dict) and {"field", "message", "type"} <= set(e) for e in errors):
            return [f"422 answer without errors of field, message and type: {str(content)[:200]}"]
    return []


@pytest.fixture(scope="module")
async def role_headers(gateway: httpx.AsyncClient) -> dict[str, dict[str, str]]:
    """A fresh organisation's admin, lab technician, doctor and auditor, and the platform administrator, so
    whatever the fuzzing changes stays out of the demo organisation other tests use."""
    org = await new_org(gateway, "fuzz")
    return org.headers | {"platform": bearer(await login(gateway, "platform_demo"))}


def fuzz(schema: Any, base_url: str, headers: dict[str, str], calls: list[str]) -> list[str]:
    found: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(SKIPPED):
            continue

        @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.explicit,
                                                                               hypothesis.Phase.generate])
        @hypothesis.given(case=operation.as_strategy())
        def run(case: Any) -> None:
            calls.append(operation.path)
            try:
                response = case.call(base_url=base_url, headers=headers, timeout=30)
            except requests.RequestException as problem:
                found.append(f"{operation.method.upper()} {operation.path}: {type(problem).__name__}")
                return
            for problem in problems_of(response.status_code, response.content, response.headers):
                found.append(f"{operation.method.upper()} {case.formatted_path}: {problem}")

        run()
    return found


async def test_no_generated_request_of_any_role_gets_a_5xx_or_an_error_outside_the_platform_shape(
    platform: Platform, document: dict[str, Any], role_headers: dict[str, dict[str, str]]
) -> None:
    schema = schemathesis.openapi.from_dict(document)
    found: list[str] = []
    calls: list[str] = []
    for role, headers in role_headers.items():
        found += [f"[{role}] {p}"
                  for p in await asyncio.to_thread(fuzz, schema, platform.gateway_url, headers, calls)]
    assert not found, "\n".join(sorted(set(found))[:40])
    fuzzed = {path for path in document["paths"] if not path.startswith(SKIPPED)}
    assert set(calls) == fuzzed and len(calls) >= len(role_headers) * len(fuzzed)


@pytest.mark.parametrize(("status", "body", "wrong"), [
    (500, b'{"detail": "internal error"}', True),
    (422, b'{"detail": [{"loc": ["body"], "msg": "x", "type": "y"}]}', True),  # FastAPI's own shape
    (400, b"Bad Request", True),
    (422, b'{"detail": "invalid request", "errors": [{"field": "body", "message": "x", "type": "y"}]}', False),
    (404, b'{"detail": "Not Found"}', False),
])
def test_the_shape_check_tells_the_platform_shape_from_others(status: int, body: bytes, wrong: bool) -> None:
    assert bool(problems_of(status, body, {})) is wrong


HOSTILE_BODIES = {
    "nested very deeply": b"[" * 20_000 + b"]" * 20_000,
    "invalid UTF-8": b'{"patient": {"external_id": "\xff\xfe"}}',
    "duplicate keys": b'{"patient": {"external_id": "A"}, "patient": {"external_id": "B"}}',
    "truncated": b'{"patient": {"external_id": ',
    "oversized": b'{"pad": "' + b"x" * (12 * 2**20) + b'"}',
}


#: JSON operations the gateway routes to a service through a catch-all path (no body in its document).
ROUTED_JSON = (("POST", "/api/auth/login"), ("POST", "/api/auth/users"), ("POST", "/api/patients"),
               ("POST", "/api/consents"), ("POST", "/api/labs"), ("POST", "/api/doctors"),
               ("PUT", "/api/screening/policy"))


@pytest.mark.parametrize("kind", sorted(HOSTILE_BODIES))
async def test_hostile_bodies_to_every_json_operation_get_a_4xx_in_the_platform_shape(
    document: dict[str, Any], gateway: httpx.AsyncClient, role_headers: dict[str, dict[str, str]], kind: str
) -> None:
    documented = [(method.upper(), path) for path, methods in document["paths"].items()
                  for method, spec in methods.items()
                  if method in ("post", "put", "patch") and not path.startswith(SKIPPED)
                  and "application/json" in spec.get("requestBody", {}).get("content", {})]
    assert ("POST", "/api/screening/classify") in documented
    found = []
    for method, path in [*documented, *ROUTED_JSON]:
        response = await gateway.request(method, path, content=HOSTILE_BODIES[kind],
                                         headers=role_headers["admin"] | {"content-type": "application/json"})
        if not 400 <= response.status_code < 500:
            found.append(f"{method} {path}: {response.status_code}")
        found += [f"{method} {path}: {p}"
                  for p in problems_of(response.status_code, response.content, response.headers)]
    assert not found, "\n".join(found)
