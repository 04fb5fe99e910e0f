"""Screening events: a lab's request, the model's classification, the record kept for the tenant.

The complete blood count (CBC) lives here because it is part of the contract: the gateway validates it
once at the edge and every consumer relies on the same canonical units.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.text import Text

# -- units -----------------------------------------------------------------------------------------------

#: Canonical unit of each analyte and the factor that converts every accepted unit to it.
UNITS: dict[str, tuple[str, dict[str, float]]] = {
    "hb": ("g/dL", {"g/dL": 1.0, "g/L": 0.1, "mmol/L": 1.6114}),
    "rbc": ("10^12/L", {"10^12/L": 1.0, "10^6/uL": 1.0, "10^6/µL": 1.0, "x10^6/uL": 1.0, "M/uL": 1.0}),
    "hct": ("%", {"%": 1.0, "L/L": 100.0}),
    "mcv": ("fL", {"fL": 1.0}),
    "mch": ("pg", {"pg": 1.0}),
    "mchc": ("g/dL", {"g/dL": 1.0, "g/L": 0.1}),
    "rdw": ("%", {"%": 1.0}),
    "wbc": ("10^9/L", {"10^9/L": 1.0, "10^3/uL": 1.0, "10^3/µL": 1.0, "x10^3/uL": 1.0, "K/uL": 1.0}),
    "platelets": ("10^9/L", {"10^9/L": 1.0, "10^3/uL": 1.0, "10^3/µL": 1.0, "x10^3/uL": 1.0, "K/uL": 1.0}),
    "neutrophils_pct": ("%", {"%": 1.0}),
    "lymphocytes_pct": ("%", {"%": 1.0}),
}

#: Physiologically possible ranges in canonical units; values outside are data-entry or analyser errors.
RANGES: dict[str, tuple[float, float]] = {
    "hb": (2.0, 25.0),
    "rbc": (0.5, 8.6),
    "hct": (6.0, 75.0),
    "mcv": (50.0, 150.0),
    "mch": (10.0, 50.0),
    "mchc": (20.0, 40.0),
    "rdw": (9.0, 40.0),
    "wbc": (0.1, 440.0),
    "platelets": (1.0, 3000.0),
    "neutrophils_pct": (0.0, 100.0),
    "lymphocytes_pct": (0.0, 100.0),
    "age": (18.0, 120.0),
}

#: Largest relative disagreement tolerated between a measured index and the one derived from the panel.
CONSISTENCY_TOLERANCE = 0.10


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"


#: Codes accepted for sex, compared case-insensitively; anything else is refused (422).
SEX_CODES = {"female": "female", "f": "female", "male": "male", "m": "male"}


class Quantity(BaseModel):
    """A measured value with its unit, for labs that report in other units than the canonical one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    value: Annotated[float, Field(strict=True, allow_inf_nan=False)]
    unit: str


Measure = Annotated[float, Field(strict=True, allow_inf_nan=False)] | Quantity


def _normalise(field: str, raw: Any) -> Any:
    """Convert ``{"value", "unit"}`` to the canonical unit; plain numbers are taken as canonical."""
    if isinstance(raw, Quantity):
        raw = raw.model_dump()
    if not isinstance(raw, dict):
        return raw
    canonical, factors = UNITS[field]
    unit = raw.get("unit")
    if unit not in factors:
        accepted = ", ".join(factors)
        raise ValueError(f"unit {unit!r} is not accepted for {field}; use one of: {accepted}")
    value = raw.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{field} value must be a number")
    return value * factors[unit]


def _check_range(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number")
    low, high = RANGES[field]
    if not low <= value <= high:
        unit = UNITS[field][0] if field in UNITS else "years"
        raise ValueError(
            f"{field} {value:g} {unit} is outside the accepted range {low:g}–{high:g} {unit}"
        )
    return value


class CompleteBloodCount(BaseModel):
    """An adult CBC with age and sex, validated and normalised to canonical units.

    Each analyte is either a number in its canonical unit (see ``UNITS``) or ``{"value", "unit"}``.
    Impossible values and internally inconsistent panels are refused: a wrong number must not be screened.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hb: float = Field(description="Haemoglobin, g/dL (or g/L, mmol/L with a unit)")
    rbc: float = Field(description="Red cell count, 10^12/L (= 10^6/µL)")
    hct: float = Field(description="Haematocrit, % (or L/L with a unit)")
    mcv: float = Field(description="Mean corpuscular volume, fL")
    mch: float = Field(description="Mean corpuscular haemoglobin, pg")
    mchc: float = Field(description="Mean corpuscular haemoglobin concentration, g/dL (or g/L)")
    rdw: float = Field(description="Red cell distribution width (CV), %")
    wbc: float = Field(description="White cell count, 10^9/L (= 10^3/µL)")
    platelets: float = Field(description="Platelet count, 10^9/L (= 10^3/µL)")
    neutrophils_pct: float = Field(description="Neutrophils, % of white cells")
    lymphocytes_pct: float = Field(description="Lymphocytes, % of white cells")
    age: Annotated[float, Field(strict=True, allow_inf_nan=False)] = Field(
        description="Age in years; the model is adult-only (18 and over)"
    )
    sex: Sex

    @field_validator("sex", mode="before")
    @classmethod
    def _usual_sex_codes(cls, raw: Any) -> Any:
        """``M``/``F`` (any case) as labs and analysers send them, besides ``male``/``female``."""
        if isinstance(raw, str):
            return SEX_CODES.get(raw.lower(), raw)
        return raw

    @field_validator(*UNITS, mode="before")
    @classmethod
    def _to_canonical_unit(cls, raw: Any, info: Any) -> Any:
        if isinstance(raw, bool) or isinstance(raw, str):
            raise ValueError(f"{info.field_name} must be a number, not {type(raw).__name__}")
        return _normalise(info.field_name, raw)

    @field_validator(*UNITS, "age")
    @classmethod
    def _within_physiological_range(cls, value: float, info: Any) -> float:
        if info.field_name == "age" and value < RANGES["age"][0]:
            raise ValueError("age under 18: the B12 screening model is validated for adults only")
        return _check_range(info.field_name, value)

    @model_validator(mode="after")
    def _internally_consistent(self) -> CompleteBloodCount:
        if self.neutrophils_pct + self.lymphocytes_pct > 100.0:
            raise ValueError("neutrophils_pct + lymphocytes_pct exceed 100 % of white cells")
        for problem in panel_inconsistencies(self):
            raise ValueError(problem)
        return self

    def as_features(self) -> tuple[float, ...]:
        """Values in ``FEATURE_ORDER``, the order the model was trained on."""
        return tuple(
            float(self.sex == Sex.MALE) if name == "sex_male" else float(getattr(self, name))
            for name in FEATURE_ORDER
        )


#: Column order of the model's feature matrix; sex is encoded as 1.0 for male, 0.0 for female.
FEATURE_ORDER: tuple[str, ...] = (
    "hb", "rbc", "hct", "mcv", "mch", "mchc", "rdw", "wbc", "platelets",
    "neutrophils_pct", "lymphocytes_pct", "age", "sex_male",
)


def panel_inconsistencies(cbc: CompleteBloodCount) -> list[str]:
    """Red-cell indices that disagree with the values they are computed from (Wintrobe's identities)."""
    checks = (
        ("mcv", cbc.mcv, cbc.hct * 10.0 / cbc.rbc, "HCT×10/RBC", "fL"),
        ("mch", cbc.mch, cbc.hb * 10.0 / cbc.rbc, "Hb×10/RBC", "pg"),
        ("mchc", cbc.mchc, cbc.hb * 100.0 / cbc.hct, "Hb×100/HCT", "g/dL"),
    )
    problems = []
    for name, measured, derived, formula, unit in checks:
        if abs(measured - derived) > CONSISTENCY_TOLERANCE * derived:
            problems.append(
                f"{name} {measured:g} {unit} disagrees with {formula} = {derived:.1f} {unit} by more than "
                f"{CONSISTENCY_TOLERANCE:.0%}: check the panel for a transcription or analyser error"
            )
    return problems


# -- request -----------------------------------------------------------------------------------------------


#: How far ahead of the gateway's clock a collection time may be: the lab's clock may run a little fast.
COLLECTION_CLOCK_SKEW = timedelta(minutes=5)
#: The oldest collection time accepted: a CBC is not screened a year after the blood was drawn.
COLLECTION_MAX_AGE = timedelta(days=365)


def check_collection_time(collected_at: datetime, now: datetime) -> datetime:
    """A sample's collection time as admitted at ``now``: time-zone aware, not in the future beyond the clock
    skew, not older than ``COLLECTION_MAX_AGE``. Checked at the edge only: an event is never refused later
    for having grown old."""
    if collected_at.utcoffset() is None:
        raise ValueError("collected_at needs a time zone (e.g. 2026-03-01T08:30:00Z or +05:30)")
    if collected_at > now + COLLECTION_CLOCK_SKEW:
        raise ValueError("collected_at is in the future: a sample is screened after its blood was drawn")
    if collected_at < now - COLLECTION_MAX_AGE:
        raise ValueError(f"collected_at is more than {COLLECTION_MAX_AGE.days} days ago: the sample is too old "
                         "to be screened")
    return collected_at



class PatientReference(BaseModel):
    """The patient as it travels in events: the lab's id and the Fernet ciphertext of the name, never the name."""

    model_config = ConfigDict(frozen=True)

    external_id: Text = Field(min_length=1, max_length=64)
    name_ciphertext: Text | None = None
    #: The tenant's patient record the gateway's admission check resolved (None in older commands).
    patient_id: uuid.UUID | None = None


class ScreeningRequestedV1(BaseModel):
    """Command: a lab asks for a CBC to be screened. Published by the gateway, consumed by inference."""

    model_config = ConfigDict(frozen=True)

    screening_id: uuid.UUID
    patient: PatientReference
    cbc: CompleteBloodCount
    requested_at: datetime
    #: The active consent under which the screening was admitted (None when the policy requires none).
    consent_id: uuid.UUID | None = None
    #: The organisation's declared expected fraction of its screened adults with serum B12 < 200 pg/mL
    #: (None: the population the model was calibrated on). Added in 1.1 (optional, additive).
    expected_prevalence: float | None = Field(None, gt=0.0, lt=1.0)
    #: When the blood was drawn, as the lab reported it (None: not reported; optional, additive).
    collected_at: datetime | None = None


# -- assessment ------------------------------------------------------------------------------------------


class Label(StrEnum):
    NORMAL = "normal"
    BORDERLINE = "borderline"
    DEFICIENT = "deficient"


class RiskClass(IntEnum):
    LOW = 1
    INTERMEDIATE = 2
    HIGH = 3


class Probabilities(BaseModel):
    """P(normal) = 1 − p1, P(borderline) = p1·(1 − p2), P(deficient) = p1·p2; they sum to 1."""

    model_config = ConfigDict(frozen=True)

    normal: float = Field(ge=0.0, le=1.0)
    borderline: float = Field(ge=0.0, le=1.0)
    deficient: float = Field(ge=0.0, le=1.0)


class DerivedIndices(BaseModel):
    model_config = ConfigDict(frozen=True)

    mentzer: float = Field(description="MCV / RBC; < 13 suggests thalassaemia trait, > 13 iron deficiency")
    green_king: float = Field(description="MCV² · RDW / (100 · Hb)")
    nlr: float | None = Field(description="Neutrophil-to-lymphocyte ratio; None when lymphocytes are 0 %")
    pancytopenia: bool = Field(description="Hb, WBC and platelets all below their reference limits")


class Finding(BaseModel):
    """A clinical observation that explains the result; findings never alter the probabilities."""

    model_config = ConfigDict(frozen=True)

    code: str
    text: str


class Contribution(BaseModel):
    """A feature's signed SHAP contribution (log-odds) to a stage's prediction."""

    model_config = ConfigDict(frozen=True)

    feature: str
    value: float
    contribution: float


class ModelIdentity(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    artifacts_sha256: str = Field(description="sha256 over the sorted artifact hashes of the model directory")
    data_source: str | None = Field(None, description="What the model was trained and validated on (1.1)")


class PrevalenceBasis(BaseModel):
    """The population a probability was computed for: its expected fractions below 200 and 300 pg/mL."""

    model_config = ConfigDict(frozen=True)

    deficient: float = Field(gt=0.0, lt=1.0, description="Expected fraction with serum B12 < 200 pg/mL")
    abnormal: float = Field(gt=0.0, lt=1.0, description="Expected fraction with serum B12 < 300 pg/mL")
    source: Literal["model", "organisation"] = Field(
        description="model: the population the model was calibrated on; organisation: the tenant's declared "
                    "prevalence (prior-shift corrected)")


class ScreeningAdvice(BaseModel):
    """What a lab acts on. At a prevalence of a few per cent the most probable label is nearly always
    "normal"; the advice says whether a serum B12 test is warranted and what the risk class means."""

    model_config = ConfigDict(frozen=True)

    test_advised: bool = Field(description="Risk class ≥ 2: a serum B12 test is advised")
    threshold: float = Field(description="P(deficient) at or above which a test is advised (class ≥ 2)")
    high_threshold: float = Field(description="P(deficient) at or above which the risk class is 3")
    likelihood_ratio: float = Field(
        description="P(this risk class | deficient) / P(this risk class | not deficient), measured out of sample")
    post_test_probability: float = Field(
        description="P(B12 < 200 pg/mL | this risk class) at the prevalence below (Bayes on the odds)")
    prevalence: PrevalenceBasis


class Assessment(BaseModel):
    """What the two-stage model says about one CBC."""

    model_config = ConfigDict(frozen=True)

    label: Label
    probabilities: Probabilities
    risk_class: RiskClass
    indices: DerivedIndices
    findings: list[Finding]
    recommendation: str
    top_contributions: list[Contribution]
    model: ModelIdentity
    #: Added in 1.1 (optional, additive); None in assessments made before it.
    advice: ScreeningAdvice | None = None


class ScreeningClassifiedV1(BaseModel):
    """Event: the model assessed a request. Carries the request so the screening service can record both."""

    model_config = ConfigDict(frozen=True)

    request: ScreeningRequestedV1
    assessment: Assessment


class ScreeningRejectedV1(BaseModel):
    """Event: inference could not assess a request (it is recorded as rejected, never silently dropped)."""

    model_config = ConfigDict(frozen=True)

    request: ScreeningRequestedV1
    reason: str


class ScreeningRecordedV1(BaseModel):
    """Event: the screening is stored in the tenant's schema. No PHI: the patient is its external id only."""

    model_config = ConfigDict(frozen=True)

    screening_id: uuid.UUID
    status: Literal["classified", "rejected"]
    patient_external_id: str
    assessment: Assessment | None
    rejection_reason: str | None = None
    requested_at: datetime
    recorded_at: datetime
    patient_id: uuid.UUID | None = None
    #: When the blood was drawn, as the lab reported it (None: not reported; optional, additive).
    collected_at: datetime | None = None


SCREENING_REQUESTED = ("ScreeningRequested", 1)
SCREENING_CLASSIFIED = ("ScreeningClassified", 1)
SCREENING_REJECTED = ("ScreeningRejected", 1)
SCREENING_RECORDED = ("ScreeningRecorded", 1)
