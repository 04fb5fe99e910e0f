"""Pure clinical rules: probability coherence, risk class, label consistency, indices, findings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference import domain
from inference.domain import RiskThresholds
from shared.events.screening import Label, Probabilities, RiskClass

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
thresholds = st.tuples(
    st.floats(min_value=1e-4, max_value=domain.MAX_INTERMEDIATE_THRESHOLD),
    st.floats(min_value=1e-6, max_value=0.99),
).map(lambda pair: RiskThresholds(intermediate=pair[0], high=min(pair[0] + pair[1], 0.999999)))


@given(p1=unit, p2=unit)
def test_probabilities_are_coherent_for_any_stage_outputs(p1: float, p2: float) -> None:
    probabilities = domain.combine(p1, p2)
    values = (probabilities.normal, probabilities.borderline, probabilities.deficient)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert math.isclose(sum(values), 1.0, abs_tol=1e-12)
    assert math.isclose(probabilities.normal, 1 - p1, abs_tol=1e-15)
    assert math.isclose(probabilities.deficient, p1 * p2, abs_tol=1e-15)
    assert probabilities.deficient <= p1  # deficient is a subset of abnormal


@given(p1=unit, p2=unit, cut=thresholds)
def test_risk_class_never_contradicts_the_label(p1: float, p2: float, cut: RiskThresholds) -> None:
    probabilities = domain.combine(p1, p2)
    label = domain.label(probabilities)
    risk = domain.risk_class(probabilities.deficient, cut)
    if label is Label.DEFICIENT:  # the most probable state deficient: a test is always advised
        assert risk >= RiskClass.INTERMEDIATE
    if risk is RiskClass.LOW:
        assert label is not Label.DEFICIENT
    # the label is the most probable category
    assert getattr(probabilities, label.value) == max(
        probabilities.normal, probabilities.borderline, probabilities.deficient
    )


@given(a=unit, b=unit, cut=thresholds)
def test_risk_class_is_monotone_in_p_deficient(a: float, b: float, cut: RiskThresholds) -> None:
    low, high = sorted((a, b))
    assert domain.risk_class(low, cut) <= domain.risk_class(high, cut)


@given(p=st.lists(unit, min_size=1, max_size=50), cut=thresholds)
def test_vectorised_risk_classes_match_the_scalar_rule(p: list[float], cut: RiskThresholds) -> None:
    classes = domain.risk_classes(np.array(p), cut)
    assert [int(c) for c in classes] == [int(domain.risk_class(x, cut)) for x in p]


def test_risk_class_boundaries_are_inclusive() -> None:
    cut = RiskThresholds(intermediate=0.3, high=0.6)
    assert domain.risk_class(0.2999, cut) is RiskClass.LOW
    assert domain.risk_class(0.3, cut) is RiskClass.INTERMEDIATE
    assert domain.risk_class(0.6, cut) is RiskClass.HIGH


@pytest.mark.parametrize(
    ("intermediate", "high"), [(0.4, 0.6), (0.2, 0.2), (0.2, 0.1), (0.0, 0.6), (0.3, 1.0), (float("nan"), 0.6)]
)
def test_thresholds_that_could_contradict_the_label_or_each_other_are_refused(intermediate: float, high: float) -> None:
    with pytest.raises(ValueError):
        RiskThresholds(intermediate=intermediate, high=high)


def test_stage_probabilities_outside_unit_interval_are_refused() -> None:
    with pytest.raises(ValueError):
        domain.combine(1.2, 0.5)
    with pytest.raises(ValueError):
        domain.combine_arrays(np.array([0.5]), np.array([float("nan")]))


def test_ties_go_to_the_more_severe_label() -> None:
    assert domain.label(Probabilities(normal=0.5, borderline=0.0, deficient=0.5)) is Label.DEFICIENT
    assert domain.label(Probabilities(normal=0.5, borderline=0.5, deficient=0.0)) is Label.BORDERLINE


def test_derived_indices_follow_their_formulae(make_panel) -> None:
    cbc = make_panel(
        hb=12.0,
        mcv=90.0,
        rdw=14.0,
        wbc=6.0,
        platelets=250.0,
        age=40.0,
        sex="female",
        neutrophils_pct=60.0,
        lymphocytes_pct=30.0,
    )
    panel = domain.panel_from_features(cbc.as_features())
    indices = domain.derived_indices(panel)
    assert indices.mentzer == pytest.approx(cbc.mcv / cbc.rbc)
    assert indices.green_king == pytest.approx(90.0**2 * 14.0 / (100 * 12.0))
    assert indices.nlr == pytest.approx(2.0)
    assert indices.pancytopenia is False


def test_nlr_is_none_without_lymphocytes(make_panel) -> None:
    cbc = make_panel(
        hb=14.0,
        mcv=90.0,
        rdw=13.0,
        wbc=6.0,
        platelets=250.0,
        age=40.0,
        sex="male",
        neutrophils_pct=70.0,
        lymphocytes_pct=0.0,
    )
    assert domain.derived_indices(domain.panel_from_features(cbc.as_features())).nlr is None


def test_pancytopenia_uses_the_sex_specific_haemoglobin_limit(make_panel) -> None:
    common = {"mcv": 95.0, "rdw": 14.0, "wbc": 3.5, "platelets": 120.0, "age": 50.0}
    male = domain.panel_from_features(make_panel(hb=12.5, sex="male", **common).as_features())
    female = domain.panel_from_features(make_panel(hb=12.5, sex="female", **common).as_features())
    assert domain.derived_indices(male).pancytopenia is True
    assert domain.derived_indices(female).pancytopenia is False


def _codes(cbc) -> list[str]:
    panel = domain.panel_from_features(cbc.as_features())
    return [f.code for f in domain.findings(panel, domain.derived_indices(panel))]


def test_healthy_panel_has_no_findings(make_panel) -> None:
    assert (
        _codes(make_panel(hb=14.5, mcv=90.0, rdw=12.8, wbc=6.5, platelets=250.0, age=40.0, sex="male")) == []
    )


def test_megaloblastic_panel_shows_macrocytosis_raised_rdw_and_pancytopenia(make_panel) -> None:
    cbc = make_panel(hb=8.0, mcv=115.0, mchc=34.0, rdw=19.0, wbc=3.2, platelets=95.0, age=60.0, sex="female")
    assert _codes(cbc) == ["macrocytosis", "raised_rdw", "pancytopenia"]


def test_microcytosis_with_low_mentzer_warns_of_thalassaemia_trait(make_panel) -> None:
    cbc = make_panel(hb=11.8, mcv=64.0, rdw=14.0, wbc=7.0, platelets=280.0, age=30.0, sex="male", rbc=5.9)
    assert cbc.mcv / cbc.rbc < domain.MENTZER_CUTOFF
    codes = _codes(cbc)
    assert "microcytosis" in codes and "thalassaemia_trait_pattern" in codes
    assert "iron_deficiency_pattern" not in codes
    panel = domain.panel_from_features(cbc.as_features())
    found = domain.findings(panel, domain.derived_indices(panel))
    text = domain.recommendation(RiskClass.INTERMEDIATE, found)
    assert "electrophoresis" in text and "masked macrocytosis" in text


def test_microcytosis_with_high_mentzer_points_to_iron_deficiency(make_panel) -> None:
    cbc = make_panel(hb=9.5, mcv=70.0, mchc=30.0, rdw=18.0, wbc=7.0, platelets=420.0, age=35.0, sex="female")
    assert cbc.mcv / cbc.rbc >= domain.MENTZER_CUTOFF
    codes = _codes(cbc)
    assert "microcytosis" in codes and "iron_deficiency_pattern" in codes
    assert "thalassaemia_trait_pattern" not in codes


def test_normocytic_anaemia_with_very_wide_rdw_is_flagged_as_possibly_dimorphic(make_panel) -> None:
    cbc = make_panel(hb=10.0, mcv=88.0, rdw=18.5, wbc=6.0, platelets=300.0, age=45.0, sex="female")
    assert "dimorphic_pattern" in _codes(cbc)


@pytest.mark.parametrize(
    ("risk", "opening"),
    [(RiskClass.HIGH, "B12 test advised with priority"), (RiskClass.INTERMEDIATE, "B12 test advised:"),
     (RiskClass.LOW, "Low risk")],
)
def test_recommendation_follows_the_risk_class(risk: RiskClass, opening: str) -> None:
    text = domain.recommendation(risk, [])
    assert text.startswith(opening) and text.endswith(".")


def test_pancytopenia_adds_urgent_review_to_any_recommendation(make_panel) -> None:
    cbc = make_panel(hb=8.0, mcv=115.0, mchc=34.0, rdw=19.0, wbc=3.2, platelets=95.0, age=60.0, sex="female")
    panel = domain.panel_from_features(cbc.as_features())
    found = domain.findings(panel, domain.derived_indices(panel))
    assert "pancytopenia needs prompt clinical review" in domain.recommendation(RiskClass.LOW, found)
