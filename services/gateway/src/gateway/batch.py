"""Bulk screening at the edge, without I/O: read an upload, check every row, cut the chunks, shape the reports.

An upload is CSV (a header row, then one row per CBC) or a JSON array of classify bodies
(``[{"patient": {...}, "cbc": {...}}, ...]``). Every row is checked against the contract classify uses
(``PatientIn`` and ``CompleteBloodCount``); a row with problems is reported with its number, the field and
the reason, never the value (a name typed into a CBC column must not end up in a stored report), and the
other rows proceed. Rows are numbered from 1: in CSV the first row after the header is row 1 (blank lines
are skipped and not counted), in JSON the first element of the array.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from gateway.api import ClassifyRequest
from shared.events import Actor, Envelope, new_envelope
from shared.events import batch as ev
from shared.events.screening import CompleteBloodCount, PatientReference, RiskClass
from shared.web import MAX_JSON_DEPTH, json_too_deep

T = TypeVar("T")

CSV, JSON = "csv", "json"
#: The media types an upload may declare, and the source each one means.
MEDIA_TYPES = {"text/csv": CSV, "application/json": JSON}
CBC_FIELDS: tuple[str, ...] = tuple(CompleteBloodCount.model_fields)
REQUIRED_COLUMNS: tuple[str, ...] = ("external_id", *CBC_FIELDS)
CSV_COLUMNS: tuple[str, ...] = ("external_id", "name", *CBC_FIELDS)
#: Every column a header may name: ``name`` and ``collected_at`` are optional (an empty cell: not given).
ACCEPTED_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, "collected_at")
_TEXT_COLUMNS = frozenset({"external_id", "name", "sex"})
#: A column name shown back in an error only if it looks like one (a data row taken for a header is not echoed).
_PRINTABLE_COLUMN = re.compile(r"^[a-z][a-z0-9_ ]{0,39}$")
#: Rejected rows given in full in an answer; the rest are paged from the job.
REPORTED_ROWS = 100

CONSENT_REQUIRED = "consent_required"
PATIENT_DETAILS_MISMATCH = "patient_details_mismatch"
REFUSAL_MESSAGES = {
    CONSENT_REQUIRED: ("no active screening consent is recorded for this patient and the organisation's policy "
                       "requires one; record it with POST /api/consents"),
    PATIENT_DETAILS_MISMATCH: ("differs from the patient's record; a screening never changes a patient: correct "
                               "the row, or update the patient with PATCH /api/patients/{id}"),
}
#: Where a patient detail the admission check compares sits in a classify body.
_PATIENT_DETAILS = {"name": ("patient", "name"), "sex": ("cbc", "sex")}


# -- reading and checking --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    type: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "type": self.type}


@dataclass(frozen=True)
class RejectedRow:
    row: int
    errors: tuple[Problem, ...]

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "errors": [p.as_json() for p in self.errors]}


@dataclass(frozen=True)
class CheckedRow:
    """A row that passed the contract; the name is still plaintext here and is encrypted before it leaves."""

    row: int
    external_id: str
    name: str | None
    cbc: CompleteBloodCount
    collected_at: datetime | None = None


@dataclass(frozen=True)
class CheckedBatch:
    source: str
    total: int
    accepted: list[CheckedRow]
    rejected: list[RejectedRow]


class UnreadableBatch(ValueError):
    """The upload as a whole cannot be screened (not CSV or JSON, no header, no rows, too many rows)."""

    def __init__(self, field: str, message: str, kind: str) -> None:
        super().__init__(message)
        self.problem = Problem(field, message, kind)


def field_name(source: str, loc: Sequence[str | int]) -> str:
    """How a problem names its field: the column in CSV (``hb``), the path in JSON (``cbc.hb``)."""
    parts = [str(p) for p in loc]
    if not parts:
        return "row"
    return parts[-1] if source == CSV else ".".join(parts)


def read_batch(data: bytes, source: str, max_rows: int) -> CheckedBatch:
    """Every row of an upload checked; raises :class:`UnreadableBatch` when there is nothing to check."""
    return read_csv(data, max_rows) if source == CSV else read_json(data, max_rows)


def read_csv(data: bytes, max_rows: int) -> CheckedBatch:
    try:
        text = data.decode("utf-8-sig")
        records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in r)]
    except UnicodeDecodeError:
        raise UnreadableBatch("body", "the file is not UTF-8 text", "unreadable_file") from None
    except csv.Error:
        raise UnreadableBatch("body", "the file is not readable as CSV", "unreadable_file") from None
    if not records:
        raise UnreadableBatch("body", "the file is empty: a header row and at least one row are needed",
                              "empty_batch")
    header = [cell.strip().lower() for cell in records[0]]
    _check_header(header)
    rows = records[1:]
    if not rows:
        raise UnreadableBatch("body", "the file has a header row but no rows", "empty_batch")
    _check_row_count(len(rows), max_rows)
    position = {name: i for i, name in enumerate(header)}
    accepted: list[CheckedRow] = []
    rejected: list[RejectedRow] = []
    for number, cells in enumerate(rows, start=1):
        if len(cells) != len(header):
            rejected.append(RejectedRow(number, (Problem(
                "row", f"{len(cells)} values for {len(header)} columns", "wrong_number_of_values"),)))
            continue
        checked = check_row(number, _classify_body(cells, position), CSV)
        (accepted if isinstance(checked, CheckedRow) else rejected).append(checked)  # type: ignore[arg-type]
    return CheckedBatch(CSV, len(rows), accepted, rejected)


def read_json(data: bytes, max_rows: int) -> CheckedBatch:
    if json_too_deep(data):  # the parser would recurse per level and fail with RecursionError
        raise UnreadableBatch("body", f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels, or malformed",
                              "json_too_deep")
    try:
        items = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise UnreadableBatch("body", "the body is not valid JSON", "json_invalid") from None
    if not isinstance(items, list):
        raise UnreadableBatch("body", 'a JSON batch is an array of classify bodies: [{"patient": {...}, '
                              '"cbc": {...}}, ...]', "not_an_array")
    if not items:
        raise UnreadableBatch("body", "the array is empty", "empty_batch")
    _check_row_count(len(items), max_rows)
    accepted: list[CheckedRow] = []
    rejected: list[RejectedRow] = []
    for number, item in enumerate(items, start=1):
        checked = check_row(number, item, JSON)
        (accepted if isinstance(checked, CheckedRow) else rejected).append(checked)  # type: ignore[arg-type]
    return CheckedBatch(JSON, len(items), accepted, rejected)


def check_row(number: int, body: Any, source: str) -> CheckedRow | RejectedRow:
    """One row against the classify contract."""
    try:
        request = ClassifyRequest.model_validate(body)
    except ValidationError as exc:
        return RejectedRow(number, tuple(
            Problem(field_name(source, e["loc"]), str(e["msg"]).removeprefix("Value error, "), e["type"])
            for e in exc.errors(include_url=False, include_input=False)
        ))
    return CheckedRow(number, request.patient.external_id, request.patient.name, request.cbc, request.collected_at)


def _check_header(header: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UnreadableBatch("header", f"missing column(s): {', '.join(missing)}; the first row must name the "
                              f"columns: {', '.join(ACCEPTED_COLUMNS)} (name and collected_at are optional)", "missing_columns")
    unknown = [(i, c) for i, c in enumerate(header, start=1) if c not in ACCEPTED_COLUMNS]
    if unknown:
        named = ", ".join(c if _PRINTABLE_COLUMN.match(c) else f"column {i}" for i, c in unknown)
        raise UnreadableBatch("header", f"unknown column(s): {named}; the columns are: {', '.join(ACCEPTED_COLUMNS)}",
                              "unknown_columns")
    if len(set(header)) != len(header):
        raise UnreadableBatch("header", "a column is named twice", "duplicate_columns")


def _check_row_count(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise UnreadableBatch("body", f"the batch has {rows} rows; at most {max_rows} are accepted in one upload: "
                              "split the file", "too_many_rows")


def _classify_body(cells: list[str], position: Mapping[str, int]) -> dict[str, Any]:
    """A CSV row as a classify body: numbers parsed, empty cells left out (so they are reported missing)."""
    patient: dict[str, Any] = {"external_id": cells[position["external_id"]].strip()}
    if "name" in position and (name := cells[position["name"]].strip()):
        patient["name"] = name
    cbc: dict[str, Any] = {}
    for column in CBC_FIELDS:
        cell = cells[position[column]].strip()
        if cell:
            cbc[column] = cell.lower() if column in _TEXT_COLUMNS else _number(cell)
    body: dict[str, Any] = {"patient": patient, "cbc": cbc}
    if "collected_at" in position and (collected_at := cells[position["collected_at"]].strip()):
        body["collected_at"] = collected_at
    return body


def _number(cell: str) -> float | str:
    """The cell as a number, or as it is (the contract then says which field is not a number)."""
    try:
        return float(cell)
    except ValueError:
        return cell


# -- admission -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdmittedRow:
    checked: CheckedRow
    patient_id: uuid.UUID
    consent_id: uuid.UUID | None
    #: the organisation's declared prevalence of B12 < 200 pg/mL when admitted (the same for every row)
    expected_prevalence: float | None = None


def refused_row(source: str, row: CheckedRow, reason: str, fields: Sequence[str]) -> RejectedRow:
    """A row the admission check refused, reported like a row that failed the contract."""
    message = REFUSAL_MESSAGES.get(reason, reason)
    if reason != PATIENT_DETAILS_MISMATCH or not fields:
        return RejectedRow(row.row, (Problem(field_name(source, ("patient", "external_id")), message, reason),))
    return RejectedRow(row.row, tuple(
        Problem(field_name(source, _PATIENT_DETAILS.get(f, ("patient", f))), message, reason) for f in fields))


# -- chunks ----------------------------------------------------------------------------------------------


def chunked(rows: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive slices of at most ``size`` rows; every row in exactly one, in order."""
    if size < 1:
        raise ValueError("a chunk holds at least one row")
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def chunk_commands(job_id: uuid.UUID, tenant: uuid.UUID, actor: Actor, rows: Sequence[AdmittedRow], size: int,
                   requested_at: datetime) -> list[Envelope[ev.ScreeningBatchRequestedV1]]:
    """One ``ScreeningBatchRequested`` per chunk; each row gets its screening id here. The job id is the
    correlation id of every chunk, so every event a job causes can be traced back to it."""
    return [
        new_envelope(
            ev.ScreeningBatchRequestedV1(
                job_id=job_id, chunk=number, requested_at=requested_at,
                expected_prevalence=part[0].expected_prevalence,
                rows=[ev.BatchRow(row=r.checked.row, screening_id=uuid.uuid4(), cbc=r.checked.cbc,
                                  consent_id=r.consent_id, collected_at=r.checked.collected_at,
                                  patient=PatientReference(external_id=r.checked.external_id, patient_id=r.patient_id))
                      for r in part],
            ),
            event_type=ev.SCREENING_BATCH_REQUESTED[0], event_version=ev.SCREENING_BATCH_REQUESTED[1],
            tenant_id=tenant, actor=actor, correlation_id=job_id,
        )
        for number, part in enumerate(chunked(rows, size))
    ]


# -- progress --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """What one recorded chunk adds to its job's counts."""

    recorded: int
    classified: int
    risk_low: int
    risk_intermediate: int
    risk_high: int


def tally(outcomes: Sequence[ev.RowOutcome]) -> Tally:
    risks = [o.risk_class for o in outcomes if o.status == "classified"]
    return Tally(len(outcomes), len(risks), risks.count(RiskClass.LOW), risks.count(RiskClass.INTERMEDIATE),
                 risks.count(RiskClass.HIGH))


def status(accepted: int, recorded: int) -> str:
    """queued (nothing recorded yet), running, completed (every accepted row recorded)."""
    if recorded >= accepted:
        return "completed"
    return "running" if recorded else "queued"


def job_report(job: Mapping[str, Any], outcomes: list[dict[str, Any]], *, now: datetime, limit: int) -> dict[str, Any]:
    """The answer of ``GET /api/screening/batch/{id}``: counts, progress, the first rejected rows (as read),
    one page of per-row outcomes, pending ones included. ``outcomes`` holds up to ``limit + 1`` rows: the
    extra one only says that another page follows, so ``next_after`` is null exactly on the last page."""
    accepted, recorded = job["accepted"], job["recorded"]
    until = job["completed_at"] or now
    elapsed = max((until - job["created_at"]).total_seconds(), 1e-6)
    return {
        "id": str(job["id"]),
        "status": status(accepted, recorded),
        "source": job["source"],
        "created_at": job["created_at"].isoformat(),
        "completed_at": job["completed_at"].isoformat() if job["completed_at"] else None,
        "total": job["total"],
        "accepted": accepted,
        "rejected": job["rejected"],
        "recorded": recorded,
        "percent": round(100.0 * recorded / accepted, 1) if accepted else 100.0,
        "rows_per_second": round(recorded / elapsed, 1),
        "classified": job["classified"],
        "not_classified": recorded - job["classified"],
        "risk_classes": {"1": job["risk_low"], "2": job["risk_intermediate"], "3": job["risk_high"]},
        "rejected_rows": job["rejected_rows"],
        "outcomes": outcomes[:limit],
        "next_after": outcomes[limit - 1]["row"] if len(outcomes) > limit else None,
    }
