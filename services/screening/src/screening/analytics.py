"""The analytics summary of an organisation: counts computed from its screenings, and the model's card.

``GET /api/analytics/summary`` counts the screenings recorded in a period of UTC days in total, per risk
class, per label, per day (days without screenings are left out), per lab and per doctor (their record ids and
names, which are not PHI). Org admins and lab technicians see their whole organisation; a doctor only the
patients referred to them; auditors and platform admins are refused. Only counts leave: no patient, name or
external id. Counts are exact, so a cell of one or two can single out a patient to someone who knows who was
screened that day; the answer stays inside the organisation that holds the records anyway.

The model part is the current model's card (identity, metrics with confidence intervals, operating point),
asked of the inference worker, which owns the model directory. When it does not answer in time the summary
still answers, with ``model`` None and ``model_unavailable`` true.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from screening import store
from screening.access import CLINICIANS, ORG_ROLES, Tenant, tenant
from shared.tokens import ServiceCredential

log = logging.getLogger(__name__)
router = APIRouter(tags=["analytics"])
Reader = Annotated[Tenant, Depends(tenant(*CLINICIANS))]
Member = Annotated[Tenant, Depends(tenant(*ORG_ROLES))]
#: The period when none is given: the last 30 days, today (UTC) included.
DEFAULT_DAYS = 30
MODEL_CARD_PATH = "/internal/model-card"


class Counts(BaseModel):
    screenings: int
    classified: int
    rejected: int
    patients: int = Field(description="Distinct patients screened")
    per_risk_class: dict[int, int] = Field(description="Classified screenings per risk class (1 low, 3 high)")
    per_label: dict[str, int] = Field(description="Classified screenings per label")


class DayCounts(Counts):
    day: date


class LabCounts(Counts):
    lab_id: uuid.UUID | None = Field(description="None: patients without a lab")
    lab_name: str | None


class DoctorCounts(Counts):
    doctor_id: uuid.UUID | None = Field(description="None: patients without a referring doctor")
    doctor_name: str | None


class Period(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from", description="First day counted (UTC)")
    to: date = Field(description="Last day counted (UTC), included")


class ModelCard(BaseModel):
    """The inference worker's model card, as read from its model directory: what the model is, what it was
    trained and validated on, and what each risk class means (sensitivity, specificity, PPV, NPV, share
    flagged and likelihood ratio, out of sample, with 95 % intervals)."""

    version: str
    artifacts_sha256: str
    name: str
    family: str
    status: str
    intended_use: str
    data_source: str | None
    outcomes: dict[str, str]
    validation: str
    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    aims: dict[str, Any]
    limitations: list[str]


class Summary(BaseModel):
    period: Period
    scope: Literal["organisation", "referred_patients"] = Field(
        description="referred_patients: a doctor's summary, over the patients referred to them")
    totals: Counts
    per_day: list[DayCounts] = Field(description="Days with at least one screening, oldest first")
    per_lab: list[LabCounts]
    per_doctor: list[DoctorCounts]
    model: ModelCard | None
    model_unavailable: bool


def period_of(start: date | None, end: date | None, today: date) -> Period:
    """The days asked for, by default the last ``DEFAULT_DAYS``; a period ending before it starts is a 422."""
    end = end or today
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise RequestValidationError([{"loc": ("query", "from"), "type": "value_error",
                                       "msg": "from must be on or before to"}])
    return Period(from_=start, to=end)


def _counts(tally: store.Tally) -> dict[str, Any]:
    return {"screenings": tally.screenings, "classified": tally.classified, "rejected": tally.rejected,
            "patients": tally.patients, "per_risk_class": tally.per_risk_class, "per_label": tally.per_label}


def summarise(period: Period, scope: Literal["organisation", "referred_patients"], tallies: list[store.Tally],
              card: ModelCard | None) -> Summary:
    """Arrange the store's tallies by dimension."""
    by_dimension: dict[str, list[store.Tally]] = {"total": [], "day": [], "lab": [], "doctor": []}
    for tally in tallies:
        by_dimension[tally.dimension].append(tally)
    (total,) = by_dimension["total"]
    return Summary(
        period=period, scope=scope, totals=Counts(**_counts(total)),
        per_day=[DayCounts(day=t.day, **_counts(t)) for t in by_dimension["day"]],
        per_lab=[LabCounts(lab_id=t.lab_id, lab_name=t.lab_name, **_counts(t)) for t in by_dimension["lab"]],
        per_doctor=[DoctorCounts(doctor_id=t.doctor_id, doctor_name=t.doctor_name, **_counts(t))
                    for t in by_dimension["doctor"]],
        model=card, model_unavailable=card is None,
    )


async def model_card(inference_url: str, timeout_seconds: float) -> ModelCard | None:
    """The current model's card from the inference worker; None when it cannot be had in time."""
    try:
        async with httpx.AsyncClient(timeout=timeout_seconds, headers=ServiceCredential().headers()) as client:
            response = await client.get(inference_url.rstrip("/") + MODEL_CARD_PATH)
            response.raise_for_status()
            return ModelCard.model_validate_json(response.content)
    except (httpx.HTTPError, ValidationError) as problem:
        log.warning("model card unavailable from the inference worker: %s", type(problem).__name__)
        return None


@router.get("/api/screening/model", response_model=ModelCard, tags=["model"],
            responses={503: {"description": "The inference worker cannot be asked right now"}})
async def model_description(t: Member, request: Request) -> Any:
    """The model that screens this organisation's CBCs: data, validation, operating point of each risk class
    and limitations (read from the inference worker's verified model directory)."""
    settings = request.app.state.settings
    card = await model_card(settings.inference_url, settings.inference_timeout_seconds)
    if card is None:
        return JSONResponse({"detail": "the model's description is unavailable; retry later"}, status_code=503,
                            headers={"retry-after": "5"})
    return card


@router.get("/api/analytics/summary", response_model=Summary, response_model_by_alias=True)
async def summary(t: Reader, request: Request,
                  start: Annotated[date | None, Query(alias="from", description="First day (UTC); "
                                                      "default: 29 days before `to`")] = None,
                  end: Annotated[date | None, Query(alias="to", description="Last day (UTC), included; "
                                                    "default: today")] = None) -> Summary:
    """Counts of the organisation's screenings recorded in the period, and the current model's card."""
    period = period_of(start, end, datetime.now(UTC).date())
    settings = request.app.state.settings

    async def count() -> list[store.Tally]:
        async with t.tx() as conn:
            return await store.tallies(conn, start=datetime.combine(period.from_, time(), UTC),
                                       end=datetime.combine(period.to + timedelta(days=1), time(), UTC),
                                       doctor_user=t.doctor_user)

    tallies, card = await asyncio.gather(
        count(), model_card(settings.inference_url, settings.inference_timeout_seconds))
    return summarise(period, "referred_patients" if t.doctor_user else "organisation", tallies, card)
