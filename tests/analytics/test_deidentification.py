"""The pure pieces of the analytics stream and summary: the pseudonymous patient key, age bands, the
de-identified mapping, the derived event id, the pseudonym key's start-up check, the default period and the
summary without a model card."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime

import numpy as np

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from inference import api as inference_api
from inference.model import DEFAULT_MODEL_DIR, B12Model
from screening import analytics
from screening.analytics_stream import age_band, analytics_event, deidentified, patient_key
from screening.settings import ScreeningSettings
from screening.store import ANALYTICS_ASSESSMENT, RecordedFacts, Tally
from shared.events import Actor, new_envelope
from shared.events.analytics import ScreeningRecordedDeidentifiedV1
from shared.events.screening import CompleteBloodCount, ScreeningRecordedV1
from shared.settings import SecretProblem
from tests.conftest import HEALTHY_CBC

SECRET = b"k" * 32


def facts(**changes: object) -> RecordedFacts:
    values: dict = {"id": uuid.uuid4(), "patient_id": uuid.uuid4(), "status": "rejected", "cbc": HEALTHY_CBC,
                    "assessment": None, "recorded_at": datetime(2024, 5, 31, 23, 59, tzinfo=UTC),
                    "lab_id": uuid.uuid4(), "doctor_id": None}
    return RecordedFacts(**(values | changes))


@given(st.uuids(), st.uuids())
def test_a_patient_keeps_one_key_within_an_organisation(tenant: uuid.UUID, patient: uuid.UUID) -> None:
    assert patient_key(SECRET, tenant, patient) == patient_key(SECRET, tenant, patient)


@given(st.uuids(), st.uuids(), st.uuids())
def test_one_patient_record_gets_unrelated_keys_in_two_organisations(
    tenant: uuid.UUID, other: uuid.UUID, patient: uuid.UUID,
) -> None:
    if tenant != other:
        assert patient_key(SECRET, tenant, patient) != patient_key(SECRET, other, patient)


@given(st.uuids(), st.uuids(), st.binary(min_size=32, max_size=64))
def test_a_patient_key_depends_on_the_secret(tenant: uuid.UUID, patient: uuid.UUID, secret: bytes) -> None:
    if secret != SECRET:
        assert patient_key(secret, tenant, patient) != patient_key(SECRET, tenant, patient)


@given(st.uuids(), st.uuids())
def test_a_patient_key_is_128_bits_of_hex_and_contains_no_id(tenant: uuid.UUID, patient: uuid.UUID) -> None:
    key = patient_key(SECRET, tenant, patient)
    assert len(key) == 32 and int(key, 16) >= 0
    assert patient.hex not in key and tenant.hex not in key


@given(st.floats(min_value=18, max_value=89.999, allow_nan=False))
def test_an_age_band_under_90_is_five_years_wide_and_holds_the_age(age: float) -> None:
    low, high = map(int, age_band(age).split("-"))
    assert low <= age < high + 1
    assert high - low == 4 or (low, high) == (18, 19)
    assert low % 5 == 0 or low == 18


@given(st.floats(min_value=90, max_value=120, allow_nan=False))
def test_ages_of_90_and_over_share_one_band(age: float) -> None:
    assert age_band(age) == "90+"


def test_the_deidentified_form_carries_no_patient_identifier_and_only_the_day() -> None:
    stored = facts()
    tenant = uuid.uuid4()
    event = deidentified(stored, tenant, SECRET)
    text = event.model_dump_json()
    assert str(stored.patient_id) not in text and stored.patient_id.hex not in text
    assert event.patient_key == patient_key(SECRET, tenant, stored.patient_id)
    assert event.recorded_on == date(2024, 5, 31) and "23:59" not in text
    assert (event.age_band, event.sex) == ("45-49", "male")
    assert (event.lab_id, event.doctor_id) == (stored.lab_id, None)
    assert set(event.cbc.model_dump()) == set(HEALTHY_CBC) - {"age", "sex"}
    assert event.status == "rejected" and event.risk_class is None and event.model is None


def test_a_classified_screening_is_deidentified_from_the_carried_parts_of_its_assessment_alone() -> None:
    [assessment] = B12Model.load(DEFAULT_MODEL_DIR).assess(np.array([CompleteBloodCount.model_validate(
        HEALTHY_CBC).as_features()]))
    whole = assessment.model_dump(mode="json")
    stored = facts(status="classified", assessment=whole)
    carried = replace(stored, assessment={key: whole[key] for key in ANALYTICS_ASSESSMENT})
    tenant = uuid.uuid4()
    assert deidentified(carried, tenant, SECRET) == deidentified(stored, tenant, SECRET)
    assert deidentified(carried, tenant, SECRET).model == assessment.model


def test_a_stored_assessment_without_a_carried_part_is_refused() -> None:
    [assessment] = B12Model.load(DEFAULT_MODEL_DIR).assess(np.array([CompleteBloodCount.model_validate(
        HEALTHY_CBC).as_features()]))
    carried = {key: value for key, value in assessment.model_dump(mode="json").items()
               if key in ANALYTICS_ASSESSMENT and key != "probabilities"}
    with pytest.raises(ValidationError):
        deidentified(facts(status="classified", assessment=carried), uuid.uuid4(), SECRET)


def test_the_deidentified_event_id_is_derived_from_the_recorded_event() -> None:
    tenant = uuid.uuid4()
    stored = facts()
    recorded = new_envelope(
        ScreeningRecordedV1(screening_id=stored.id, status="rejected", patient_external_id="P-1",
                            assessment=None, requested_at=stored.recorded_at, recorded_at=stored.recorded_at),
        event_type="ScreeningRecorded", event_version=1, tenant_id=tenant, actor=Actor(role="service"),
        event_id=uuid.uuid4())
    first = analytics_event(deidentified(stored, tenant, SECRET), recorded)
    again = analytics_event(deidentified(stored, tenant, SECRET), recorded)
    assert first.event_id == again.event_id != recorded.event_id
    assert (first.causation_id, first.tenant_id) == (recorded.event_id, tenant)
    assert "P-1" not in first.model_dump_json()
    ScreeningRecordedDeidentifiedV1.model_validate(first.payload.model_dump())


@pytest.mark.parametrize("value", [None, "too-short"])
def test_the_screening_service_refuses_a_missing_or_short_pseudonym_key(value: str | None) -> None:
    settings = ScreeningSettings(master_encryption_key=Fernet.generate_key().decode(),
                                 phi_blind_index_key="b" * 32, analytics_pseudonym_key=value)
    with pytest.raises(SecretProblem, match="ANALYTICS_PSEUDONYM_KEY"):
        settings.check_secrets()


def test_the_default_period_is_the_last_30_days_including_today() -> None:
    period = analytics.period_of(None, None, date(2024, 3, 1))
    assert (period.from_, period.to) == (date(2024, 2, 1), date(2024, 3, 1))


async def test_a_summary_without_an_answering_inference_worker_says_the_model_is_unavailable() -> None:
    card = await analytics.model_card("http://127.0.0.1:9", timeout_seconds=0.5)
    total = Tally("total", None, None, None, None, None, 0, 0, 0, 0, {1: 0, 2: 0, 3: 0},
                  {"normal": 0, "borderline": 0, "deficient": 0})
    period = analytics.period_of(None, None, date(2024, 3, 1))
    summary = analytics.summarise(period, "organisation", [total], card)
    assert summary.model is None and summary.model_unavailable is True


def test_the_inference_worker_reports_the_card_of_its_model_directory() -> None:
    card = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text())
    reported = inference_api.card_summary(B12Model.load(DEFAULT_MODEL_DIR))
    assert reported["metrics"]["classes"] == card["metrics"]["classes"]
    assert reported["thresholds"] == card["thresholds"] and reported["aims"] == card["aims"]
    assert reported["version"] == card["model"]["version"]
    analytics.ModelCard.model_validate(reported)
