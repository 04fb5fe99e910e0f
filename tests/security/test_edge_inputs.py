"""Hostile input at every edge (issue 13, items 3, 4, 7 and 9): deep or malformed JSON, control characters in
bodies, paths and filters, directly at the services as well as through the gateway; the service credential on
internal routes; and no body shape at all that yields a 5xx or disturbs the next caller."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack import stack
from tests.conftest import bearer, login, new_patient_id
from tests.records.helpers import HEALTHY_CBC, new_org

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"patient": ' * 5_000 + b"1" + b"}" * 5_000
JSON = {"content-type": "application/json"}


def assert_invalid(response: httpx.Response, field: str | None = None, kind: str | None = None) -> None:
    """The platform's 422: a list of {field, message, type}."""
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert errors and all(set(e) == {"field", "message", "type"} for e in errors), errors
    if field is not None:
        assert any(e["field"] == field for e in errors), errors
    if kind is not None:
        assert any(e["type"] == kind for e in errors), errors


@pytest.fixture(scope="module")
async def auditor(gateway: httpx.AsyncClient) -> dict[str, str]:
    return bearer(await login(gateway, "auditor_demo"))


@pytest.mark.parametrize("path", ["/api/screening/classify", "/api/patients", "/api/screening/batch",
                                  "/api/auth/login"])
@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["arrays", "objects"])
async def test_a_deeply_nested_body_is_a_422_in_the_platforms_shape(gateway: httpx.AsyncClient, lab: dict,
                                                                   path: str, body: bytes) -> None:
    assert_invalid(await gateway.post(path, content=body, headers=lab | JSON), "body", "json_too_deep")


@pytest.mark.parametrize("path", ["/api/screening/classify", "/api/patients", "/api/labs", "/api/auth/login"])
@pytest.mark.parametrize("body", [b'{"patient": ', b"\xff\xfe{}", b"{'a': 1}", b"[" * 20])
async def test_malformed_json_is_a_422_in_the_platforms_shape(gateway: httpx.AsyncClient, lab: dict,
                                                              path: str, body: bytes) -> None:
    assert_invalid(await gateway.post(path, content=body, headers=lab | JSON), "body")


async def test_a_deep_json_batch_is_refused_by_the_batch_reader_too() -> None:
    from gateway.batch import JSON as SOURCE, UnreadableBatch, read_batch

    with pytest.raises(UnreadableBatch) as refused:
        read_batch(DEEP, SOURCE, 10)
    assert refused.value.problem.type == "json_too_deep"


async def test_a_nul_in_the_path_is_a_422_not_a_500(gateway: httpx.AsyncClient, lab: dict) -> None:
    for path in ("/api/patients/%00", "/api/labs/a%01b", "/api/screening/history/%7f"):
        assert_invalid(await gateway.get(path, headers=lab), "path", "control_character")


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/labs", {"name": "Lab\x00"}, "name"),
    ("/api/labs", {"name": "Lab", "address": "Main St\x00"}, "address"),
    ("/api/doctors", {"name": "Dr\x00 Who"}, "name"),
    ("/api/doctors", {"name": "Dr Who", "specialty": "\x1bhaem"}, "specialty"),
    ("/api/patients", {"external_id": new_patient_id(), "name": "Jane\x00"}, "name"),
    ("/api/patients/search", {"name": "\x00"}, "name"),
])
async def test_a_control_character_in_a_record_field_is_a_422(gateway: httpx.AsyncClient, admin: dict,
                                                              platform: stack.Platform, path: str,
                                                              body: dict[str, Any], field: str) -> None:
    assert_invalid(await gateway.post(path, json=body, headers=admin), field, "control_character")
    async with httpx.AsyncClient(base_url=platform.urls["screening"], timeout=30) as direct:
        assert_invalid(await direct.post(path, json=body, headers=admin), field, "control_character")


async def test_a_control_character_in_classify_is_a_422(gateway: httpx.AsyncClient, lab: dict) -> None:
    body = {"patient": {"external_id": new_patient_id(), "name": "Jane\x00Doe"}, "cbc": HEALTHY_CBC}
    assert_invalid(await gateway.post("/api/screening/classify", json=body, headers=lab), "patient.name",
                   "control_character")


@pytest.mark.parametrize(("service", "path", "query"), [
    ("screening", "/api/patients", {"external_id": "P\x00"}),
    ("screening", "/api/screening/history", {"patient_external_id": "P\x00"}),
    ("screening", "/api/consents", {"consent_type": "scr\x00"}),
])
async def test_a_control_character_in_a_record_filter_is_a_422(gateway: httpx.AsyncClient, lab: dict,
                                                               platform: stack.Platform, service: str,
                                                               path: str, query: dict[str, str]) -> None:
    assert_invalid(await gateway.get(path, params=query, headers=lab))
    async with httpx.AsyncClient(base_url=platform.urls[service], timeout=30) as direct:
        assert_invalid(await direct.get(path, params=query, headers=lab), f"query.{next(iter(query))}",
                       "control_character")


@pytest.mark.parametrize("name", ["event_type", "actor", "entity"])
async def test_a_control_character_in_an_audit_filter_is_a_422(gateway: httpx.AsyncClient, auditor: dict,
                                                               platform: stack.Platform, name: str) -> None:
    assert_invalid(await gateway.get("/api/audit", params={name: "Login\x00"}, headers=auditor))
    async with httpx.AsyncClient(base_url=platform.urls["audit"], timeout=30) as direct:
        assert_invalid(await direct.get("/api/audit", params={name: "Login\x00"}, headers=auditor),
                       f"query.{name}", "control_character")


async def test_classify_refuses_fields_naming_a_tenant(gateway: httpx.AsyncClient, lab: dict) -> None:
    for extra in ({"organization_id": str(uuid.uuid4())}, {"tenant_id": str(uuid.uuid4())}):
        body = {"patient": {"external_id": new_patient_id()}, "cbc": HEALTHY_CBC} | extra
        assert_invalid(await gateway.post("/api/screening/classify", json=body, headers=lab), next(iter(extra)),
                       "extra_forbidden")
    nested = {"patient": {"external_id": new_patient_id(), "organization_id": str(uuid.uuid4())},
              "cbc": HEALTHY_CBC}
    assert_invalid(await gateway.post("/api/screening/classify", json=nested, headers=lab),
                   "patient.organization_id", "extra_forbidden")


@pytest.mark.parametrize(("service", "method", "path"), [
    ("auth", "GET", "/internal/revocations"),
    ("screening", "POST", "/internal/admissions"),
    ("screening", "POST", "/internal/admissions/batch"),
])
async def test_internal_routes_answer_only_the_service_credential(platform: stack.Platform, lab: dict,
                                                                  service: str, method: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=platform.urls[service], timeout=30) as direct:
        for headers in ({}, {"x-service-token": "not-the-credential"}, lab):
            refused = await direct.request(method, path, headers=headers, json={})
            assert refused.status_code == 401, (headers, refused.text)
        credential = {"x-service-token": platform.env["INTERNAL_SERVICE_TOKEN"]}
        admitted = await direct.request(method, path, headers=credential | lab, json={})
        assert admitted.status_code in (200, 422), admitted.text  # past the guard: the route itself answers


async def test_an_error_in_one_tenants_request_does_not_reach_the_next_tenants(gateway: httpx.AsyncClient) -> None:
    """What used to 500 in the screening service (and close the pooled connection the gateway reused for the
    next caller, who got 503) is now refused; whatever any tenant sends, another's next request is served."""
    first, second = await new_org(gateway, "sec-a", roles=()), await new_org(gateway, "sec-b", roles=())
    hostile = [("POST", "/api/labs", {"name": "x\x00"}), ("POST", "/api/doctors", {"name": "\x00"}),
               ("GET", "/api/patients/%00", None), ("GET", "/api/patients?external_id=%00", None)]
    for method, path, body in hostile:
        answer = await gateway.request(method, path, json=body, headers=first.headers["admin"])
        assert answer.status_code < 500, (path, answer.text)
        served = await gateway.get("/api/labs", headers=second.headers["admin"])
        assert served.status_code == 200, (path, served.text)


# -- no body shape yields a 5xx --------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["\x00", "\ud800", "İ", "\u202e"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)
_TEMPLATES = {
    "/api/screening/classify": {"patient": {"external_id": "P-1", "name": "Jane"}, "cbc": HEALTHY_CBC},
    "/api/patients": {"external_id": "P-1", "name": "Jane", "age": 40, "sex": "female"},
    "/api/labs": {"name": "Lab", "code": "L1", "address": "Main St"},
    "/api/consents": {"patient_id": str(uuid.uuid4()), "method": "written", "text": "I agree."},
    "/api/auth/login": {"username": "nobody_hypothesis", "password": "wrong-password!"},  # no demo lockout
}


def _bodies(template: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Anything: random JSON, the real shape with one field replaced, nested deep, or bytes that are no JSON."""
    def replace(field_and_value: tuple[str, Any]) -> dict[str, Any]:
        field, value = field_and_value
        return template | {field: value}

    def encode(value: Any) -> bytes:
        return json.dumps(value, allow_nan=False).encode()

    def nest(pair: tuple[Any, int]) -> bytes:
        value, levels = pair
        return b"[" * levels + encode(value) + b"]" * levels

    shapes = st.one_of(_VALUES, st.tuples(st.sampled_from(sorted(template)) | _TEXT, _VALUES).map(replace))
    return shapes.map(encode) | st.tuples(_VALUES, st.integers(20, 5_000)).map(nest) | st.binary(max_size=64)


@pytest.mark.parametrize("path", sorted(_TEMPLATES))
async def test_no_body_shape_yields_a_5xx(gateway: httpx.AsyncClient, admin: dict, path: str) -> None:
    with httpx.Client(base_url=str(gateway.base_url), timeout=30, headers=admin | JSON) as client:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(_bodies(_TEMPLATES[path]))
        def never_a_server_error(body: bytes) -> None:
            answer = client.post(path, content=body)
            assert answer.status_code < 500, (body[:200], answer.status_code, answer.text[:200])

        never_a_server_error()
