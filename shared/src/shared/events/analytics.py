"""De-identified screenings for downstream analytics, published on ``clinomic.analytics.screenings``.

Analytics consumers subscribe to this topic rather than call the API. A screening appears here without
anything that names its patient: no name or name ciphertext, no external (lab) patient id, no patient record
id, no consent. The patient is a pseudonymous key, an HMAC of (organisation, patient record id) under a key
only the screening service holds: one patient keeps one key within an organisation, the same person in two
organisations gets unrelated keys, and without the key nobody can compute or reverse it. Age travels as a
five-year band, the recording time and the sample's collection time as days.

This is pseudonymisation, not anonymisation: the screening id leads back to the clinical record for whoever
may read the clinical topics or the organisation's records. Grant analytics consumers this topic only.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events.batch import MAX_CHUNK_ROWS
from shared.events.screening import Label, ModelIdentity, Probabilities, RiskClass, Sex

#: Length of the pseudonymous patient key in hex digits (128 bits of the HMAC-SHA256).
PATIENT_KEY_HEX_DIGITS = 32


class BloodCount(BaseModel):
    """The eleven measured analytes of a CBC in canonical units (``shared.events.screening.UNITS``).

    Age and sex are not here: they travel coarsened, next to it.
    """

    model_config = ConfigDict(frozen=True)

    hb: float = Field(description="Haemoglobin, g/dL")
    rbc: float = Field(description="Red cell count, 10^12/L")
    hct: float = Field(description="Haematocrit, %")
    mcv: float = Field(description="Mean corpuscular volume, fL")
    mch: float = Field(description="Mean corpuscular haemoglobin, pg")
    mchc: float = Field(description="Mean corpuscular haemoglobin concentration, g/dL")
    rdw: float = Field(description="Red cell distribution width (CV), %")
    wbc: float = Field(description="White cell count, 10^9/L")
    platelets: float = Field(description="Platelet count, 10^9/L")
    neutrophils_pct: float = Field(description="Neutrophils, % of white cells")
    lymphocytes_pct: float = Field(description="Lymphocytes, % of white cells")


class ScreeningRecordedDeidentifiedV1(BaseModel):
    """Event: a screening was recorded; its de-identified form for analytics (no name, no patient ids).

    Published by the screening service for every ``ScreeningRecorded``, keyed by ``patient_key`` (one
    patient's screenings keep their order). Its event id is derived from the ``ScreeningRecorded`` event's,
    so a redelivery repeats the same id and consumers drop the copy.
    """

    model_config = ConfigDict(frozen=True)

    screening_id: uuid.UUID
    patient_key: str = Field(
        pattern=rf"^[0-9a-f]{{{PATIENT_KEY_HEX_DIGITS}}}$",
        description="Pseudonymous patient key: stable for one patient within one organisation, unrelated "
                    "across organisations, not reversible without the screening service's key")
    status: Literal["classified", "rejected"]
    label: Label | None = Field(description="The most probable label; None when the screening was rejected")
    risk_class: RiskClass | None = Field(description="1 low, 2 intermediate, 3 high; None when rejected")
    probabilities: Probabilities | None
    model: ModelIdentity | None = Field(description="The model that classified it; None when rejected")
    age_band: str = Field(pattern=r"^(18-19|[2-8][05]-[2-8][49]|90\+)$",
                          description="Five-year age band (18-19, 20-24, ..., 85-89), 90 and over as 90+")
    sex: Sex
    cbc: BloodCount
    recorded_on: date = Field(description="The day (UTC) the screening was recorded")
    collected_on: date | None = Field(None, description="The day (UTC) the blood was drawn, as the lab reported "
                                                        "it; None when not reported (optional, additive)")
    lab_id: uuid.UUID | None = Field(description="The organisation's lab record the patient belonged to")
    doctor_id: uuid.UUID | None = Field(description="The organisation's record of the referring doctor")


SCREENING_RECORDED_DEIDENTIFIED = ("ScreeningRecordedDeidentified", 1)


class ScreeningBatchRecordedDeidentifiedV1(BaseModel):
    """Event: the rows of one recorded chunk of a bulk upload, de-identified; one message for the chunk.

    Published by the screening service for every ``ScreeningBatchRecorded`` (v2), keyed by the chunk's job id.
    Each element is exactly what ``ScreeningRecordedDeidentified`` would carry for that screening, so a
    subscriber sees every screening once: a single screening as ``ScreeningRecordedDeidentified``, a bulk row
    inside this event. Its event id is derived from the chunk event's, so a redelivery repeats the same id.
    """

    model_config = ConfigDict(frozen=True)

    screenings: list[ScreeningRecordedDeidentifiedV1] = Field(min_length=1, max_length=MAX_CHUNK_ROWS)


SCREENING_BATCH_RECORDED_DEIDENTIFIED = ("ScreeningBatchRecordedDeidentified", 1)
