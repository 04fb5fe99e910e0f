"""Training: deterministic for a seed, a complete and reproducible model directory, honest thresholds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.model import HOLDOUT, MANIFEST, REQUIRED_ARTIFACTS, STAGE1_MODEL, STAGE2_MODEL, B12Model
from inference.training.data import read_labelled_csv
from inference.training.metrics import evaluate
from inference.training.pipeline import TrainingConfig, TrainingError, choose_thresholds, fit_platt, train


def test_retraining_with_the_same_seed_gives_identical_models(
    tmp_path: Path, tiny_csv: Path, tiny_model_dir: Path, tiny_config: TrainingConfig
) -> None:
    again = tmp_path / "again"
    train(tiny_csv, again, tiny_config, progress=False)
    for name in (STAGE1_MODEL, STAGE2_MODEL):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    first, second = B12Model.load(tiny_model_dir), B12Model.load(again)
    x = read_labelled_csv(again / HOLDOUT).features
    assert all(
        np.array_equal(a, b) for a, b in zip(first.predict_proba(x), second.predict_proba(x), strict=True)
    )
    assert first.card_metrics() == second.card_metrics()
    assert first.identity == second.identity  # every artifact, plots and card included, is byte-identical


def test_another_seed_gives_another_model(
    tmp_path: Path, tiny_csv: Path, tiny_model_dir: Path, tiny_config: TrainingConfig
) -> None:
    other = tmp_path / "other"
    train(tiny_csv, other, replace(tiny_config, seed=12), progress=False)
    assert (other / STAGE1_MODEL).read_bytes() != (tiny_model_dir / STAGE1_MODEL).read_bytes()


def test_the_model_directory_is_complete_and_plain_data(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / MANIFEST).read_text())
    assert set(REQUIRED_ARTIFACTS) | {HOLDOUT, "card.md"} <= set(manifest["artifacts"])
    training = json.loads((tiny_model_dir / "training.json").read_text())
    assert set(training["libraries"]) >= {"catboost", "numpy", "scikit-learn", "python"}
    assert len(training["data"]["sha256"]) == 64
    calibration = json.loads((tiny_model_dir / "calibration.json").read_text())
    assert calibration["stage1"]["method"] == calibration["stage2"]["method"] == "platt"
    assert not any(p.suffix in {".pkl", ".pickle", ".joblib"} for p in tiny_model_dir.iterdir())


def test_a_trained_directory_reproduces_its_own_card(tiny_model_dir: Path) -> None:
    model = B12Model.load(tiny_model_dir)
    card = model.card_metrics()
    holdout = read_labelled_csv(tiny_model_dir / HOLDOUT)
    p1, p2 = model.predict_proba(holdout.features)
    recomputed = evaluate(
        p1,
        p2,
        holdout.b12_pg_ml,
        model.thresholds,
        resamples=card["bootstrap"]["resamples"],
        seed=card["bootstrap"]["seed"],
    )
    assert recomputed == card


def test_thresholds_meet_the_operating_point_on_the_calibration_split() -> None:
    rng = np.random.default_rng(1)
    deficient = rng.random(4000) < 0.45
    p = np.clip(0.45 + 0.15 * deficient + rng.normal(0, 0.12, 4000), 0.01, 0.99)
    config = TrainingConfig(target_sensitivity=0.9, high_specificity=0.95)
    cut, notes = choose_thresholds(p, deficient, config)
    assert np.mean(p[deficient] >= cut.intermediate) >= 0.9
    assert np.mean(p[~deficient] < cut.high) >= 0.95
    assert notes["intermediate"]["calibration_sensitivity"] >= 0.9


def test_thresholds_are_kept_where_labels_and_classes_cannot_disagree() -> None:
    rng = np.random.default_rng(2)
    deficient = rng.random(2000) < 0.9  # so common that 90 % sensitivity sits above P = 0.33
    p = np.clip(0.85 + 0.05 * deficient + rng.normal(0, 0.05, 2000), 0.0, 1.0)
    cut, notes = choose_thresholds(p, deficient, TrainingConfig())
    assert cut.intermediate == 0.33 and notes["intermediate"]["capped_at_0_33"]
    rare = rng.random(2000) < 0.03
    q = np.clip(0.03 + 0.05 * rare + rng.normal(0, 0.01, 2000), 0.0, 1.0)
    cut, notes = choose_thresholds(q, rare, TrainingConfig())
    assert cut.high == 0.5 and notes["high"]["floored_at_0_5"]


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


def test_training_needs_both_classes_in_each_stage(tmp_path: Path, tiny_config: TrainingConfig) -> None:
    path = tmp_path / "all-normal.csv"
    row = "14.5,4.81,43.3,90,30.1,33.5,12.8,6.5,250,58,32,40,male,450,pg/mL\n"
    path.write_text(
        "hb,rbc,hct,mcv,mch,mchc,rdw,wbc,platelets,neutrophils_pct,lymphocytes_pct,age,sex,b12,"
        "b12_unit\n" + row * 600
    )
    with pytest.raises(TrainingError, match="both classes"):
        train(path, tmp_path / "model", tiny_config, progress=False)
