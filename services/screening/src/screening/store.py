"""SQL of the screening service: the tenant registry and each tenant's screenings.

Every clinical query runs inside ``shared.db.in_schema(engine, tenant_schema(org))``; the connection's
default search path names no schema, so a forgotten tenant fails instead of leaking. Records other than
screenings (labs, doctors, patients, consents, policy) are in ``record_store``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from screening.domain import PatientRecord, ScreeningRecord
from shared.db import in_schema, migrate, tenant_schema
from shared.events.screening import Label, RiskClass

CONTROL_SCHEMA = "screening"
CONTROL_MIGRATIONS = Path(__file__).parent / "migrations" / "control"
TENANT_MIGRATIONS = Path(__file__).parent / "migrations" / "tenant"


class TenantRegistry:
    """Knows which tenant schemas exist and provisions missing ones (idempotent, concurrency-safe)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._known: set[uuid.UUID] = set()

    async def load(self) -> None:
        async with in_schema(self.engine, CONTROL_SCHEMA) as conn:
            self._known = set((await conn.scalars(text("SELECT org_id FROM tenants"))).all())

    async def provision(self, org_id: uuid.UUID) -> str:
        schema = tenant_schema(org_id)
        if org_id in self._known:
            return schema
        await migrate(self.engine, TENANT_MIGRATIONS, schema)
        async with in_schema(self.engine, CONTROL_SCHEMA) as conn:
            await conn.execute(
                text("INSERT INTO tenants (org_id, schema_name) VALUES (:o, :s) ON CONFLICT DO NOTHING"),
                {"o": org_id, "s": schema},
            )
        self._known.add(org_id)
        return schema

    async def ensure(self, org_id: uuid.UUID) -> str:
        """The schema of a verified organisation, provisioned now if its ``OrganizationCreated`` is still
        on its way (the token proves the organisation exists)."""
        if org_id in self._known:
            return tenant_schema(org_id)
        return await self.provision(org_id)

    def exists(self, org_id: uuid.UUID) -> bool:
        return org_id in self._known

    @property
    def tenants(self) -> set[uuid.UUID]:
        return set(self._known)


@dataclass(frozen=True)
class NewScreening:
    id: uuid.UUID
    patient_external_id: str
    patient_name_ciphertext: str | None
    status: str
    cbc: dict[str, Any]
    assessment: dict[str, Any] | None
    rejection_reason: str | None
    label: str | None
    risk_class: int | None
    model_version: str | None
    requested_by: uuid.UUID | None
    correlation_id: uuid.UUID
    requested_at: datetime
    recorded_at: datetime
    patient_id: uuid.UUID | None = None
    consent_id: uuid.UUID | None = None
    lab_id: uuid.UUID | None = None
    doctor_id: uuid.UUID | None = None
    collected_at: datetime | None = None
    #: Read back only: the external id the screening was recorded with, what its ``ScreeningRecorded`` carried
    #: (``patient_external_id`` is then the patient's current one, which a correction may have changed).
    recorded_external_id: str | None = None


_SCREENING_COLUMNS = (
    "s.id, p.external_id, p.name_ciphertext, s.status, s.cbc, s.assessment, s.rejection_reason, s.label, "
    "s.risk_class, s.model_version, s.requested_by, s.correlation_id, s.requested_at, s.recorded_at, "
    "s.patient_id, s.consent_id, s.lab_id, s.doctor_id, s.collected_at, s.patient_external_id"
)
_FROM = "FROM screenings s JOIN patients p ON p.id = s.patient_id"
#: Narrows patient-bound rows to the patients referred to the doctor whose user id is ``:doctor_user``.
DOCTOR_SCOPE = "p.referring_doctor_id IN (SELECT d.id FROM doctors d WHERE d.user_id = :doctor_user)"


def _row(row: Any) -> NewScreening:
    return NewScreening(*row)


async def record(conn: AsyncConnection, screenings: list[NewScreening]) -> list[NewScreening]:
    """Insert screenings; returns each as stored, first write wins.

    The patient was resolved (and, if new, created) by the admission check; a command accepted before that
    check existed names only the external id, and its patient is created here when missing, never updated.
    The screening keeps the lab and the referring doctor the patient had when it was recorded, and the external
    id it was requested with.
    """
    legacy = [s for s in screenings if s.patient_id is None]
    if legacy:
        await conn.execute(
            text("INSERT INTO patients (id, external_id, name_ciphertext) VALUES (:id, :ext, :name) "
                 "ON CONFLICT (external_id) DO NOTHING"),
            [{"id": uuid.uuid4(), "ext": s.patient_external_id, "name": s.patient_name_ciphertext} for s in legacy],
        )
    insert = text(
        "INSERT INTO screenings (id, patient_id, status, cbc, assessment, rejection_reason, label, risk_class, "
        "model_version, requested_by, correlation_id, requested_at, recorded_at, consent_id, lab_id, doctor_id, "
        "collected_at, patient_external_id) "
        "SELECT :id, p.id, :status, :cbc, :assessment, :reason, :label, :risk, :model, :by, :corr, :req, :rec, "
        ":consent, p.lab_id, p.referring_doctor_id, :collected, :ext FROM patients p "
        "WHERE p.id = COALESCE(CAST(:pid AS uuid), (SELECT x.id FROM patients x WHERE x.external_id = :ext)) "
        "ON CONFLICT (id) DO NOTHING"
    ).bindparams(bindparam("cbc", type_=JSONB), bindparam("assessment", type_=JSONB))
    await conn.execute(
        insert,
        [
            {"id": s.id, "status": s.status, "cbc": s.cbc, "assessment": s.assessment, "reason": s.rejection_reason,
             "label": s.label, "risk": s.risk_class, "model": s.model_version, "by": s.requested_by,
             "corr": s.correlation_id, "req": s.requested_at, "rec": s.recorded_at, "ext": s.patient_external_id,
             "pid": s.patient_id, "consent": s.consent_id, "collected": s.collected_at}
            for s in screenings
        ],
    )
    stored = await conn.execute(
        text(f"SELECT {_SCREENING_COLUMNS} {_FROM} WHERE s.id = ANY(:ids)"),
        {"ids": [s.id for s in screenings]},
    )
    return [_row(r) for r in stored]


async def screening(conn: AsyncConnection, screening_id: uuid.UUID, *,
                    doctor_user: uuid.UUID | None = None) -> NewScreening | None:
    scope = f" AND {DOCTOR_SCOPE}" if doctor_user else ""
    params: dict[str, Any] = {"id": screening_id} | ({"doctor_user": doctor_user} if doctor_user else {})
    row = (await conn.execute(text(f"SELECT {_SCREENING_COLUMNS} {_FROM} WHERE s.id = :id{scope}"), params)).first()
    return _row(row) if row else None


@dataclass(frozen=True)
class HistoryFilter:
    patient_id: uuid.UUID | None = None
    patient_external_id: str | None = None
    lab_id: uuid.UUID | None = None
    doctor_id: uuid.UUID | None = None
    risk_class: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def used(self) -> list[str]:
        return [k for k, v in self.__dict__.items() if v is not None]


async def history(conn: AsyncConnection, *, limit: int, before: tuple[datetime, uuid.UUID] | None,
                  where: HistoryFilter | None = None, doctor_user: uuid.UUID | None = None,
                  patient_external_id: str | None = None) -> list[NewScreening]:
    """Newest first, keyset-paginated on (recorded_at, id) so pages stay stable while screenings arrive."""
    where = where or HistoryFilter(patient_external_id=patient_external_id)
    clauses, params = screening_scope(where, doctor_user)
    params["limit"] = limit
    if before is not None:
        clauses.append("(s.recorded_at, s.id) < (:before_at, :before_id)")
        params |= {"before_at": before[0], "before_id": before[1]}
    condition = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await conn.execute(
        text(f"SELECT {_SCREENING_COLUMNS} {_FROM} {condition} "
             "ORDER BY s.recorded_at DESC, s.id DESC LIMIT :limit"),
        params,
    )
    return [_row(r) for r in rows]


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# -- export ----------------------------------------------------------------------------------------------


@asynccontextmanager
async def snapshot(engine: AsyncEngine, schema: str) -> AsyncIterator[AsyncConnection]:
    """A read-only REPEATABLE READ transaction in ``schema``: every page of an export sees the same data,
    whatever is recorded while it streams. It only reads, so it ends with a rollback (which also recovers a
    connection whose query was cancelled when the client left)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        transaction = await conn.begin()
        try:
            await conn.execute(text("SELECT set_config('search_path', :schema, true)"), {"schema": schema})
            yield conn
        finally:
            await transaction.rollback()


def screening_scope(where: HistoryFilter, doctor_user: uuid.UUID | None) -> tuple[list[str], dict[str, Any]]:
    """The conditions on ``s`` (screenings) and ``p`` (patients) of a filter and a doctor's scope, shared by
    history and export, so an export holds exactly what the history shows."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for value, clause, name in (
        (where.patient_id, "s.patient_id = :patient_id", "patient_id"),
        (where.patient_external_id, "p.external_id = :ext", "ext"),
        (where.lab_id, "s.lab_id = :lab_id", "lab_id"),
        (where.doctor_id, "s.doctor_id = :doctor_id", "doctor_id"),
        (where.risk_class, "s.risk_class = :risk_class", "risk_class"),
        (where.since, "s.recorded_at >= :since", "since"),
        (where.until, "s.recorded_at < :until", "until"),
        (doctor_user, DOCTOR_SCOPE, "doctor_user"),
    ):
        if value is not None:
            clauses.append(clause)
            params[name] = value
    return clauses, params


async def export_counts(conn: AsyncConnection, where: HistoryFilter,
                        doctor_user: uuid.UUID | None) -> tuple[int, int]:
    """How many screenings, and of how many patients, an export holds."""
    clauses, params = screening_scope(where, doctor_user)
    condition = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    row = (await conn.execute(text(f"SELECT count(*), count(DISTINCT s.patient_id) {_FROM} {condition}"),
                              params)).one()
    return row[0], row[1]


async def export_screenings(conn: AsyncConnection, where: HistoryFilter, doctor_user: uuid.UUID | None, *,
                            before: tuple[datetime, uuid.UUID] | None, limit: int) -> list[ScreeningRecord]:
    """A page of an export, newest first, keyset-paginated on (recorded_at, id) like the history; only the
    assessment's fields an export shows are read."""
    clauses, params = screening_scope(where, doctor_user)
    if before is not None:
        clauses.append("(s.recorded_at, s.id) < (:before_at, :before_id)")
        params |= {"before_at": before[0], "before_id": before[1]}
    condition = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await conn.execute(text(
        "SELECT s.id, s.patient_id, p.external_id, p.name_ciphertext, s.status, s.cbc, s.label, s.risk_class, "
        "(s.assessment->'probabilities'->>'normal')::float8, (s.assessment->'probabilities'->>'borderline')::float8, "
        "(s.assessment->'probabilities'->>'deficient')::float8, s.model_version, "
        "s.assessment->'model'->>'artifacts_sha256', s.rejection_reason, s.lab_id, s.doctor_id, s.consent_id, "
        f"s.requested_at, s.recorded_at, s.collected_at {_FROM} {condition} "
        "ORDER BY s.recorded_at DESC, s.id DESC LIMIT :limit"),
        params | {"limit": limit})
    return [ScreeningRecord(*r[:5], as_json(r[5]), *r[6:]) for r in rows]


async def export_patients(conn: AsyncConnection, where: HistoryFilter, doctor_user: uuid.UUID | None, *,
                          after: uuid.UUID | None, limit: int) -> list[PatientRecord]:
    """A page of the patients with at least one screening in the export, by id: each patient once, without
    remembering which were seen."""
    clauses, params = screening_scope(where, doctor_user)
    outer = "WHERE p.id > :after AND " if after is not None else "WHERE "
    rows = await conn.execute(text(
        f"SELECT p.id, p.external_id, p.name_ciphertext, p.sex FROM patients p {outer}"
        f"EXISTS (SELECT 1 FROM screenings s WHERE {' AND '.join(['s.patient_id = p.id', *clauses])}) "
        "ORDER BY p.id LIMIT :limit"),
        params | {"limit": limit} | ({"after": after} if after is not None else {}))
    return [PatientRecord(*r) for r in rows]


# -- PHI keys ----------------------------------------------------------------------------------------------

#: Every encrypted column of a tenant: (table, ciphertext column, key id column, blind index column).
ENCRYPTED_COLUMNS = (
    ("patients", "name_ciphertext", "name_key_id", "name_index"),
    ("consents", "text_ciphertext", "text_key_id", None),
)


async def key_usage(conn: AsyncConnection) -> dict[str | None, int]:
    """How many ciphertexts of this tenant each key id made (``None``: made before key ids were kept)."""
    usage: dict[str | None, int] = {}
    for table, ciphertext, key_id, _ in ENCRYPTED_COLUMNS:
        rows = await conn.execute(text(
            f"SELECT {key_id}, count(*) FROM {table} WHERE {ciphertext} IS NOT NULL GROUP BY {key_id}"))
        for kid, count in rows:
            usage[kid] = usage.get(kid, 0) + count
    return usage


# -- analytics -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedFacts:
    """What the de-identified analytics stream may be made of: no name, no external id, no consent.

    ``assessment`` holds only the parts the stream carries (``ANALYTICS_ASSESSMENT``), not the findings and
    explanations that are most of a stored assessment's size.
    """

    id: uuid.UUID
    patient_id: uuid.UUID
    status: str
    cbc: dict[str, Any]
    assessment: dict[str, Any] | None
    recorded_at: datetime
    lab_id: uuid.UUID | None
    doctor_id: uuid.UUID | None
    collected_at: datetime | None = None


#: The keys of a stored assessment the analytics stream carries.
ANALYTICS_ASSESSMENT = ("label", "risk_class", "probabilities", "model")
_ANALYTICS_ASSESSMENT_SQL = ("CASE WHEN s.assessment IS NULL THEN NULL ELSE jsonb_build_object("
                             + ", ".join(f"'{key}', s.assessment -> '{key}'" for key in ANALYTICS_ASSESSMENT)
                             + ") END")


async def recorded_facts(conn: AsyncConnection, screening_ids: list[uuid.UUID]) -> list[RecordedFacts]:
    """The stored screenings among ``screening_ids``; the patients table is not even read. The assessment is
    cut to what the stream carries in the database: decoding whole assessments was a fifth of a bulk chunk's
    CPU in this service."""
    rows = await conn.execute(
        text(f"SELECT s.id, s.patient_id, s.status, s.cbc, {_ANALYTICS_ASSESSMENT_SQL}, s.recorded_at, "
             "s.lab_id, s.doctor_id, s.collected_at FROM screenings s WHERE s.id = ANY(:ids)"),
        {"ids": screening_ids},
    )
    return [RecordedFacts(r[0], r[1], r[2], as_json(r[3]), as_json(r[4]), *r[5:]) for r in rows]


@dataclass(frozen=True)
class Tally:
    """Counts of one group of screenings: the whole period (``dimension`` "total"), a day, a lab or a doctor.

    ``per_risk_class`` and ``per_label`` count classified screenings only; a lab or doctor that is None
    groups the screenings of patients without one.
    """

    dimension: str
    day: date | None
    lab_id: uuid.UUID | None
    lab_name: str | None
    doctor_id: uuid.UUID | None
    doctor_name: str | None
    screenings: int
    classified: int
    rejected: int
    patients: int
    per_risk_class: dict[int, int]
    per_label: dict[str, int]


# Filter columns over the contract's classes and labels (code constants, never client input).
_CLASS_COUNTS = "".join(f", count(*) FILTER (WHERE x.risk_class = {int(c)})" for c in RiskClass)
_LABEL_COUNTS = "".join(f", count(*) FILTER (WHERE x.label = '{label.value}')" for label in Label)


async def tallies(conn: AsyncConnection, *, start: datetime, end: datetime,
                  doctor_user: uuid.UUID | None = None) -> list[Tally]:
    """Screenings recorded in [start, end) counted in one pass: in total, per UTC day, per lab, per doctor.

    A doctor's tallies (``doctor_user``) cover only patients referred to them, as their history does.
    """
    scope = f" AND {DOCTOR_SCOPE}" if doctor_user else ""
    params: dict[str, Any] = {"start": start, "end": end}
    if doctor_user:
        params["doctor_user"] = doctor_user
    rows = await conn.execute(text(
        "WITH x AS (SELECT s.patient_id, s.status, s.risk_class, s.label, s.lab_id, s.doctor_id, "
        "(s.recorded_at AT TIME ZONE 'UTC')::date AS day "
        f"{_FROM} WHERE s.recorded_at >= :start AND s.recorded_at < :end{scope}) "
        "SELECT CASE WHEN GROUPING(x.day) = 0 THEN 'day' WHEN GROUPING(x.lab_id) = 0 THEN 'lab' "
        "WHEN GROUPING(x.doctor_id) = 0 THEN 'doctor' ELSE 'total' END, "
        "x.day, x.lab_id, l.name, x.doctor_id, d.name, count(*), "
        "count(*) FILTER (WHERE x.status = 'classified'), count(*) FILTER (WHERE x.status = 'rejected'), "
        f"count(DISTINCT x.patient_id){_CLASS_COUNTS}{_LABEL_COUNTS} "
        "FROM x LEFT JOIN labs l ON l.id = x.lab_id LEFT JOIN doctors d ON d.id = x.doctor_id "
        "GROUP BY GROUPING SETS ((), (x.day), (x.lab_id, l.name), (x.doctor_id, d.name)) "
        "ORDER BY 1, x.day, count(*) DESC, l.name, d.name"), params)
    classes = len(RiskClass)
    return [
        Tally(*r[:10],
              per_risk_class={int(c): r[10 + i] for i, c in enumerate(RiskClass)},
              per_label={label.value: r[10 + classes + i] for i, label in enumerate(Label)})
        for r in rows
    ]


# -- bulk screening ----------------------------------------------------------------------------------------


async def admission_facts_many(conn: AsyncConnection, external_ids: list[str]) -> tuple[dict[str, Any],
                                                                                          dict[str, dict[str, Any]]]:
    """The policy, and per known patient among ``external_ids`` what the admission check compares: name index,
    whether a name is recorded, sex, the active consent of the policy's type. Two round trips for any count."""
    policy = (await conn.execute(text("SELECT consent_required, consent_type, expected_prevalence FROM policy"))
              ).mappings().one()
    rows = await conn.execute(
        text("SELECT p.external_id, p.id AS patient_id, p.name_index, p.name_ciphertext IS NOT NULL AS has_name, "
             "p.sex, (SELECT c.id FROM consents c WHERE c.patient_id = p.id AND c.consent_type = :type "
             "  AND c.status = 'active' ORDER BY c.recorded_at DESC LIMIT 1) AS consent_id "
             "FROM unnest(CAST(:ids AS text[])) AS v(external_id) JOIN patients p ON p.external_id = v.external_id"),
        {"ids": external_ids, "type": policy["consent_type"]},
    )
    return dict(policy), {r["external_id"]: dict(r) for r in rows.mappings()}


async def insert_patients_if_absent(conn: AsyncConnection, patients: list[dict[str, Any]],
                                    created_by: uuid.UUID | None) -> set[str]:
    """Insert new patients in one statement; returns the external ids inserted (others existed already)."""
    if not patients:
        return set()
    inserted = await conn.scalars(
        text("INSERT INTO patients (id, external_id, name_ciphertext, name_key_id, name_index, age, sex, created_by) "
             "SELECT v.id, v.external_id, v.name_ciphertext, v.name_key_id, v.name_index, v.age, v.sex, :by "
             "FROM unnest(CAST(:id AS uuid[]), CAST(:external_id AS text[]), CAST(:name_ciphertext AS text[]), "
             "CAST(:name_key_id AS text[]), CAST(:name_index AS text[]), CAST(:age AS smallint[]), "
             "CAST(:sex AS text[])) AS v(id, external_id, name_ciphertext, name_key_id, name_index, age, sex) "
             "ON CONFLICT (external_id) DO NOTHING RETURNING external_id"),
        {"by": created_by} | {c: [p.get(c) for p in patients]
                              for c in ("id", "external_id", "name_ciphertext", "name_key_id", "name_index", "age",
                                        "sex")},
    )
    return set(inserted.all())


@dataclass(frozen=True)
class BatchScreening:
    """A row of a classified chunk in its stored form (JSON already serialised)."""

    id: uuid.UUID
    patient_id: uuid.UUID
    status: str
    cbc: str
    assessment: str | None
    rejection_reason: str | None
    label: str | None
    risk_class: int | None
    model_version: str | None
    requested_at: datetime
    consent_id: uuid.UUID | None
    batch_row: int
    patient_external_id: str
    collected_at: datetime | None = None


async def record_batch(conn: AsyncConnection, screenings: list[BatchScreening], *, job_id: uuid.UUID,
                       requested_by: uuid.UUID | None, correlation_id: uuid.UUID,
                       recorded_at: datetime) -> set[uuid.UUID]:
    """Insert a chunk's screenings in one statement, first write wins; returns the ids inserted now.

    Like ``record``, each screening keeps the lab and referring doctor its patient has at this moment, and the
    external id its row named.
    """
    columns = {
        "ids": ("uuid", [s.id for s in screenings]), "patients": ("uuid", [s.patient_id for s in screenings]),
        "statuses": ("text", [s.status for s in screenings]), "cbcs": ("text", [s.cbc for s in screenings]),
        "assessments": ("text", [s.assessment for s in screenings]),
        "reasons": ("text", [s.rejection_reason for s in screenings]),
        "labels": ("text", [s.label for s in screenings]), "risks": ("smallint", [s.risk_class for s in screenings]),
        "models": ("text", [s.model_version for s in screenings]),
        "requested": ("timestamptz", [s.requested_at for s in screenings]),
        "consents": ("uuid", [s.consent_id for s in screenings]), "rows": ("integer", [s.batch_row for s in screenings]),
        "collected": ("timestamptz", [s.collected_at for s in screenings]),
        "external_ids": ("text", [s.patient_external_id for s in screenings]),
    }
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, (kind, _) in columns.items())
    inserted = await conn.scalars(
        text("INSERT INTO screenings (id, patient_id, status, cbc, assessment, rejection_reason, label, risk_class, "
             "model_version, requested_by, correlation_id, requested_at, recorded_at, consent_id, lab_id, doctor_id, "
             "batch_job_id, batch_row, collected_at, patient_external_id) "
             "SELECT v.id, p.id, v.status, CAST(v.cbc AS jsonb), CAST(v.assessment AS jsonb), v.reason, v.label, "
             "v.risk, v.model, :by, :correlation, v.requested, :recorded, v.consent, p.lab_id, p.referring_doctor_id, "
             f":job, v.batch_row, v.collected, v.external_id FROM unnest({arrays}) "
             "AS v(id, patient, status, cbc, assessment, reason, label, risk, model, requested, consent, batch_row, "
             "collected, external_id) "
             "JOIN patients p ON p.id = v.patient ON CONFLICT (id) DO NOTHING RETURNING id"),
        {name: values for name, (_, values) in columns.items()}
        | {"by": requested_by, "correlation": correlation_id, "recorded": recorded_at, "job": job_id},
    )
    return set(inserted.all())


async def screenings_by_id(conn: AsyncConnection, screening_ids: list[uuid.UUID]) -> list[NewScreening]:
    """Stored screenings among ``screening_ids`` (to re-announce them as they were recorded)."""
    rows = await conn.execute(text(f"SELECT {_SCREENING_COLUMNS} {_FROM} WHERE s.id = ANY(:ids)"),
                              {"ids": screening_ids})
    return [_row(r) for r in rows]
