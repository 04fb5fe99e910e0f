"""`clinomic-ops seed-demo` (docs/operations.md, "Demo data"): a demo organisation made through the API, so it
is audited and published like real use; `--clean` replaces only its data; `--skip-screenings` leaves them out.

Runs against the session platform, in a demo organisation of its own (`demo-<random>`), so the shared demo
organisation other tests use is untouched. The command runs as a subprocess, as an operator runs it. The
plan's pure rules are tested directly.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from devstack import stack
from hypothesis import given, settings
from hypothesis import strategies as st
from shared.db import tenant_schema
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clinomic_ops import demo
from clinomic_ops.pgtools import OpsError
from tests.conftest import bearer, login

SLUG = f"demo-{uuid.uuid4().hex[:8]}"
PATIENTS, SCREENINGS = 12, 30


# -- the plan (pure) ---------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 40), st.integers(0, 80), st.integers(0, 2**16))
def test_every_planned_screening_matches_its_patients_sex_and_age(patients: int, screenings: int,
                                                                   seed: int) -> None:
    plan = demo.plan(patients=patients, screenings=screenings, seed=seed, population="india-lab")
    assert len(plan.patients) == patients and len(plan.screenings) == screenings
    for item in plan.screenings:
        person = plan.patients[item.patient]
        assert (item.cbc["sex"], item.cbc["age"]) == (person.sex, person.age)
    assert {s.patient for s in plan.screenings} >= set(range(min(patients, screenings)))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 80), st.integers(0, 2**16))
def test_every_planned_sample_was_drawn_within_the_last_six_weeks(screenings: int, seed: int) -> None:
    plan = demo.plan(patients=3, screenings=screenings, seed=seed, population="us-lab")
    for item in plan.screenings:
        assert timedelta(0) <= item.collected_ago < timedelta(weeks=demo.COLLECTION_WEEKS)
        assert item.collected_ago.microseconds == 0


def test_the_same_seed_gives_the_same_demo() -> None:
    def make() -> Any:
        return demo.plan(patients=5, screenings=9, seed=3, population="us-lab")

    assert make() == make()


@pytest.mark.parametrize("slug", ["demo", "demo-berlin", "demo-a1-b2"])
def test_demo_slugs_are_accepted(slug: str) -> None:
    assert demo.check_slug(slug) == slug


@pytest.mark.parametrize("slug", ["acme", "demox", "Demo", "demo-", "demo_a", "my-demo"])
def test_a_slug_that_does_not_name_a_demo_is_refused(slug: str) -> None:
    with pytest.raises(OpsError):
        demo.check_slug(slug)


def test_an_unknown_population_is_refused() -> None:
    with pytest.raises(OpsError, match="unknown population"):
        demo.plan(patients=1, screenings=1, seed=1, population="mars-lab")


# -- against the session platform -----------------------------------------------------------------------


def seed_demo(platform: stack.Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinomic_ops.cli", "seed-demo", "--gateway-url", platform.gateway_url,
         "--org", SLUG, "--json", *args],
        env=platform.env, capture_output=True, text=True, timeout=900, check=False)


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def seeded(platform: stack.Platform) -> dict[str, Any]:
    started = time.perf_counter()
    report = report_of(seed_demo(platform, "--patients", str(PATIENTS), "--screenings", str(SCREENINGS)))
    report["wall_seconds"] = time.perf_counter() - started
    print(f"\nseed-demo: {PATIENTS} patients, {SCREENINGS} screenings in {report['wall_seconds']:.1f} s "
          f"(inside the command {report['seconds']:.1f} s); risk classes {report['risk_classes']}")
    return report


async def _tenant_counts(engine: AsyncEngine, org_id: str) -> dict[str, int]:
    schema = tenant_schema(uuid.UUID(org_id))
    async with engine.connect() as conn:
        return {table: int(await conn.scalar(text(f'SELECT count(*) FROM "{schema}".{table}')))
                for table in ("labs", "doctors", "patients", "consents", "screenings")}


async def _demo_org(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return str(await conn.scalar(text("SELECT id FROM auth.organizations WHERE slug = 'demo'")))


@pytest.mark.integration
async def test_seed_demo_creates_labs_doctors_and_consented_patients_through_the_api(
        seeded: dict[str, Any], gateway: httpx.AsyncClient) -> None:
    lab = bearer(await login(gateway, f"lab_{SLUG}"))
    counts = {what: len((await gateway.get(f"/api/{what}", headers=lab, params={"limit": 200})).json()["items"])
              for what in ("labs", "doctors", "patients", "consents")}
    assert counts == {"labs": len(demo.LABS), "doctors": len(demo.DOCTORS), "patients": PATIENTS,
                      "consents": PATIENTS}


@pytest.mark.integration
async def test_every_screening_is_recorded_with_the_risk_class_the_report_counts(
        seeded: dict[str, Any], engine: AsyncEngine) -> None:
    schema = tenant_schema(uuid.UUID(seeded["organization_id"]))
    async with engine.connect() as conn:
        rows = (await conn.execute(text(f'SELECT risk_class FROM "{schema}".screenings'))).all()
    recorded = Counter(str(r[0]) for r in rows if r[0] is not None)
    assert len(rows) == SCREENINGS == seeded["screenings"]
    assert dict(recorded) == seeded["risk_classes"]


@pytest.mark.integration
async def test_the_seeded_screenings_carry_the_planned_collection_times_over_six_weeks(
        seeded: dict[str, Any], gateway: httpx.AsyncClient) -> None:
    plan = demo.plan(patients=PATIENTS, screenings=SCREENINGS, seed=7, population="india-lab")
    lab = bearer(await login(gateway, f"lab_{SLUG}"))
    history = (await gateway.get("/api/screening/history", headers=lab, params={"limit": 200})).json()["items"]
    collected = sorted(datetime.fromisoformat(s["collected_at"]) for s in history)
    ago = sorted((s.collected_ago for s in plan.screenings), reverse=True)
    sent_at = datetime.fromisoformat(seeded["collected_until"]) + ago[-1]
    # every screening is its planned time before the one moment the command sent them
    assert {c + a for c, a in zip(collected, ago, strict=True)} == {sent_at}
    assert collected[0] == datetime.fromisoformat(seeded["collected_from"])
    weeks = Counter((sent_at - c) // timedelta(weeks=1) for c in collected)
    assert sorted(weeks) == list(range(demo.COLLECTION_WEEKS))  # seed 7: every one of the six weeks has some


@pytest.mark.integration
async def test_seeding_is_audited_and_reaches_the_analytics_stream(seeded: dict[str, Any],
                                                                  gateway: httpx.AsyncClient) -> None:
    auditor = bearer(await login(gateway, f"auditor_{SLUG}"))
    expected = {"LabCreated": len(demo.LABS), "DoctorCreated": len(demo.DOCTORS), "PatientCreated": PATIENTS,
                "ConsentRecorded": PATIENTS, "ScreeningRequested": SCREENINGS, "ScreeningRecorded": SCREENINGS,
                "ScreeningRecordedDeidentified": SCREENINGS}

    async def ledger() -> dict[str, int]:
        found = {}
        for event_type in expected:
            page = await gateway.get("/api/audit", headers=auditor, params={"event_type": event_type, "limit": 500})
            assert page.status_code == 200, page.text
            found[event_type] = len(page.json()["items"])
        return found

    deadline = time.monotonic() + 90
    while (found := await ledger()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert found == expected


@pytest.mark.integration
async def test_the_demo_doctor_sees_only_the_patients_referred_to_them(seeded: dict[str, Any],
                                                                       gateway: httpx.AsyncClient) -> None:
    plan = demo.plan(patients=PATIENTS, screenings=SCREENINGS, seed=7, population="india-lab")
    doctor = bearer(await login(gateway, f"doctor_{SLUG}"))
    seen = (await gateway.get("/api/patients", headers=doctor, params={"limit": 200})).json()["items"]
    assert sorted(p["external_id"] for p in seen) == sorted(p.external_id for p in plan.patients if p.doctor == 0)


@pytest.mark.integration
async def test_seeding_a_seeded_organisation_again_is_refused_and_changes_nothing(
        seeded: dict[str, Any], platform: stack.Platform, engine: AsyncEngine) -> None:
    before = await _tenant_counts(engine, seeded["organization_id"])
    result = seed_demo(platform, "--patients", "2", "--screenings", "2")
    assert result.returncode == 1
    assert "already holds labs, doctors or patients" in result.stderr and "Traceback" not in result.stderr
    assert await _tenant_counts(engine, seeded["organization_id"]) == before


@pytest.mark.integration
async def test_if_empty_leaves_a_seeded_organisation_as_it_is(seeded: dict[str, Any], platform: stack.Platform,
                                                             engine: AsyncEngine) -> None:
    before = await _tenant_counts(engine, seeded["organization_id"])
    report = report_of(seed_demo(platform, "--if-empty", "--patients", "2", "--screenings", "2"))
    assert report["skipped"] == "the organisation already holds demo data"
    assert await _tenant_counts(engine, seeded["organization_id"]) == before


@pytest.fixture(scope="module")
async def reseeded(seeded: dict[str, Any], platform: stack.Platform, engine: AsyncEngine) -> dict[str, Any]:
    """`--clean --skip-screenings` with fewer patients; the shared demo organisation counted around it."""
    demo_org = await _demo_org(engine)
    before = await _tenant_counts(engine, demo_org)
    report = report_of(seed_demo(platform, "--clean", "--skip-screenings", "--patients", "4"))
    return {"report": report, "demo_before": before, "demo_after": await _tenant_counts(engine, demo_org)}


@pytest.mark.integration
async def test_clean_replaces_the_organisations_records(reseeded: dict[str, Any], seeded: dict[str, Any],
                                                        engine: AsyncEngine) -> None:
    assert reseeded["report"]["cleaned"]["patients"] == PATIENTS
    counts = await _tenant_counts(engine, seeded["organization_id"])
    assert (counts["labs"], counts["doctors"], counts["patients"], counts["consents"]) == (
        len(demo.LABS), len(demo.DOCTORS), 4, 4)


@pytest.mark.integration
async def test_skip_screenings_leaves_screenings_out(reseeded: dict[str, Any], seeded: dict[str, Any],
                                                     engine: AsyncEngine) -> None:
    assert (await _tenant_counts(engine, seeded["organization_id"]))["screenings"] == 0
    assert reseeded["report"]["screenings"] == 0


@pytest.mark.integration
async def test_clean_leaves_other_organisations_alone(reseeded: dict[str, Any]) -> None:
    assert reseeded["demo_after"] == reseeded["demo_before"]


@pytest.mark.integration
async def test_only_the_latest_seeding_account_stays_active(reseeded: dict[str, Any], engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT active FROM auth.users WHERE username LIKE :p"),
                                   {"p": f"seed_{SLUG}_%"})).all()
    assert sorted(r[0] for r in rows) == [False, True]


def test_seed_demo_has_help() -> None:
    result = subprocess.run([sys.executable, "-m", "clinomic_ops.cli", "seed-demo", "--help"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "--skip-screenings" in result.stdout and "--clean" in result.stdout
