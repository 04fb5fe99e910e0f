"""The shipped model: identity, card reproducibility, clinical sanity, batch behaviour, explanations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference import domain
from inference import model as model_module
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.model import DEFAULT_MODEL_DIR, MANIFEST, TOP_CONTRIBUTIONS, B12Model
from inference.training.card import render_markdown
from inference.training.cohort import generate_cohort
from shared.events.screening import FEATURE_ORDER, Finding, Label, RiskClass


def _features(*panels) -> np.ndarray:
    return np.array([p.as_features() for p in panels], dtype=np.float64)


def _sample(rows: int, seed: int = 9) -> np.ndarray:
    """Valid panels from the synthetic generator (tests and demos only; the model is trained on NHANES)."""
    columns = generate_cohort(rows, seed)
    return np.column_stack([(columns["sex"] == "male").astype(np.float64) if name == "sex_male"
                            else columns[name].astype(np.float64) for name in FEATURE_ORDER])


def test_shipped_model_loads_with_its_version_and_artifact_digest(shipped_model: B12Model) -> None:
    manifest = json.loads((DEFAULT_MODEL_DIR / MANIFEST).read_text())
    assert shipped_model.version == "b12-cbc-v2" == shipped_model.identity.version
    assert shipped_model.identity.artifacts_sha256 == manifest["artifacts_sha256"]
    assert shipped_model.identity.data_source.startswith("NHANES 1999–2012 (5 survey cycles")


def test_shipped_directory_stays_small() -> None:
    assert sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()) < 2 * 1024 * 1024


def test_the_shipped_card_is_honest_about_what_it_is(shipped_model: B12Model) -> None:
    card = shipped_model.card()
    assert "Not clinically validated" in card["status"]
    assert card["validation"] == "leave one survey cycle out (5 groups)"
    assert any("not validated in any other population" in item for item in card["limitations"])
    markdown = (DEFAULT_MODEL_DIR / "card.md").read_text()
    assert "Not clinically validated" in markdown and "## Aims" in markdown


def test_shipped_markdown_card_is_the_rendering_of_its_json_card(shipped_model: B12Model) -> None:
    rendered = render_markdown(shipped_model.card(), plots=True)
    assert (DEFAULT_MODEL_DIR / "card.md").read_text(encoding="utf-8") == rendered


def test_card_metrics_are_a_copy(shipped_model: B12Model) -> None:
    shipped_model.card_metrics()["pooled"]["deficient"]["auroc"]["estimate"] = 1.0
    assert shipped_model.card_metrics()["pooled"]["deficient"]["auroc"]["estimate"] < 1.0


def test_at_the_training_prevalence_a_minority_is_advised_a_test(shipped_model: B12Model) -> None:
    """The point of the NHANES model: not everyone is flagged (the synthetic model flagged nine in ten)."""
    flagged = np.mean([a.advice.test_advised for a in shipped_model.assess(_sample(2000))])
    measured = shipped_model.card()["metrics"]["classes"]["deficient"]["ge2"]["flagged_fraction"]["estimate"]
    assert measured < 0.3 and flagged < 0.5


def test_classic_megaloblastic_panel_is_high_risk_and_far_above_a_healthy_one(
    shipped_model, make_panel
) -> None:
    megaloblastic = make_panel(
        hb=8.0,
        mcv=115.0,
        mchc=34.0,
        rdw=19.0,
        wbc=3.2,
        platelets=95.0,
        neutrophils_pct=50.0,
        lymphocytes_pct=42.0,
        age=62.0,
        sex="female",
    )
    healthy = make_panel(hb=13.5, mcv=90.0, rdw=12.8, wbc=6.5, platelets=260.0, age=62.0, sex="female")
    sick, well = shipped_model.assess(_features(megaloblastic, healthy))
    assert sick.risk_class is RiskClass.HIGH and sick.advice.test_advised
    assert sick.indices.pancytopenia
    assert {"macrocytosis", "raised_rdw", "pancytopenia"} <= {f.code for f in sick.findings}
    assert sick.probabilities.deficient > 2 * well.probabilities.deficient
    assert well.risk_class < RiskClass.HIGH and well.findings == []


PANELS = _sample(400, seed=21)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.integers(0, len(PANELS) - 1), min_size=1, max_size=8),
       declared=st.one_of(st.none(), st.floats(min_value=0.001, max_value=0.6)))
def test_every_assessment_is_coherent_at_any_declared_prevalence(shipped_model: B12Model, rows: list[int],
                                                                 declared: float | None) -> None:
    for a in shipped_model.assess(PANELS[rows], [declared] * len(rows)):
        p = a.probabilities
        assert math.isclose(p.normal + p.borderline + p.deficient, 1.0, abs_tol=1e-12)
        assert a.risk_class == domain.risk_class(p.deficient, shipped_model.thresholds)
        assert a.label == domain.label(p)
        if a.label is Label.DEFICIENT:
            assert a.risk_class >= RiskClass.INTERMEDIATE
        assert a.model == shipped_model.identity
        assert a.recommendation.endswith(".")
        advice = a.advice
        assert advice.test_advised == (a.risk_class >= RiskClass.INTERMEDIATE)
        assert advice.prevalence.source == ("model" if declared is None else "organisation")
        if declared is not None:
            assert advice.prevalence.deficient == declared
        assert advice.likelihood_ratio == shipped_model.policy.class_likelihood_ratios[int(a.risk_class)]
        assert advice.post_test_probability == pytest.approx(
            domain.post_test_probability(advice.prevalence.deficient, advice.likelihood_ratio))


def test_a_higher_declared_prevalence_never_lowers_a_probability_or_class(shipped_model: B12Model) -> None:
    x = PANELS[:100]
    low = shipped_model.assess(x, [0.01] * len(x))
    high = shipped_model.assess(x, [0.10] * len(x))
    assert all(b.probabilities.deficient > a.probabilities.deficient for a, b in zip(low, high, strict=True))
    assert all(b.risk_class >= a.risk_class for a, b in zip(low, high, strict=True))


def test_without_a_declared_prevalence_the_model_speaks_for_its_training_population(shipped_model) -> None:
    a = shipped_model.assess(PANELS[:1])[0]
    reference = shipped_model.policy.reference
    assert (a.advice.prevalence.deficient, a.advice.prevalence.abnormal) == (reference.deficient, reference.abnormal)
    assert a.advice.prevalence.source == "model"


def test_top_contributions_are_signed_shap_values_that_explain_the_calibrated_log_odds(shipped_model) -> None:
    x = PANELS[:200]
    p1, p2 = shipped_model.predict_proba(x, [0.05] * len(x))
    score = np.log(p1 / (1 - p1)) + np.log(p2 / (1 - p2))
    contributions = shipped_model.contributions(x)
    # SHAP is additive: per-row sums differ from the calibrated log-odds by the same constant for every row
    offset = score - contributions.sum(axis=1)
    assert np.allclose(offset, offset[0], atol=1e-6)
    for row, assessment in zip(x, shipped_model.assess(x[:20]), strict=False):
        top = assessment.top_contributions
        assert len(top) == TOP_CONTRIBUTIONS
        magnitudes = [abs(c.contribution) for c in top]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert all(c.value == row[FEATURE_ORDER.index(c.feature)] for c in top)


def test_findings_never_shift_probabilities(shipped_model, make_panel, monkeypatch) -> None:
    x = _features(
        make_panel(hb=9.5, mcv=70.0, mchc=30.0, rdw=18.0, wbc=7.0, platelets=420.0, age=35.0, sex="female")
    )
    before = shipped_model.assess(x)[0]
    monkeypatch.setattr(
        model_module.domain, "findings", lambda panel, indices: [Finding(code="macrocytosis", text="planted")]
    )
    after = shipped_model.assess(x)[0]
    assert after.findings != before.findings
    assert after.probabilities == before.probabilities and after.risk_class == before.risk_class
    assert after.label == before.label


def _healthy_row() -> np.ndarray:
    return np.array([[14.5, 4.81, 43.3, 90.0, 30.1, 33.5, 12.8, 6.5, 250.0, 58.0, 32.0, 40.0, 1.0]])


@pytest.mark.parametrize(
    ("column", "value"),
    [("hb", 0.0), ("rbc", 0.0), ("age", 12.0), ("sex_male", 0.5), ("mcv", float("nan"))],
)
def test_feature_values_the_contract_would_refuse_are_refused(
    shipped_model, column: str, value: float
) -> None:
    x = _healthy_row()
    assert len(shipped_model.assess(x)) == 1
    x[0, FEATURE_ORDER.index(column)] = value
    with pytest.raises(ValueError, match=column if column != "mcv" else "finite"):
        shipped_model.assess(x)


@pytest.mark.parametrize("bad", [np.zeros((2, 12)), np.zeros(13)])
def test_malformed_feature_matrices_are_refused(shipped_model: B12Model, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="shape"):
        shipped_model.assess(bad)


def test_assess_leaves_the_callers_array_untouched_and_writeable(shipped_model: B12Model) -> None:
    x = _healthy_row()
    before = x.copy()
    shipped_model.assess(x)
    assert x.flags.writeable and np.array_equal(x, before)


def test_an_empty_batch_gives_no_assessments(shipped_model: B12Model) -> None:
    assert shipped_model.assess(np.empty((0, len(FEATURE_ORDER)))) == []
