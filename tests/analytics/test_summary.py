"""``GET /api/analytics/summary``: counts computed from the organisation's screenings, scoped by role, with
the current model's card read from the model directory."""

from __future__ import annotations

import json
from datetime import datetime

import httpx

from inference.model import DEFAULT_MODEL_DIR
from tests.analytics.conftest import Clinic
from tests.records.helpers import ok, platform_admin

SUMMARY = "/api/analytics/summary"


def by_id(entries: list[dict], key: str) -> dict:
    return {entry[key]: entry for entry in entries}


async def test_the_summary_counts_an_organisations_screenings_in_total_per_risk_class_and_per_label(
    gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    summary = ok(await gateway.get(SUMMARY, headers=clinic.org.headers["admin"]))
    assert summary["scope"] == "organisation"
    assert summary["totals"] == {"screenings": 4, "classified": 4, "rejected": 0, "patients": 3,
                                 "per_risk_class": clinic.per_risk_class(), "per_label": clinic.per_label()}


async def test_the_summary_counts_each_day_with_screenings(
    gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    summary = ok(await gateway.get(SUMMARY, headers=clinic.org.headers["admin"]))
    days = sorted({datetime.fromisoformat(s["recorded_at"]).date().isoformat() for s in clinic.screened()})
    assert [d["day"] for d in summary["per_day"]] == days
    assert sum(d["screenings"] for d in summary["per_day"]) == 4
    if len(days) == 1:  # the usual case: the test did not run across midnight UTC
        assert summary["per_day"][0] | {"day": None} == summary["totals"] | {"day": None}


async def test_the_summary_counts_each_lab_and_doctor_with_their_names(
    gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    summary = ok(await gateway.get(SUMMARY, headers=clinic.org.headers["admin"]))
    labs, doctors = by_id(summary["per_lab"], "lab_id"), by_id(summary["per_doctor"], "doctor_id")
    lab_a, lab_b = clinic.labs["a"], clinic.labs["b"]
    assert set(labs) == {lab_a["id"], lab_b["id"], None}
    assert (labs[lab_a["id"]]["lab_name"], labs[lab_a["id"]]["screenings"]) == (lab_a["name"], 2)
    assert labs[lab_a["id"]]["per_risk_class"] == clinic.per_risk_class({"referred"})
    assert (labs[lab_b["id"]]["lab_name"], labs[lab_b["id"]]["screenings"]) == (lab_b["name"], 1)
    assert (labs[None]["lab_name"], labs[None]["screenings"]) == (None, 1)
    mine, other = clinic.doctors["mine"], clinic.doctors["other"]
    assert set(doctors) == {mine["id"], other["id"], None}
    assert (doctors[mine["id"]]["doctor_name"], doctors[mine["id"]]["patients"]) == (mine["name"], 1)
    assert doctors[mine["id"]]["per_label"] == clinic.per_label({"referred"})
    assert (doctors[other["id"]]["doctor_name"], doctors[other["id"]]["screenings"]) == (other["name"], 1)


async def test_a_doctors_summary_counts_only_the_patients_referred_to_them(
    gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    summary = ok(await gateway.get(SUMMARY, headers=clinic.org.headers["doctor"]))
    assert summary["scope"] == "referred_patients"
    assert summary["totals"] == {"screenings": 2, "classified": 2, "rejected": 0, "patients": 1,
                                 "per_risk_class": clinic.per_risk_class({"referred"}),
                                 "per_label": clinic.per_label({"referred"})}
    assert [d["doctor_id"] for d in summary["per_doctor"]] == [clinic.doctors["mine"]["id"]]
    assert [lab["lab_id"] for lab in summary["per_lab"]] == [clinic.labs["a"]["id"]]


async def test_a_lab_technician_reads_the_whole_organisations_counts(
    gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    as_lab = ok(await gateway.get(SUMMARY, headers=clinic.org.headers["lab"]))
    as_admin = ok(await gateway.get(SUMMARY, headers=clinic.org.headers["admin"]))
    assert as_lab["scope"] == "organisation" and as_lab["totals"] == as_admin["totals"]


async def test_auditors_and_platform_admins_may_not_read_the_summary(
    gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    assert (await gateway.get(SUMMARY, headers=clinic.org.headers["auditor"])).status_code == 403
    assert (await gateway.get(SUMMARY, headers=await platform_admin(gateway))).status_code == 403
    assert (await gateway.get(SUMMARY)).status_code == 401


async def test_the_summary_names_no_patient(gateway: httpx.AsyncClient, clinic: Clinic) -> None:
    text = (await gateway.get(SUMMARY, headers=clinic.org.headers["admin"])).text
    for patient in clinic.patients.values():
        assert patient["id"] not in text and patient["external_id"] not in text
    assert clinic.canary not in text


async def test_a_period_without_screenings_counts_nothing(gateway: httpx.AsyncClient, clinic: Clinic) -> None:
    summary = ok(await gateway.get(SUMMARY, params={"from": "2001-01-01", "to": "2001-01-31"},
                                   headers=clinic.org.headers["admin"]))
    assert summary["period"] == {"from": "2001-01-01", "to": "2001-01-31"}
    assert summary["totals"]["screenings"] == 0 and summary["totals"]["patients"] == 0
    assert summary["totals"]["per_risk_class"] == {"1": 0, "2": 0, "3": 0}
    assert summary["per_day"] == summary["per_lab"] == summary["per_doctor"] == []


async def test_a_period_that_ends_before_it_starts_is_refused_with_a_422(
    gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    response = await gateway.get(SUMMARY, params={"from": "2024-02-01", "to": "2024-01-01"},
                                 headers=clinic.org.headers["admin"])
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["query.from"]


async def test_the_summary_carries_the_model_card_of_the_model_directory(
    gateway: httpx.AsyncClient, admin: dict[str, str],
) -> None:
    card = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text())
    manifest = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    summary = ok(await gateway.get(SUMMARY, headers=admin))
    assert summary["model_unavailable"] is False
    model = summary["model"]
    assert model["version"] == manifest["version"]
    assert model["artifacts_sha256"] == manifest["artifacts_sha256"]
    assert model["metrics"]["classes"] == card["metrics"]["classes"]
    assert model["metrics"]["per_group"] == card["metrics"]["per_group"]
    assert model["thresholds"] == card["thresholds"] and model["aims"] == card["aims"]

