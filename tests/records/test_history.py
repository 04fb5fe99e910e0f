"""Screening history: filters (patient, lab, doctor, risk class, date range) and stable cursor pagination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import HEALTHY_CBC
from tests.records.conftest import Tenant
from tests.records.helpers import classified, Org, classify, consented_patient, create_doctor, create_lab, new_org, ok

#: A panel the model calls deficient (high risk), next to the healthy one (low risk).
DEFICIENT_CBC = {"hb": 9.1, "rbc": 2.6, "hct": 28.9, "mcv": 111, "mch": 35.0, "mchc": 31.5, "rdw": 18.2,
                 "wbc": 3.4, "platelets": 120, "neutrophils_pct": 55, "lymphocytes_pct": 35, "age": 67,
                 "sex": "female"}


@pytest.fixture(scope="module")
async def clinic(gateway: httpx.AsyncClient) -> dict:
    """A fresh organisation: two labs, two doctors, three patients, five screenings."""
    org: Org = await new_org(gateway, "history", roles=("lab_technician",))
    admin, lab = org.headers["admin"], org.headers["lab"]
    labs = [await create_lab(gateway, admin) for _ in range(2)]
    doctors = [await create_doctor(gateway, admin) for _ in range(2)]
    patients = [
        await consented_patient(gateway, lab, sex="male", lab_id=labs[0]["id"],
                                referring_doctor_id=doctors[0]["id"]),
        await consented_patient(gateway, lab, sex="female", lab_id=labs[1]["id"],
                                referring_doctor_id=doctors[1]["id"]),
        await consented_patient(gateway, lab, sex="male", lab_id=labs[1]["id"],
                                referring_doctor_id=doctors[0]["id"]),
    ]
    screenings = [
        await classified(gateway, lab, patients[0]["external_id"]),
        await classified(gateway, lab, patients[1]["external_id"], cbc=DEFICIENT_CBC),
        await classified(gateway, lab, patients[2]["external_id"]),
        await classified(gateway, lab, patients[0]["external_id"], cbc=HEALTHY_CBC | {"age": 47}),
        await classified(gateway, lab, patients[1]["external_id"], cbc=DEFICIENT_CBC | {"age": 68}),
    ]
    return {"org": org, "labs": labs, "doctors": doctors, "patients": patients, "screenings": screenings}


async def _ids(gateway: httpx.AsyncClient, clinic: dict, **params: object) -> list[str]:
    page = ok(await gateway.get("/api/screening/history", params=params, headers=clinic["org"].headers["lab"]))
    return [s["id"] for s in page["items"]]


def _of(clinic: dict, *indexes: int) -> list[str]:
    """Screening ids, newest first."""
    return [clinic["screenings"][i]["id"] for i in sorted(indexes, reverse=True)]


async def test_history_is_newest_first(gateway: httpx.AsyncClient, clinic: dict) -> None:
    assert await _ids(gateway, clinic) == _of(clinic, 0, 1, 2, 3, 4)


async def test_history_filters_by_patient(gateway: httpx.AsyncClient, clinic: dict) -> None:
    assert await _ids(gateway, clinic, patient_id=clinic["patients"][0]["id"]) == _of(clinic, 0, 3)
    assert await _ids(gateway, clinic, patient_external_id=clinic["patients"][2]["external_id"]) == _of(clinic, 2)


async def test_history_filters_by_lab(gateway: httpx.AsyncClient, clinic: dict) -> None:
    assert await _ids(gateway, clinic, lab_id=clinic["labs"][1]["id"]) == _of(clinic, 1, 2, 4)


async def test_history_filters_by_doctor(gateway: httpx.AsyncClient, clinic: dict) -> None:
    assert await _ids(gateway, clinic, doctor_id=clinic["doctors"][0]["id"]) == _of(clinic, 0, 2, 3)


async def test_history_filters_by_risk_class(gateway: httpx.AsyncClient, clinic: dict) -> None:
    risk = {s["id"]: s["assessment"]["risk_class"] for s in clinic["screenings"]}
    high = clinic["screenings"][1]["assessment"]["risk_class"]
    assert high > clinic["screenings"][0]["assessment"]["risk_class"], "the panels should differ in risk"
    expected = [i for i in _of(clinic, 0, 1, 2, 3, 4) if risk[i] == high]
    assert await _ids(gateway, clinic, risk_class=high) == expected


async def test_history_filters_by_date_range(gateway: httpx.AsyncClient, clinic: dict) -> None:
    all_items = ok(await gateway.get("/api/screening/history", headers=clinic["org"].headers["lab"]))["items"]
    middle = datetime.fromisoformat(all_items[2]["recorded_at"])
    assert await _ids(gateway, clinic, since=middle.isoformat()) == [i["id"] for i in all_items[:3]]
    assert await _ids(gateway, clinic, until=middle.isoformat()) == [i["id"] for i in all_items[3:]]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert await _ids(gateway, clinic, since=tomorrow) == []


async def test_filters_combine(gateway: httpx.AsyncClient, clinic: dict) -> None:
    assert await _ids(gateway, clinic, lab_id=clinic["labs"][1]["id"], doctor_id=clinic["doctors"][0]["id"]) == \
        _of(clinic, 2)


async def test_cursor_pages_cover_everything_once_in_order(gateway: httpx.AsyncClient, clinic: dict) -> None:
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = ok(await gateway.get("/api/screening/history", params=params, headers=clinic["org"].headers["lab"]))
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == _of(clinic, 0, 1, 2, 3, 4)


async def test_a_cursor_this_api_did_not_issue_is_refused(gateway: httpx.AsyncClient, org_a: Tenant) -> None:
    response = await gateway.get("/api/screening/history", params={"cursor": "not-a-cursor"},
                                 headers=org_a.org.headers["lab"])
    assert response.status_code == 422


async def test_patient_lists_page_with_a_cursor_too(gateway: httpx.AsyncClient, clinic: dict) -> None:
    headers = clinic["org"].headers["lab"]
    first = ok(await gateway.get("/api/patients", params={"limit": 2}, headers=headers))
    rest = ok(await gateway.get("/api/patients", params={"limit": 2, "cursor": first["next_cursor"]},
                                headers=headers))
    ids = [p["id"] for p in first["items"] + rest["items"]]
    assert sorted(ids) == sorted(p["id"] for p in clinic["patients"]) and rest["next_cursor"] is None
