"""Tenant isolation, for every endpoint and every role: a user of organisation A holding ids of organisation
B gets the very answer a missing id gets (learning nothing), and no list of A ever shows a row of B.

The tenant is the token's organisation; headers, query parameters and body fields naming another
organisation change nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import HEALTHY_CBC, new_patient_id
from tests.records.conftest import Tenant
from tests.records.helpers import ok

ROLES = ("admin", "lab", "doctor", "auditor", "platform")

#: (name, method, path, json body, query, expected status as admin lab doctor auditor platform-admin);
#: "{lab}" etc. name the foreign record (or a missing one). 404/422: looked for and not found, 403: the role
#: may not do this at all, 200: a list or search that comes back empty.
BY_ID = [
    ("get lab", "GET", "/api/labs/{lab}", None, None, "404 404 404 404 403"),
    ("edit lab", "PATCH", "/api/labs/{lab}", {"name": "Taken over"}, None, "404 403 403 403 403"),
    ("deactivate lab", "PATCH", "/api/labs/{lab}", {"active": False}, None, "404 403 403 403 403"),
    ("get doctor", "GET", "/api/doctors/{doctor}", None, None, "404 404 404 404 403"),
    ("edit doctor", "PATCH", "/api/doctors/{doctor}", {"specialty": "Taken over"}, None, "404 403 403 403 403"),
    ("get patient", "GET", "/api/patients/{patient}", None, None, "404 404 404 403 403"),
    ("edit patient", "PATCH", "/api/patients/{patient}", {"age": 99}, None, "404 404 403 403 403"),
    ("get consent", "GET", "/api/consents/{consent}", None, None, "404 404 404 403 403"),
    ("revoke consent", "POST", "/api/consents/{consent}/revoke", None, None, "404 404 403 403 403"),
    ("consent for patient", "POST", "/api/consents", {"patient_id": "{patient}", "method": "verbal", "text": "ok"},
     None, "422 422 403 403 403"),
    ("patient at lab", "POST", "/api/patients", {"external_id": "{new}", "lab_id": "{lab}"}, None,
     "422 422 403 403 403"),
    ("patient referred to doctor", "POST", "/api/patients", {"external_id": "{new}", "referring_doctor_id": "{doctor}"},
     None, "422 422 403 403 403"),
    ("get screening", "GET", "/api/screenings/{screening}", None, None, "404 404 404 403 403"),
    ("history of patient", "GET", "/api/screening/history", None, {"patient_id": "{patient}"}, "200 200 200 403 403"),
    ("history at lab", "GET", "/api/screening/history", None, {"lab_id": "{lab}"}, "200 200 200 403 403"),
    ("history of doctor", "GET", "/api/screening/history", None, {"doctor_id": "{doctor}"}, "200 200 200 403 403"),
    ("history by external id", "GET", "/api/screening/history", None, {"patient_external_id": "{external}"},
     "200 200 200 403 403"),
    ("patients at lab", "GET", "/api/patients", None, {"lab_id": "{lab}"}, "200 200 200 403 403"),
    ("patients of doctor", "GET", "/api/patients", None, {"doctor_id": "{doctor}"}, "200 200 200 403 403"),
    ("patients by external id", "GET", "/api/patients", None, {"external_id": "{external}"}, "200 200 200 403 403"),
    ("consents of patient", "GET", "/api/consents", None, {"patient_id": "{patient}"}, "200 200 200 403 403"),
    ("export of patient", "GET", "/api/screening/export", None, {"patient_id": "{patient}"}, "200 403 200 403 403"),
    ("search by name", "POST", "/api/patients/search", {"name": "{name}"}, None, "200 200 200 403 403"),
    ("classify patient", "POST", "/api/screening/classify", {"patient": {"external_id": "{external}"}, "cbc": "{cbc}"},
     None, "403 403 403 403 403"),  # org roles allowed to classify: refused, no consent for an unknown patient
    ("link doctor user", "PATCH", "/api/doctors/{own_doctor}", {"user_id": "{doctor_user}"}, None,
     "422 403 403 403 403"),
]

LISTS = [
    ("GET", "/api/labs", None), ("GET", "/api/doctors", None), ("GET", "/api/patients", None),
    ("GET", "/api/consents", None), ("GET", "/api/screening/history", None), ("GET", "/api/screening/export", None),
]


def _fill(template: Any, values: dict[str, Any]) -> Any:
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, str) and template.startswith("{") and template.endswith("}") \
            and template[1:-1] in values:
        return values[template[1:-1]]
    if isinstance(template, str):
        return template.format(**values) if "{" in template else template
    return template


def _values(foreign: Tenant | None, own: Tenant) -> dict[str, Any]:
    """B's identifiers, or (``foreign`` None) fresh ones that exist nowhere."""
    missing = str(uuid.uuid4())
    if foreign is None:
        return {"lab": missing, "doctor": missing, "patient": missing, "consent": missing, "screening": missing,
                "external": new_patient_id(), "name": "Nobody Atall Nowhere", "doctor_user": missing,
                "new": new_patient_id(), "cbc": HEALTHY_CBC, "own_doctor": own.doctor["id"]}
    return {"lab": foreign.lab["id"], "doctor": foreign.doctor["id"], "patient": foreign.patient["id"],
            "consent": foreign.consent["id"], "screening": foreign.screening["id"],
            "external": foreign.patient["external_id"], "name": foreign.name,
            "doctor_user": foreign.org.user_ids["doctor"], "new": new_patient_id(), "cbc": HEALTHY_CBC,
            "own_doctor": own.doctor["id"]}


def _headers(role: str, tenant: Tenant, platform_headers: dict[str, str]) -> dict[str, str]:
    return platform_headers if role == "platform" else tenant.org.headers[role]


async def _call(gateway: httpx.AsyncClient, headers: dict[str, str], method: str, path: str, body: Any,
                params: Any, values: dict[str, Any]) -> httpx.Response:
    return await gateway.request(method, _fill(path, values), json=_fill(body, values) if body else None,
                                 params=_fill(params, values) if params else None, headers=headers)


def _shape(response: httpx.Response) -> tuple[int, Any]:
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.status_code, response.json()
    return response.status_code, response.text


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,method,path,body,params,expected", BY_ID, ids=[c[0] for c in BY_ID])
async def test_ids_of_another_organisation_get_the_answer_a_missing_id_gets(
    gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant, platform_headers: dict[str, str],
    role: str, name: str, method: str, path: str, body: Any, params: Any, expected: str,
) -> None:
    headers = _headers(role, org_a, platform_headers)
    foreign = await _call(gateway, headers, method, path, body, params, _values(org_b, org_a))
    missing = await _call(gateway, headers, method, path, body, params, _values(None, org_a))
    assert _shape(foreign) == _shape(missing), f"{name} as {role} tells B's ids from missing ones"
    assert foreign.status_code == int(expected.split()[ROLES.index(role)]), foreign.text
    if foreign.status_code == 200:  # lists and searches: empty, never B's rows
        assert not any(secret in foreign.text for secret in org_b.secrets()), foreign.text


@pytest.mark.parametrize("role", ("admin", "lab", "doctor", "auditor"))
@pytest.mark.parametrize("method,path,body", LISTS, ids=[p for _, p, _ in LISTS])
async def test_no_list_of_organisation_a_contains_a_row_of_organisation_b(
    gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant, role: str, method: str, path: str, body: Any,
) -> None:
    response = await gateway.request(method, path, headers=org_a.org.headers[role], json=body)
    assert response.status_code in (200, 403)
    assert not any(secret in response.text for secret in org_b.secrets())


@pytest.mark.parametrize("role", ("admin", "lab", "doctor"))
async def test_organisation_b_sees_its_own_records_and_none_of_organisation_a(
    gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant, role: str,
) -> None:
    headers = org_b.org.headers[role]
    patients = ok(await gateway.get("/api/patients", params={"limit": 200}, headers=headers))["items"]
    history = ok(await gateway.get("/api/screening/history", params={"limit": 200}, headers=headers))["items"]
    assert org_b.patient["id"] in {p["id"] for p in patients}
    assert org_b.screening["id"] in {s["id"] for s in history}
    for path in ("/api/labs", "/api/doctors", "/api/patients", "/api/consents", "/api/screening/history"):
        text = (await gateway.get(path, headers=headers)).text
        assert not any(secret in text for secret in org_a.secrets()), path


SPOOFS = {
    "headers": {"X-Tenant-Id": "{org}", "X-Organization-Id": "{org}", "X-Org-Id": "{org}"},
    "query": {"organization_id": "{org}", "tenant_id": "{org}", "org": "{org}"},
}


@pytest.mark.parametrize("how", SPOOFS)
async def test_naming_another_organisation_in_headers_or_query_changes_nothing(
    gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant, how: str,
) -> None:
    spoof = {k: v.format(org=org_b.org.id) for k, v in SPOOFS[how].items()}
    headers = org_a.org.headers["admin"] | (spoof if how == "headers" else {})
    params = spoof if how == "query" else None
    assert (await gateway.get(f"/api/patients/{org_b.patient['id']}", headers=headers, params=params)).status_code \
        == 404
    listing = await gateway.get("/api/patients", headers=headers, params=params)
    assert listing.status_code == 200 and org_b.patient["id"] not in listing.text


async def test_a_body_field_naming_another_organisation_is_refused(
    gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant,
) -> None:
    response = await gateway.post("/api/patients", headers=org_a.org.headers["lab"],
                                  json={"external_id": new_patient_id(), "organization_id": org_b.org.id})
    assert response.status_code == 422
    assert any(e["field"] == "organization_id" for e in response.json()["errors"])


async def test_the_same_external_id_is_a_different_patient_in_each_organisation(
    gateway: httpx.AsyncClient, org_a: Tenant, org_b: Tenant,
) -> None:
    external = org_b.patient["external_id"]
    mine = ok(await gateway.post("/api/patients", headers=org_a.org.headers["lab"],
                                 json={"external_id": external, "name": "Someone Else"}), 201)
    assert mine["id"] != org_b.patient["id"]
    theirs = ok(await gateway.get(f"/api/patients/{org_b.patient['id']}", headers=org_b.org.headers["lab"]))
    assert theirs["name"] == org_b.name
