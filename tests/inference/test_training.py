"""Training: deterministic for a seed, validated out of sample, a complete model directory with no data rows."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference import domain
from inference.model import MANIFEST, REQUIRED_ARTIFACTS, STAGES, B12Model
from inference.training.card import render_markdown
from inference.training.data import read_cohort
from inference.training.metrics import decision_curve
from inference.training.pipeline import (
    TrainingConfig,
    TrainingError,
    class_likelihood_ratios,
    fit_platt,
    train,
)
from inference.training.validation import CHOICE_GRID, choose_thresholds


def test_retraining_with_the_same_seed_gives_an_identical_directory(
    tmp_path: Path, tiny_csv: Path, tiny_model_dir: Path, tiny_config: TrainingConfig
) -> None:
    again = tmp_path / "again"
    train(tiny_csv, again, tiny_config, progress=False)
    first, second = B12Model.load(tiny_model_dir), B12Model.load(again)
    assert first.identity == second.identity  # every artifact, card included, is byte-identical


def test_another_seed_gives_another_model(
    tmp_path: Path, tiny_csv: Path, tiny_model_dir: Path, tiny_config: TrainingConfig
) -> None:
    other = tmp_path / "other"
    train(tiny_csv, other, replace(tiny_config, fit=replace(tiny_config.fit, seed=12)), progress=False)
    assert B12Model.load(other).identity != B12Model.load(tiny_model_dir).identity


def test_the_model_directory_is_complete_and_plain_data(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / MANIFEST).read_text())
    stages = json.loads((tiny_model_dir / STAGES).read_text())
    assert set(REQUIRED_ARTIFACTS) | {"card.md", stages["stage1"]["file"], stages["stage2"]["file"]} \
        <= set(manifest["artifacts"])
    training = json.loads((tiny_model_dir / "training.json").read_text())
    assert set(training["libraries"]) >= {"catboost", "numpy", "scikit-learn", "python"}
    assert len(training["data"]["sha256"]) == 64
    calibration = json.loads((tiny_model_dir / "calibration.json").read_text())
    assert calibration["stage1"]["method"] == calibration["stage2"]["method"] == "platt"
    assert not any(p.suffix in {".pkl", ".pickle", ".joblib", ".csv"} for p in tiny_model_dir.iterdir())


def test_the_markdown_card_is_the_rendering_of_the_json_card(tiny_model_dir: Path) -> None:
    card = B12Model.load(tiny_model_dir).card()
    assert (tiny_model_dir / "card.md").read_text(encoding="utf-8") == render_markdown(card, plots=False)


def test_a_lab_csv_without_groups_is_validated_on_seeded_random_folds(tiny_model_dir: Path) -> None:
    card = B12Model.load(tiny_model_dir).card()
    assert card["validation"] == "leave one random fold out (5 groups)"
    assert set(card["metrics"]["per_group"]) == {f"fold {i}" for i in range(1, 6)}


def test_the_shipped_family_is_the_one_with_the_higher_out_of_sample_auroc(tiny_model_dir: Path) -> None:
    card = B12Model.load(tiny_model_dir).card()
    auroc = {f: r["deficient"]["auroc"]["estimate"] for f, r in card["metrics"]["candidates"].items()}
    assert card["model"]["family"] == max(auroc, key=auroc.get)


def test_thresholds_are_the_first_useful_points_of_the_decision_curve() -> None:
    rng = np.random.default_rng(1)
    deficient = rng.random(20_000) < 0.03
    p = np.clip(np.where(deficient, rng.beta(2, 30, 20_000), rng.beta(1.2, 60, 20_000)), 1e-4, 0.99)
    curve = decision_curve(deficient, p, CHOICE_GRID)
    cut, notes = choose_thresholds(curve, lowest=0.02, flagged_high=0.05)
    by_threshold = {row["threshold"]: row for row in curve}
    chosen = by_threshold[cut.intermediate]
    assert cut.intermediate >= 0.02
    assert chosen["model"] > max(chosen["test_everyone"], 0.0)
    assert all(not (0.02 <= t < cut.intermediate) for t in notes["useful_thresholds"])
    assert by_threshold[cut.high]["flagged_fraction"] <= 0.05 and cut.high > cut.intermediate


def test_a_model_that_beats_no_default_advises_no_test_and_says_so() -> None:
    rng = np.random.default_rng(2)
    deficient = rng.random(5000) < 0.03
    misleading = np.where(deficient, 0.001, rng.uniform(0.02, 0.1, 5000))  # flags only the non-deficient
    cut, notes = choose_thresholds(decision_curve(deficient, misleading, CHOICE_GRID), lowest=0.02,
                                   flagged_high=0.05)
    assert "warning" in notes and notes["useful_thresholds"] == []
    assert domain.risk_classes(misleading, cut).max() == 1


def test_class_likelihood_ratios_are_the_ratio_of_class_shares_and_stay_finite() -> None:
    deficient = np.array([True, True, False, False, False, False])
    classes = np.array([3, 2, 2, 1, 1, 1])
    ratios = class_likelihood_ratios(deficient, classes)
    assert ratios["2"] == pytest.approx((1 / 2) / (1 / 4))
    assert 0 < ratios["1"] < 1 and ratios["3"] > 1  # empty cells get Haldane's correction, never 0 or inf


def test_platt_calibration_recovers_a_known_logistic_map() -> None:
    rng = np.random.default_rng(3)
    margin = rng.normal(0, 2, 20_000)
    y = rng.random(20_000) < 1 / (1 + np.exp(-(0.5 * margin - 0.3)))
    calibration, degenerate = fit_platt(margin, y)
    assert not degenerate
    assert calibration.slope == pytest.approx(0.5, abs=0.03)
    assert calibration.intercept == pytest.approx(-0.3, abs=0.05)


def test_platt_calibration_without_signal_falls_back_to_the_base_rate() -> None:
    rng = np.random.default_rng(4)
    margin = rng.normal(0, 1, 2000)
    y = margin < 0  # anti-correlated: no positive slope exists
    calibration, degenerate = fit_platt(margin, y)
    assert degenerate
    assert calibration(np.array([-3.0, 3.0])) == pytest.approx([y.mean(), y.mean()], abs=1e-3)


def test_training_refuses_to_overwrite_a_model_without_force(
    tiny_csv: Path, tiny_model_dir: Path, tiny_config: TrainingConfig
) -> None:
    with pytest.raises(TrainingError, match="--force"):
        train(tiny_csv, tiny_model_dir, tiny_config, progress=False)


def test_training_needs_both_outcomes_in_each_stage(tmp_path: Path, tiny_config: TrainingConfig) -> None:
    path = tmp_path / "all-normal.csv"
    row = "14.5,4.81,43.3,90,30.1,33.5,12.8,6.5,250,58,32,40,male,450,pg/mL\n"
    path.write_text(
        "hb,rbc,hct,mcv,mch,mchc,rdw,wbc,platelets,neutrophils_pct,lymphocytes_pct,age,sex,b12,"
        "b12_unit\n" + row * 600
    )
    with pytest.raises(TrainingError, match="both outcomes"):
        train(path, tmp_path / "model", tiny_config, progress=False)


def test_a_single_family_can_be_trained_alone(tmp_path: Path, tiny_csv: Path, tiny_config: TrainingConfig) -> None:
    out = tmp_path / "logistic"
    train(tiny_csv, out, replace(tiny_config, families=("logistic",)), progress=False)
    assert json.loads((out / STAGES).read_text())["stage1"]["family"] == "logistic"
    assert set(B12Model.load(out).card()["metrics"]["candidates"]) == {"logistic"}


def test_unknown_families_are_refused() -> None:
    with pytest.raises(ValueError, match="families"):
        TrainingConfig(families=("random-forest",))


def test_the_cohort_reader_is_the_same_for_training_and_evaluation(tiny_csv: Path) -> None:
    first, second = read_cohort(tiny_csv, seed=1), read_cohort(tiny_csv, seed=1)
    assert np.array_equal(first.features, second.features) and list(first.group) == list(second.group)
