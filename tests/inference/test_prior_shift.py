"""An organisation's declared prevalence: the implied pair of prevalences, and Bayes on the odds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference import domain
from inference.domain import Prevalence

NHANES_LIKE = Prevalence(deficient=0.014, abnormal=0.081)
fraction = st.floats(min_value=0.001, max_value=0.9, allow_nan=False)


def test_the_reference_prevalence_maps_onto_itself() -> None:
    implied = domain.implied_prevalence(NHANES_LIKE.deficient, NHANES_LIKE)
    assert implied.abnormal == pytest.approx(NHANES_LIKE.abnormal, rel=1e-9)
    assert domain.stage_log_odds_shifts(NHANES_LIKE, implied) == pytest.approx((0.0, 0.0), abs=1e-9)


@given(a=fraction, b=fraction)
def test_more_declared_deficiency_implies_more_abnormal_b12(a: float, b: float) -> None:
    low, high = sorted((a, b))
    first, second = domain.implied_prevalence(low, NHANES_LIKE), domain.implied_prevalence(high, NHANES_LIKE)
    assert first.deficient < first.abnormal < 1 and second.deficient < second.abnormal < 1
    assert first.abnormal <= second.abnormal


@given(declared=fraction)
def test_shifts_grow_with_the_declared_prevalence(declared: float) -> None:
    shift1, shift2 = domain.stage_log_odds_shifts(NHANES_LIKE, domain.implied_prevalence(declared, NHANES_LIKE))
    if declared > NHANES_LIKE.deficient:
        assert shift1 > 0 and shift2 > 0
    elif declared < NHANES_LIKE.deficient:
        assert shift1 < 0 and shift2 < 0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, float("nan")])
def test_a_prevalence_outside_zero_and_one_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        domain.implied_prevalence(bad, NHANES_LIKE)


@pytest.mark.parametrize("target", [0.005, 0.05, 0.2, 0.5])
def test_bayes_on_the_odds_recalibrates_a_calibrated_score_to_a_resampled_population(target: float) -> None:
    """A score calibrated where 3 % are positive, applied where ``target`` are (same features per class):
    shifted by the prior odds it is calibrated again, on average and within each tenth of risk."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=400_000)
    logit = -4.0 + 1.2 * x
    y = rng.random(len(x)) < 1 / (1 + np.exp(-logit))
    base = y.mean()
    positives, negatives = np.flatnonzero(y), np.flatnonzero(~y)
    n = 100_000
    rows = np.concatenate([rng.choice(positives, round(n * target)), rng.choice(negatives, n - round(n * target))])
    shift = math.log(target / (1 - target)) - math.log(base / (1 - base))
    p = 1 / (1 + np.exp(-(logit[rows] + shift)))
    assert p.mean() == pytest.approx(y[rows].mean(), rel=0.03)
    order = np.argsort(p)
    for part in np.array_split(order, 10):
        assert p[part].mean() == pytest.approx(y[rows][part].mean(), abs=0.02 + 0.1 * p[part].mean())


@given(prevalence=fraction, ratio=st.floats(min_value=0.01, max_value=100))
def test_post_test_probability_is_bayes_on_the_odds(prevalence: float, ratio: float) -> None:
    post = domain.post_test_probability(prevalence, ratio)
    assert 0 < post < 1
    assert post / (1 - post) == pytest.approx(prevalence / (1 - prevalence) * ratio, rel=1e-9)
    assert (post > prevalence) == (ratio > 1) or math.isclose(post, prevalence, rel_tol=1e-12)
