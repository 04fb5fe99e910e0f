"""The synthetic cohort: valid under the contract, seeded, and as unflattering as the published figures."""

from __future__ import annotations

import numpy as np
import pytest

from inference.training.cohort import CBC_COLUMNS, generate_cohort, panel_is_valid, population
from shared.events.screening import CompleteBloodCount


@pytest.mark.parametrize("name", ["india-lab", "us-lab"])
def test_generated_panels_pass_the_contract_validation(name: str) -> None:
    columns = generate_cohort(1500, seed=3, pop=population(name))
    for i in range(1500):
        values = {c: float(columns[c][i]) for c in CBC_COLUMNS if c != "sex"}
        CompleteBloodCount(**values, sex=str(columns["sex"][i]))  # raises if the contract refuses it
    assert panel_is_valid(columns).all()


def test_vectorised_validity_check_agrees_with_the_contract() -> None:
    columns = generate_cohort(200, seed=4)
    broken = {k: v.copy() for k, v in columns.items()}
    broken["mcv"][:50] = broken["mcv"][:50] * 1.2  # MCV no longer matches HCT×10/RBC
    valid = panel_is_valid(broken)
    assert not valid[:50].any() and valid[50:].all()


def test_same_seed_gives_the_same_cohort_and_another_seed_does_not() -> None:
    a, b, c = generate_cohort(500, seed=9), generate_cohort(500, seed=9), generate_cohort(500, seed=10)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["mcv"], c["mcv"])


@pytest.mark.parametrize(
    ("name", "override", "expected"),
    [("india-lab", None, 0.45), ("us-lab", None, 0.03), ("us-lab", 0.2, 0.2)],
)
def test_deficiency_prevalence_is_configurable(name: str, override: float | None, expected: float) -> None:
    columns = generate_cohort(20_000, seed=1, pop=population(name, override))
    assert np.mean(columns["b12"] < 200) == pytest.approx(expected, abs=0.01)


def test_most_deficient_adults_have_a_normal_mcv_as_in_the_indian_data() -> None:
    columns = generate_cohort(60_000, seed=2)
    mcv = columns["mcv"][columns["b12"] < 200]
    # published: 76.5 % MCV 80–100 fL, 10.4 % above 100 fL, 13.1 % below 80 fL
    assert np.mean((mcv >= 80) & (mcv <= 100)) == pytest.approx(0.765, abs=0.03)
    assert np.mean(mcv > 100) == pytest.approx(0.104, abs=0.025)
    assert np.mean(mcv < 80) == pytest.approx(0.131, abs=0.025)


def test_marginal_b12_has_almost_no_cbc_signature() -> None:
    columns = generate_cohort(150_000, seed=3)
    b12, macro = columns["b12"], columns["mcv"] > 100
    marginal, normal = (b12 >= 200) & (b12 < 300), b12 >= 300

    def odds(group: np.ndarray) -> float:
        return macro[group].mean() / (1 - macro[group].mean())

    assert odds(marginal) / odds(normal) == pytest.approx(1.03, abs=0.2)  # published OR 1.03
    assert odds(b12 < 200) / odds(normal) > 2.5  # low B12 does raise it (published OR 3.9)


def test_pancytopenia_comes_only_from_severe_marrow_involvement_or_other_cytopenias() -> None:
    columns = generate_cohort(60_000, seed=4)
    hb_limit = np.where(columns["sex"] == "male", 13.0, 12.0)
    pancytopenia = (columns["hb"] < hb_limit) & (columns["wbc"] < 4.0) & (columns["platelets"] < 150.0)
    severe = columns["megaloblastic_severity"] > 0.6
    explained = severe | (columns["other_cytopenia"] == 1)
    assert pancytopenia.sum() > 100
    assert pancytopenia[~explained].mean() < 0.001
    assert pancytopenia[severe].mean() > 0.3


def test_confounders_are_common_in_the_indian_profile() -> None:
    columns = generate_cohort(40_000, seed=6)
    female = columns["sex"] == "female"
    assert columns["iron_deficiency"][female].mean() == pytest.approx(0.32, abs=0.03)
    assert columns["thalassaemia_trait"].mean() == pytest.approx(0.04, abs=0.01)
    mentzer = columns["mcv"] / columns["rbc"]
    pure_trait = (
        (columns["thalassaemia_trait"] == 1)
        & (columns["iron_deficiency"] == 0)
        & (columns["megaloblastic_severity"] == 0)
    )
    assert np.mean(mentzer[pure_trait] < 13) > 0.85  # iron or B12 deficiency in a carrier raises it
