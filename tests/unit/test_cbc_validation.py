"""The CBC contract refuses impossible, inconsistent and non-adult panels, naming the field and the range."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events.screening import FEATURE_ORDER, RANGES, CompleteBloodCount
from tests.conftest import HEALTHY_CBC


def errors_of(**changes: object) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        CompleteBloodCount.model_validate(HEALTHY_CBC | changes)
    return {".".join(map(str, e["loc"])) or "panel": e["msg"] for e in caught.value.errors()}


def test_a_healthy_panel_is_accepted_in_canonical_units() -> None:
    cbc = CompleteBloodCount.model_validate(HEALTHY_CBC)
    assert cbc.as_features()[FEATURE_ORDER.index("mcv")] == 88.5


def test_haemoglobin_in_grams_per_litre_is_normalised_to_grams_per_decilitre() -> None:
    cbc = CompleteBloodCount.model_validate(HEALTHY_CBC | {"hb": {"value": 142, "unit": "g/L"}})
    assert cbc.hb == pytest.approx(14.2)


def test_haematocrit_as_a_fraction_is_normalised_to_percent() -> None:
    cbc = CompleteBloodCount.model_validate(HEALTHY_CBC | {"hct": {"value": 0.425, "unit": "L/L"}})
    assert cbc.hct == pytest.approx(42.5)


def test_an_unknown_unit_is_refused_with_the_accepted_ones() -> None:
    assert "g/dL" in errors_of(hb={"value": 14, "unit": "mg/mL"})["hb"]


@pytest.mark.parametrize("field", [f for f in RANGES if f not in ("age", "neutrophils_pct", "lymphocytes_pct")])
def test_a_value_above_the_physiological_range_names_field_and_range(field: str) -> None:
    low, high = RANGES[field]
    message = errors_of(**{field: high * 1.5})[field]
    assert f"{low:g}–{high:g}" in message


def test_age_under_18_is_refused_because_the_model_is_adult_only() -> None:
    assert "adults only" in errors_of(age=16)["age"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    assert "hb" in errors_of(hb=bad)


def test_strings_are_refused_even_when_they_look_numeric() -> None:
    assert "must be a number" in errors_of(mcv="88.5")["mcv"]


def test_a_missing_analyte_is_named() -> None:
    cbc = dict(HEALTHY_CBC)
    del cbc["rdw"]
    with pytest.raises(ValidationError) as caught:
        CompleteBloodCount.model_validate(cbc)
    assert caught.value.errors()[0]["loc"] == ("rdw",)


def test_differential_above_100_percent_is_refused() -> None:
    assert any("exceed 100" in m for m in errors_of(neutrophils_pct=80, lymphocytes_pct=30).values())


def test_mcv_inconsistent_with_haematocrit_and_red_cells_is_refused() -> None:
    assert any("HCT×10/RBC" in m for m in errors_of(mcv=110).values())


@given(scale=st.floats(min_value=0.93, max_value=1.07))
def test_small_analyser_disagreement_within_tolerance_is_accepted(scale: float) -> None:
    CompleteBloodCount.model_validate(HEALTHY_CBC | {"mcv": HEALTHY_CBC["mcv"] * scale})


def test_unknown_fields_are_refused() -> None:
    assert "ferritin" in errors_of(ferritin=12)
