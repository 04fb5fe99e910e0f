"""HTTP routes of the screening service (reached through the gateway): screenings, export, policy, admission.

A doctor sees only the screenings of patients referred to them; org admins and lab technicians see all of
their organisation's. ``POST /internal/admissions`` is not routed by the gateway to clients: the gateway
calls it (with the caller's token) before accepting a classify request.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from screening import domain, store
from screening import export as ex
from screening import record_store as rs
from screening.access import ADMIN, CLINICIANS, ORG_ROLES, RECORD_KEEPERS, Tenant, tenant
from screening.batch import recorded_before
from shared.events import records as ev
from shared.events.screening import Assessment, ScreeningRecordedV1, Sex
from shared.text import Text
from shared.tokens import Role

router = APIRouter(tags=["screenings"])
Clinician = Annotated[Tenant, Depends(tenant(*CLINICIANS))]
Exporter = Annotated[Tenant, Depends(tenant(*ADMIN))]
Member = Annotated[Tenant, Depends(tenant(*ORG_ROLES))]
Screener = Annotated[Tenant, Depends(tenant(*RECORD_KEEPERS))]


class Screening(BaseModel):
    id: uuid.UUID
    status: str
    patient_id: uuid.UUID
    patient_external_id: str
    patient_name: str | None
    cbc: dict[str, Any]
    assessment: Assessment | None
    rejection_reason: str | None
    lab_id: uuid.UUID | None
    doctor_id: uuid.UUID | None
    consent_id: uuid.UUID | None
    requested_at: datetime
    recorded_at: datetime
    collected_at: datetime | None = Field(None, description="When the blood was drawn, as the lab reported it")


class ScreeningPage(BaseModel):
    items: list[Screening]
    next_cursor: str | None


def _present(row: store.NewScreening, t: Tenant) -> Screening:
    assert row.patient_id is not None
    return Screening(
        id=row.id, status=row.status, patient_id=row.patient_id, patient_external_id=row.patient_external_id,
        patient_name=t.vault.open(row.patient_name_ciphertext), cbc=store.as_json(row.cbc),
        assessment=store.as_json(row.assessment), rejection_reason=row.rejection_reason, lab_id=row.lab_id,
        doctor_id=row.doctor_id, consent_id=row.consent_id, requested_at=row.requested_at,
        recorded_at=row.recorded_at, collected_at=row.collected_at,
    )


def history_filter(
    patient_id: uuid.UUID | None = None,
    patient_external_id: Text | None = None,
    lab_id: uuid.UUID | None = None,
    doctor_id: uuid.UUID | None = None,
    risk_class: Annotated[int | None, Query(ge=1, le=3)] = None,
    since: Annotated[datetime | None, Query(description="Recorded at or after (ISO 8601; UTC if no zone)")] = None,
    until: Annotated[datetime | None, Query(description="Recorded before (ISO 8601; UTC if no zone)")] = None,
) -> store.HistoryFilter:
    return store.HistoryFilter(patient_id, patient_external_id, lab_id, doctor_id, risk_class,
                               domain.as_utc(since), domain.as_utc(until))


Filter = Annotated[store.HistoryFilter, Depends(history_filter)]


async def _viewed(t: Tenant, conn: Any, endpoint: str, items: list[Screening]) -> None:
    named = [s for s in items if s.patient_name is not None]
    if named:
        await t.emit(conn, ev.PhiViewedV1(resource="screening", endpoint=endpoint,
                                          patient_ids=sorted({s.patient_id for s in named}),
                                          record_count=len(named)))


@router.get("/api/screening/history", response_model=ScreeningPage)
async def history(t: Clinician, where: Filter, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: Text | None = None) -> ScreeningPage:
    try:
        before = domain.decode_cursor(cursor) if cursor else None
    except domain.BadCursor as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    async with t.tx() as conn:
        rows = await store.history(conn, limit=limit, before=before, where=where, doctor_user=t.doctor_user)
        items = [_present(r, t) for r in rows]
        await _viewed(t, conn, "history", items)
    return ScreeningPage(items=items, next_cursor=domain.encode_cursor(rows[-1].recorded_at, rows[-1].id)
                         if len(rows) == limit else None)


# -- export ----------------------------------------------------------------------------------------------

#: Who exports: org admins (everything) and doctors (their referred patients only, as in their history).
EXPORT_ROLES = (Role.ORG_ADMIN, Role.DOCTOR)
#: Screenings read per keyset page; FHIR pages are smaller because their text is ~20-35 times larger.
EXPORT_PAGE_ROWS = {ex.ExportFormat.CSV: 1000, ex.ExportFormat.FHIR: 200, ex.ExportFormat.NDJSON: 200}
EXPORT_TYPE_HELP = "The resource type of an NDJSON export (format=ndjson only)"
EXPORT_SUFFIXES = {ex.ExportFormat.CSV: "csv", ex.ExportFormat.FHIR: "json", ex.ExportFormat.NDJSON: "ndjson"}
Exporting = Annotated[Tenant, Depends(tenant(*EXPORT_ROLES))]
log = logging.getLogger(__name__)


def _no_name(_: str | None) -> None:
    return None


class _ExportRun:
    """One export: a snapshot read page by page, rendered off the event loop, with two events: one committed
    before the first byte (so every export that starts is on record) and one when it ends, however it ends."""

    def __init__(self, t: Tenant, where: store.HistoryFilter, fmt: ex.ExportFormat, writer: ex.ExportWriter,
                 started: ev.RecordsExportStartedV1, conn: AsyncConnection, snapshot: AsyncExitStack) -> None:
        self.t, self.where, self.fmt, self.writer, self.started = t, where, fmt, writer, started
        self._conn, self._snapshot, self._ended = conn, snapshot, False

    @classmethod
    async def start(cls, t: Tenant, where: store.HistoryFilter, fmt: ex.ExportFormat,
                    resource_type: ex.ResourceType | None) -> _ExportRun:
        export_id = uuid.uuid4()
        names = t.principal.role in CLINICIANS  # the roles that read screenings read the names in them
        name_of = t.vault.open if names else _no_name
        writer: ex.ExportWriter
        if fmt is ex.ExportFormat.CSV:
            writer = ex.CsvWriter(t.org, name_of)
        elif fmt is ex.ExportFormat.FHIR:
            writer = ex.BundleWriter(t.org, name_of, export_id, datetime.now(UTC))
        else:
            assert resource_type is not None
            writer = ex.NdjsonWriter(t.org, name_of, resource_type)
        snapshot = AsyncExitStack()
        try:
            conn = await snapshot.enter_async_context(store.snapshot(t.engine, t.schema))
            screenings, patients = await store.export_counts(conn, where, t.doctor_user)
            started = ev.RecordsExportStartedV1(
                export_id=export_id, resource="screenings", format=fmt.value,
                resource_type=resource_type.value if resource_type else None, filters=where.used(),
                screening_count=screenings, patient_count=patients, names_included=names)
            async with t.tx() as audit:
                await t.emit(audit, started)
        except BaseException:
            await snapshot.aclose()
            raise
        return cls(t, where, fmt, writer, started, conn, snapshot)

    @property
    def filename(self) -> str:
        return f"{self.started.resource_type or 'screenings'}-{self.started.export_id}.{EXPORT_SUFFIXES[self.fmt]}"

    async def body(self) -> AsyncIterator[bytes]:
        completed = False
        conn, where, doctor, rows = self._conn, self.where, self.t.doctor_user, EXPORT_PAGE_ROWS[self.fmt]
        try:
            yield self.writer.head()
            if self.writer.with_patients:
                after: uuid.UUID | None = None
                while patients := await store.export_patients(conn, where, doctor, after=after, limit=rows):
                    yield await run_in_threadpool(self.writer.patients, patients)
                    after = patients[-1].id
            if self.writer.with_screenings:
                before: tuple[datetime, uuid.UUID] | None = None
                while screenings := await store.export_screenings(conn, where, doctor, before=before, limit=rows):
                    yield await run_in_threadpool(self.writer.screenings, screenings)
                    before = (screenings[-1].recorded_at, screenings[-1].id)
            yield self.writer.tail()
            completed = True
        except ex.InvalidResource as error:  # never emitted: the response is cut off without its last chunk
            log.error("export %s cut off: the FHIR library refuses what it would emit: %s",
                      self.started.export_id, error)
            raise
        finally:
            await self.end(completed)

    async def end(self, completed: bool) -> None:
        """Release the snapshot and record how the export ended, once; shielded, as the client may be gone."""
        if self._ended:
            return
        self._ended = True
        s = self.started
        with anyio.CancelScope(shield=True):
            try:
                await self._snapshot.aclose()
            except Exception:  # e.g. a query cancelled midway: the connection is dropped, the end still recorded
                log.warning("export %s: its snapshot did not close cleanly", s.export_id, exc_info=True)
            try:
                async with self.t.tx() as audit:
                    await self.t.emit(audit, ev.RecordsExportedV1(
                        resource=s.resource, format=s.format, row_count=self.writer.rows,
                        patient_count=s.patient_count, filters=s.filters, export_id=s.export_id,
                        resource_type=s.resource_type, completed=completed))
            except Exception:
                log.warning("the end of export %s is not recorded (its start is)", s.export_id, exc_info=True)


class _ExportResponse(StreamingResponse):
    """Ends the export even when its body was never read (the client left before the first byte)."""

    def __init__(self, run: _ExportRun, **options: Any) -> None:
        super().__init__(run.body(), **options)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.run.end(completed=False)


@router.get("/api/screening/export", tags=["screenings"], responses={200: {
    "content": {media: {} for media in ex.MEDIA_TYPES.values()},
    "description": "Streamed: CSV (header row; names where the role may see them), a FHIR R4 Bundle "
                   "(collection) or FHIR NDJSON of one resource type"}})
async def export(
    t: Exporting, where: Filter,
    format_: Annotated[ex.ExportFormat, Query(alias="format")] = ex.ExportFormat.CSV,
    type_: Annotated[ex.ResourceType | None, Query(alias="type", description=EXPORT_TYPE_HELP)] = None,
) -> Response:
    """The screenings the history's filters select (newest first), streamed in constant memory from one
    consistent snapshot; each export is an event when it starts and when it ends (docs/export.md)."""
    if (format_ is ex.ExportFormat.NDJSON) != (type_ is not None):
        message = "only with format=ndjson" if type_ else \
            "required with format=ndjson: Patient, Observation, RiskAssessment or DiagnosticReport"
        raise RequestValidationError([{"loc": ("query", "type"), "msg": message, "type": "value_error"}])
    run = await _ExportRun.start(t, where, format_, type_)
    return _ExportResponse(run, media_type=ex.MEDIA_TYPES[format_],
                           headers={"content-disposition": f'attachment; filename="{run.filename}"'})


@router.get("/api/screenings/{screening_id}", response_model=Screening)
async def get_screening(screening_id: uuid.UUID, t: Clinician) -> Screening:
    async with t.tx() as conn:
        row = await store.screening(conn, screening_id, doctor_user=t.doctor_user)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such screening")
        item = _present(row, t)
        await _viewed(t, conn, "get_screening", [item])
    return item


@router.get("/api/screenings/{screening_id}/recorded", response_model=ScreeningRecordedV1)
async def get_recorded_screening(screening_id: uuid.UUID, t: Clinician) -> Response:
    """The screening as recorded: the ``ScreeningRecorded`` object its event carried (a bulk row's, inside its
    chunk's event), rebuilt from the record (with the external id it was recorded with, whatever the patient's is
    now), so the organisation can check it against the audit ledger's digest (``clinomic-audit-verify
    verify-proof --screening``). No name in it, so no PHI is viewed. The gateway answers 202 pending for one
    accepted but not recorded yet."""
    async with t.tx() as conn:
        row = await store.screening(conn, screening_id, doctor_user=t.doctor_user)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such screening")
    return Response(recorded_before(row).model_dump_json(), media_type="application/json")


# -- policy ----------------------------------------------------------------------------------------------


EXPECTED_PREVALENCE = (
    "Expected fraction of the adults this organisation screens with serum B12 < 200 pg/mL (e.g. 0.10 for a "
    "geriatric clinic); the model corrects its probabilities to it (prior shift). null: the population the "
    "model was calibrated on (docs/model.md)")


class Policy(BaseModel):
    consent_required: bool = Field(description="Classify is refused without an active consent of consent_type")
    consent_type: str
    expected_prevalence: float | None = Field(description=EXPECTED_PREVALENCE)
    updated_by: uuid.UUID | None
    updated_at: datetime


class PolicyIn(BaseModel):
    """The whole policy, except ``expected_prevalence``, which is kept as it is when left out (so a client
    that only knows the consent rules never clears it by accident)."""

    model_config = ConfigDict(extra="forbid")

    consent_required: bool
    consent_type: str = Field("screening", pattern=r"^[a-z][a-z0-9_]{0,39}$")
    expected_prevalence: float | None = Field(None, gt=0.0, lt=1.0, description=EXPECTED_PREVALENCE)


@router.get("/api/screening/policy", response_model=Policy, tags=["policy"])
async def get_policy(t: Member) -> Policy:
    async with t.tx() as conn:
        return Policy.model_validate(await rs.policy(conn))


@router.put("/api/screening/policy", response_model=Policy, tags=["policy"])
async def put_policy(body: PolicyIn, t: Exporter) -> Policy:
    async with t.tx() as conn:
        before = await rs.policy(conn)
        prevalence = (body.expected_prevalence if "expected_prevalence" in body.model_fields_set
                      else before["expected_prevalence"])
        row = await rs.set_policy(conn, consent_required=body.consent_required, consent_type=body.consent_type,
                                  expected_prevalence=prevalence, updated_by=t.principal.user_id)
        if domain.changed_fields(before, body.model_dump(include={"consent_required", "consent_type"})):
            await t.emit(conn, ev.ConsentPolicyChangedV1(consent_required=body.consent_required,
                                                         consent_type=body.consent_type))
        if prevalence != before["expected_prevalence"]:
            await t.emit(conn, ev.ExpectedPrevalenceDeclaredV1(expected_prevalence=prevalence,
                                                               previous=before["expected_prevalence"]))
    return Policy.model_validate(row)


# -- admission -------------------------------------------------------------------------------------------


class AdmissionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_id: Text = Field(min_length=1, max_length=64)
    name_ciphertext: Text | None = Field(None, description="The gateway's Fernet ciphertext of the name")
    sex: Sex | None = None
    age: float | None = None


class Admission(BaseModel):
    patient_id: uuid.UUID
    consent_id: uuid.UUID | None
    expected_prevalence: float | None = Field(None, description="The policy's, carried into the command")


REFUSALS = {
    "consent_required": (status.HTTP_403_FORBIDDEN,
                         "screening refused: no active consent is recorded for this patient and your "
                         "organisation's policy requires one; record it with POST /api/consents"),
    "patient_details_mismatch": (status.HTTP_409_CONFLICT,
                                 "screening refused: the patient details given differ from the patient's record; "
                                 "a screening never changes a patient: correct the request, or update the "
                                 "patient with PATCH /api/patients/{id}"),
}


@router.post("/internal/admissions", response_model=Admission, tags=["internal"])
async def admit(body: AdmissionIn, t: Screener, request: Request) -> Response:
    """May this classify request be accepted? Creates the patient when new and the policy needs no consent.

    An admitted classify reaches this service's recorder a few milliseconds later: it is told now, so that
    after a quiet spell it does not wait for a resting poll (``shared.kafka.Tempo``)."""
    try:
        name = t.vault.open(body.name_ciphertext)
    except ValueError:
        return JSONResponse({"detail": "the patient name is not readable with this service's keys"}, 503)
    name_index = t.vault.name_index(t.org, name) if name is not None else None
    sex = body.sex.value if body.sex else None

    def judge(facts: Any) -> domain.Admitted | domain.Refused:
        stored = None if facts["patient_id"] is None else domain.StoredPatient(
            facts["patient_id"], facts["name_index"], facts["has_name"], facts["sex"])
        return domain.admit(consent_required=facts["consent_required"], patient=stored,
                            consent_id=facts["consent_id"], name_index=name_index, sex=sex)

    # The usual case (a known patient, admitted) only reads: one query with the tenant's schema named in
    # it, outside a transaction. Anything else (a new patient, a refusal) writes, in a tenant transaction.
    async with t.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        facts = await rs.admission_facts(conn, body.external_id, schema=t.schema)
        verdict = judge(facts)
    if not (isinstance(verdict, domain.Admitted) and verdict.patient_id is not None):
        async with t.tx() as conn:
            facts = await rs.admission_facts(conn, body.external_id)
            verdict = judge(facts)
            if isinstance(verdict, domain.Admitted) and verdict.patient_id is None:
                verdict = await _create_patient(t, conn, body, name, sex)
            if isinstance(verdict, domain.Refused):
                await t.emit(conn, ev.ScreeningAdmissionRefusedV1(
                    reason=verdict.reason, patient_id=verdict.patient_id,  # type: ignore[arg-type]
                    fields=list(verdict.fields)))
    if isinstance(verdict, domain.Refused):
        code, detail = REFUSALS[verdict.reason]
        content: dict[str, Any] = {"detail": detail, "code": verdict.reason}
        if verdict.fields:
            content["fields"] = list(verdict.fields)
        return JSONResponse(content, status_code=code)
    assert verdict.patient_id is not None
    request.app.state.classify_coming()
    admitted = Admission(patient_id=verdict.patient_id, consent_id=verdict.consent_id,
                         expected_prevalence=facts["expected_prevalence"])
    return JSONResponse(admitted.model_dump(mode="json"))


async def _create_patient(t: Tenant, conn: Any, body: AdmissionIn, name: str | None,
                          sex: str | None) -> domain.Admitted | domain.Refused:
    """A new patient (only when no consent is required); a concurrent creation is compared like any other."""
    values: dict[str, Any] = {"external_id": body.external_id, "sex": sex,
                              "age": int(body.age) if body.age is not None else None}
    if name is not None:
        sealed = t.vault.seal_name(t.org, name)
        values |= {"name_ciphertext": sealed.ciphertext, "name_key_id": sealed.key_id, "name_index": sealed.index}
    row = await rs.insert_patient(conn, values, t.principal.user_id, if_absent=True)
    if row is not None:
        await t.emit(conn, ev.PatientCreatedV1(patient_id=row["id"], lab_id=None, referring_doctor_id=None,
                                               via="classify"))
        return domain.Admitted(row["id"], None)
    raced = await rs.patient_by_external_id(conn, body.external_id)
    assert raced is not None
    stored = domain.StoredPatient(raced["id"], raced["name_index"], raced["name_ciphertext"] is not None,
                                  raced["sex"])
    mismatches = domain.patient_mismatches(stored, name_index=values.get("name_index"), sex=sex)
    return domain.Refused("patient_details_mismatch", raced["id"], tuple(mismatches)) if mismatches \
        else domain.Admitted(raced["id"], None)
