"""``clinomic-ops seed-demo``: a believable demo organisation, made through the same API a real one uses.

The organisation and its users (``admin_<slug>``, ``lab_<slug>``, ``doctor_<slug>``, ``auditor_<slug>``) come
from the auth service's own seed (``auth.cli.seed_demo``: its rules, its ``OrganizationCreated`` and
``UserCreated`` events). Everything clinical goes through the gateway's HTTP API: labs and doctors as an
organisation admin, patients, consents and screenings as the lab technician, so every step is authorised,
audited and published (screenings reach the analytics stream) exactly as in real use.

The organisation admin is a one-time *seeding account* (``seed_<slug>_<hex>``): the demo's own admins enrol
their authenticator at their first login, so the command must never log in as them. It is created with a
random password that is never shown or stored, enrols a TOTP authenticator through the API (the secret is
discarded), and deactivates the seeding accounts of earlier runs; at most one, unusable, stays active.

The plan (who, which CBCs, how long ago each sample was drawn) is pure and seeded: the CBCs come from the
model's synthetic cohort generator, so the risk-class proportions are whatever the shipped model assigns to that
cohort; the collection times are spread evenly at random over the last ``COLLECTION_WEEKS`` weeks before the
screenings are sent, and travel as the classify request's ``collected_at``, as a lab's would.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clinomic_ops.backup import bar
from clinomic_ops.pgtools import OpsError

#: Only organisations whose slug says they are demos are seeded or cleaned.
DEMO_SLUG = re.compile(r"^demo(-[a-z0-9]+)*$")
SEEDER_PREFIX = "seed_"

LABS = (
    ("Northside Pathology", "NSP", "14 Station Road\nNorthside"),
    ("Riverside Diagnostics", "RVD", "2 Quay Street\nRiverside"),
    ("Hillview Hospital Laboratory", "HHL", "Hillview Hospital, Block C"),
)
DOCTORS = (
    ("Dr. Anita Rao", "General practice"),
    ("Dr. Samuel Okafor", "Internal medicine"),
    ("Dr. Mei Lin", "Haematology"),
    ("Dr. Lukas Berg", "Neurology"),
    ("Dr. Farah Haddad", "Geriatrics"),
)
FIRST = {
    "female": ("Aisha", "Priya", "Maria", "Fatima", "Elena", "Grace", "Hana", "Ingrid", "Lakshmi", "Noor",
               "Olivia", "Sofia", "Yara", "Zanele", "Meera", "Chloe"),
    "male": ("Arjun", "Daniel", "Emeka", "Hiro", "Ivan", "Jonas", "Karim", "Luis", "Mohammed", "Nikhil",
             "Omar", "Pavel", "Rahul", "Tomas", "Wei", "Yusuf"),
}
LAST = ("Sharma", "Patel", "Nguyen", "Garcia", "Okonkwo", "Kowalski", "Schmidt", "Haddad", "Tanaka", "Silva",
        "Iyer", "Reddy", "Novak", "Jensen", "Mensah", "Costa", "Ahmed", "Kumar", "Fischer", "Rossi")
CONSENT_METHODS = ("written", "electronic", "verbal")
CONSENT_TEXT = "I agree to have my blood count screened for vitamin B12 deficiency."
#: Demo samples were drawn over this many weeks before seeding (well inside the year classify accepts).
COLLECTION_WEEKS = 6


# -- the plan (pure) ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientPlan:
    external_id: str
    name: str
    age: int
    sex: str
    lab: int  # index into LABS
    doctor: int  # index into DOCTORS
    consent_method: str


@dataclass(frozen=True)
class ScreeningPlan:
    patient: int  # index into the plan's patients
    cbc: dict[str, Any]
    collected_ago: timedelta  # before the moment the screenings are sent; whole seconds


@dataclass(frozen=True)
class DemoPlan:
    patients: list[PatientPlan]
    screenings: list[ScreeningPlan]


def check_slug(slug: str) -> str:
    if not DEMO_SLUG.match(slug):
        raise OpsError(f"{slug!r} is not a demo organisation's slug: it must be 'demo' or start with 'demo-' "
                       "(lowercase letters and digits), so that seeding and --clean never touch a real one")
    return slug


def _reading(value: Any) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number


def plan(*, patients: int, screenings: int, seed: int, population: str) -> DemoPlan:
    """Patients (from the first rows of the cohort: their age and sex) and screenings (one cohort row each).

    The first ``patients`` screenings are each patient's own row; the rest are repeat screenings of a
    patient of the same sex (a screening's sex must match the patient's record), with the patient's age.
    """
    if patients < 1:
        raise OpsError("--patients must be at least 1")
    if screenings < 0:
        raise OpsError("--screenings must not be negative")
    from inference.training.cohort import CBC_COLUMNS, generate_cohort
    from inference.training.cohort import population as cohort_population
    import numpy as np

    try:
        chosen = cohort_population(population)
    except ValueError as exc:
        raise OpsError(str(exc)) from None
    rows = max(patients, screenings)
    columns = generate_cohort(rows, seed, chosen)
    rng = np.random.default_rng(seed)
    # a stream of its own, so the patients and repeat screenings stay those of the same seed before times existed
    ago = np.random.default_rng([seed, 1]).integers(0, COLLECTION_WEEKS * 7 * 86_400, size=screenings)
    people = []
    for i in range(patients):
        sex = str(columns["sex"][i])
        first = FIRST[sex][int(rng.integers(len(FIRST[sex])))]
        last = LAST[int(rng.integers(len(LAST)))]
        people.append(PatientPlan(
            external_id=f"DEMO-{i + 1:06d}", name=f"{first} {last}", age=int(columns["age"][i]), sex=sex,
            lab=int(rng.integers(len(LABS))), doctor=int(rng.integers(len(DOCTORS))),
            consent_method=CONSENT_METHODS[int(rng.integers(len(CONSENT_METHODS)))]))
    by_sex: dict[str, list[int]] = {}
    for i, person in enumerate(people):
        by_sex.setdefault(person.sex, []).append(i)
    planned = []
    for j in range(screenings):
        cbc = {c: str(columns[c][j]) if c == "sex" else _reading(columns[c][j]) for c in CBC_COLUMNS}
        if j < patients:
            who = j
        else:
            same = by_sex.get(cbc["sex"]) or list(range(patients))
            who = same[int(rng.integers(len(same)))]
        cbc |= {"age": people[who].age, "sex": people[who].sex}
        planned.append(ScreeningPlan(who, cbc, timedelta(seconds=int(ago[j]))))
    return DemoPlan(people, planned)


def risk_class_of(body: dict[str, Any]) -> int | None:
    """The risk class in a classify answer or a screening record (None: rejected or not classified)."""
    assessment = body.get("assessment") or {}
    value = body.get("risk_class", assessment.get("risk_class"))
    return int(value) if value is not None else None


# -- against a running platform ----------------------------------------------------------------------------


@dataclass
class SeedReport:
    organization_id: str = ""
    slug: str = ""
    cleaned: dict[str, int] = field(default_factory=dict)
    labs: int = 0
    doctors: int = 0
    patients: int = 0
    consents: int = 0
    screenings: int = 0
    risk_classes: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    #: The earliest and latest collection time given to a screening (ISO 8601, UTC).
    collected_from: str | None = None
    collected_until: str | None = None
    skipped: str | None = None
    seconds: float = 0.0


class Api:
    """The gateway, with one clear error for any answer that is not the expected one."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def call(self, method: str, path: str, *, expect: Sequence[int] = (200,), **kwargs: Any) -> Any:
        import httpx

        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OpsError(f"the gateway at {self.client.base_url} cannot be reached: {exc}") from None
        if response.status_code not in expect:
            raise OpsError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    async def login(self, username: str, password: str) -> dict[str, Any]:
        body = await self.call("POST", "/api/auth/login", json={"username": username, "password": password},
                               expect=(200, 401))
        if body.get("status") is None or "access_token" not in body and "mfa_token" not in body:
            raise OpsError(f"{username} cannot log in with the demo password (changed? locked?)")
        return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _seeder_session(api: Api, username: str, password: str) -> str:
    """Log the new seeding account in and enrol its authenticator through the API; returns an access token."""
    import pyotp

    body = await api.login(username, password)
    if body.get("status") == "mfa_enrolment_required":
        restricted = bearer(body["access_token"])
        setup = await api.call("POST", "/api/auth/mfa/setup", headers=restricted)
        body = await api.call("POST", "/api/auth/mfa/verify-setup", headers=restricted,
                              json={"code": pyotp.TOTP(setup["secret"]).now()})
    if body.get("status") != "authenticated":
        raise OpsError(f"the seeding account's login needs {body.get('status')}; expected a full session")
    return str(body["access_token"])


async def _until(probe: Callable[[], Awaitable[Any]], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise OpsError(f"gave up after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.3)


async def _pool(items: Sequence[Any], work: Callable[[Any], Awaitable[None]], concurrency: int) -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


async def clean(dsn: str, org_id: uuid.UUID) -> dict[str, int]:
    """Delete the organisation's labs, doctors, patients, consents and screenings, and the gateway's intake
    and batch rows of it, in one transaction. Nothing else: not its users or policy, not other tenants, not
    the audit ledger (append-only: its entries about the deleted records stay)."""
    from shared.db import tenant_schema
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    schema = tenant_schema(org_id)
    engine = create_async_engine(dsn, pool_size=1)
    removed: dict[str, int] = {}
    try:
        async with engine.begin() as conn:
            if await conn.scalar(text("SELECT to_regnamespace(:s) IS NOT NULL"), {"s": schema}):
                for table in ("screenings", "consents", "patients", "doctors", "labs"):
                    result = await conn.execute(text(f'DELETE FROM "{schema}".{table}'))
                    removed[table] = result.rowcount
            jobs = "SELECT id FROM gateway.batch_jobs WHERE tenant_id = :t"
            for table, where in (("batch_chunks", f"job_id IN ({jobs})"), ("batch_jobs", "tenant_id = :t"),
                                 ("screening_intake", "tenant_id = :t")):
                result = await conn.execute(text(f"DELETE FROM gateway.{table} WHERE {where}"), {"t": org_id})
                removed[f"gateway.{table}"] = result.rowcount
    except (OSError, SQLAlchemyError) as exc:
        raise OpsError(f"--clean could not delete (nothing was deleted): {exc}") from None
    finally:
        await engine.dispose()
    return removed


def _auth_settings() -> Any:
    from auth.settings import AuthSettings
    from pydantic import ValidationError
    from shared.settings import SecretProblem, settings_problem

    try:
        settings = AuthSettings()
        settings.check_secrets()
    except ValidationError as exc:
        raise OpsError(f"the auth service's settings are incomplete: {settings_problem(exc)}") from None
    except SecretProblem as exc:
        raise OpsError(f"the auth service's settings are incomplete: {exc}") from None
    return settings


async def _seeding_account(api: Api, settings: Any, org_id: uuid.UUID, slug: str) -> dict[str, str]:
    """A new seeding account's session (see the module docstring); earlier seeding accounts deactivated."""
    from auth.cli import identity_service
    from shared.events import Actor
    from shared.tokens import Role

    username = f"{SEEDER_PREFIX}{slug}_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(32)
    async with identity_service(settings, "clinomic-ops-seed") as identity:
        user_id = await identity.create_user(
            org_id=org_id, username=username, password=password, role=Role.ORG_ADMIN,
            actor=Actor(role="service", service="ops-seed-demo"))
    admin = bearer(await _seeder_session(api, username, password))
    for user in await api.call("GET", "/api/auth/users", headers=admin):
        earlier = user["username"].startswith(f"{SEEDER_PREFIX}{slug}_") and user["id"] != str(user_id)
        if earlier and user["active"]:
            await api.call("POST", f"/api/auth/users/{user['id']}/deactivate", headers=admin, expect=(204,))
    return admin


async def _labs_and_doctors(api: Api, admin: dict[str, str], slug: str) -> tuple[list[Any], list[Any]]:
    """The labs, and the doctors (the first linked to the user ``doctor_<slug>``), as the seeding admin."""
    users = await api.call("GET", "/api/auth/users", headers=admin)
    doctor_user = next((u["id"] for u in users if u["username"] == f"doctor_{slug}"), None)
    labs = [await api.call("POST", "/api/labs", headers=admin, expect=(201,),
                           json={"name": name, "code": code, "address": address})
            for name, code, address in LABS]
    doctors = []
    for i, (name, specialty) in enumerate(DOCTORS):
        body = {"name": name, "specialty": specialty,
                "registration_number": f"REG-{slug.upper()}-{i + 1:04d}"}
        if i == 0 and doctor_user is not None:
            body["user_id"] = doctor_user

        async def create(body: dict[str, Any] = body) -> Any:
            # 422 on user_id: the screening service has not seen the doctor's UserCreated yet; ask again.
            response = await api.client.post("/api/doctors", headers=admin, json=body)
            if response.status_code == 422 and "user_id" in response.text:
                return None
            if response.status_code != 201:
                raise OpsError(f"POST /api/doctors answered {response.status_code}: {response.text[:300]}")
            return response.json()

        doctors.append(await _until(create, timeout=60, what="doctor_<slug> to reach the screening service"))
    return labs, doctors


async def _patients(api: Api, lab: dict[str, str], demo: DemoPlan, labs: list[Any], doctors: list[Any],
                    concurrency: int, progress: bool | None) -> int:
    """Each planned patient registered with their lab and doctor, and their consent recorded."""
    done = 0
    with bar(len(demo.patients), "patients", "patient", enabled=progress) as counting:

        async def register(person: PatientPlan) -> None:
            nonlocal done
            created = await api.call("POST", "/api/patients", headers=lab, expect=(201,), json={
                "external_id": person.external_id, "name": person.name, "age": person.age,
                "sex": person.sex, "lab_id": labs[person.lab]["id"],
                "referring_doctor_id": doctors[person.doctor]["id"]})
            await api.call("POST", "/api/consents", headers=lab, expect=(201,), json={
                "patient_id": created["id"], "method": person.consent_method, "text": CONSENT_TEXT})
            done += 1
            counting.update(1)

        await _pool(demo.patients, register, concurrency)
    return done


async def _screenings(api: Api, lab: dict[str, str], demo: DemoPlan, concurrency: int, progress: bool | None,
                      sent_at: datetime) -> Counter[str]:
    """Every planned screening through classify, collected its planned time before ``sent_at``; the outcomes by
    risk class (``rejected`` apart)."""
    outcomes: Counter[str] = Counter()
    with bar(len(demo.screenings), "screenings", "screening", enabled=progress) as counting:

        async def screen(item: ScreeningPlan) -> None:
            person = demo.patients[item.patient]
            answer = await api.call("POST", "/api/screening/classify", headers=lab, expect=(200, 202), json={
                "patient": {"external_id": person.external_id, "name": person.name}, "cbc": item.cbc,
                "collected_at": (sent_at - item.collected_ago).isoformat()})
            if answer.get("status") not in ("classified", "rejected"):  # pending: poll its record

                async def recorded() -> Any:
                    response = await api.client.get(answer["url"], headers=lab)
                    return response.json() if response.status_code == 200 else None

                answer = await _until(recorded, timeout=120, what=f"screening {answer['id']} to be recorded")
            risk = risk_class_of(answer)
            outcomes["rejected" if answer.get("status") == "rejected" or risk is None else str(risk)] += 1
            counting.update(1)

        await _pool(demo.screenings, screen, concurrency)
    return outcomes


async def seed(*, gateway_url: str, dsn: str, slug: str, name: str, password: str, demo: DemoPlan,
               clean_first: bool, skip_screenings: bool, if_empty: bool, concurrency: int,
               progress: bool | None) -> SeedReport:
    """Organisation and users, then (unless it already holds data) labs, doctors, patients, consents and
    screenings through the gateway."""
    import httpx
    from auth.cli import seed_demo

    started = time.perf_counter()
    report = SeedReport(slug=check_slug(slug))
    settings = _auth_settings()
    try:
        org_id = await seed_demo(settings, password, (name, slug))
    except OSError as exc:
        raise OpsError(f"the database or the broker cannot be reached: {exc}") from None
    report.organization_id = str(org_id)

    async with httpx.AsyncClient(base_url=gateway_url, timeout=60.0) as client:
        api = Api(client)
        lab_login = await api.login(f"lab_{slug}", password)
        if lab_login.get("status") != "authenticated":
            raise OpsError(f"lab_{slug} cannot log in with the demo password ({lab_login.get('status')})")
        lab = bearer(lab_login["access_token"])
        if clean_first:
            report.cleaned = await clean(dsn, org_id)
        held = [(await api.call("GET", f"/api/{what}", headers=lab, params={"limit": 1}))["items"]
                for what in ("labs", "doctors", "patients")]
        if any(held):
            if not if_empty:
                raise OpsError(f"organisation {slug} already holds labs, doctors or patients: --clean "
                               "replaces them (and only them), --if-empty leaves them")
            report.skipped = "the organisation already holds demo data"
        else:
            admin = await _seeding_account(api, settings, org_id, slug)
            try:
                labs, doctors = await _labs_and_doctors(api, admin, slug)
            finally:
                await api.call("POST", "/api/auth/logout-all", headers=admin, expect=(204,))
            report.labs, report.doctors = len(labs), len(doctors)
            report.patients = report.consents = await _patients(api, lab, demo, labs, doctors, concurrency,
                                                                progress)
            if skip_screenings:
                report.skipped = "screenings (--skip-screenings)"
            else:
                sent_at = datetime.now(UTC)
                outcomes = await _screenings(api, lab, demo, concurrency, progress, sent_at)
                if demo.screenings:
                    report.collected_from = (sent_at - max(s.collected_ago for s in demo.screenings)).isoformat()
                    report.collected_until = (sent_at - min(s.collected_ago for s in demo.screenings)).isoformat()
                report.rejected = outcomes.pop("rejected", 0)
                report.screenings = sum(outcomes.values()) + report.rejected
                report.risk_classes = dict(sorted(outcomes.items()))
        await api.call("POST", "/api/auth/logout", json={"refresh_token": lab_login["refresh_token"]},
                       expect=(204,))
    report.seconds = time.perf_counter() - started
    return report
