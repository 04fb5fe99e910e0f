"""The screen on real people: trained and validated on NHANES, which stays in ``../shared``.

A small stratified fixture of the real file (every adult below 300 pg/mL and a seeded sample of the others)
is trained here; the shipped model directory is checked against the whole file.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from inference.model import DEFAULT_MODEL_DIR, B12Model
from inference.training.data import read_cohort

CYCLES = {"1999-2000", "2001-2002", "2003-2004", "2005-2006", "2011-2012"}


def test_training_on_nhanes_validates_leaving_each_survey_cycle_out(nhanes_model_dir: Path) -> None:
    card = B12Model.load(nhanes_model_dir).card()
    assert card["validation"] == "leave one survey cycle out (5 groups)"
    assert set(card["metrics"]["per_group"]) == CYCLES
    assert card["status"].startswith("Trained and validated on NHANES 1999–2012")
    assert card["status"].endswith("Not clinically validated.")


def test_outcomes_use_the_roche_scale_and_report_mma_confirmed_deficiency(nhanes_model_dir: Path,
                                                                         nhanes_fixture: Path) -> None:
    data = json.loads((nhanes_model_dir / "training.json").read_text())["data"]
    assert "Roche-equivalent" in data["outcomes"]["deficient"]
    assert "MMA > 0.271" in data["outcomes"]["metabolically_confirmed"]
    with nhanes_fixture.open() as fh:
        rows = list(csv.DictReader(fh))
    roche = np.array([float(r["b12_roche_equiv_pg_ml"]) for r in rows])
    assert data["rows_used"] < len(rows)  # some refused
    # the outcome counts follow the harmonised column, not the assay's own reading
    cohort = read_cohort(nhanes_fixture)
    assert cohort.deficient.sum() <= (roche < 200).sum() < (np.array([float(r["b12_pg_ml"]) for r in rows]) < 200).sum()
    assert data["metabolically_confirmed_rows"] == int(cohort.metabolically_confirmed[cohort.mma_measured].sum()) > 0


def test_refused_and_pregnant_rows_are_excluded_and_counted_by_reason(nhanes_fixture: Path) -> None:
    cohort = read_cohort(nhanes_fixture)
    assert cohort.rows_read == len(cohort) + sum(cohort.excluded.values())
    reasons = " ".join(cohort.excluded)
    assert "pregnant" in reasons
    assert "refused by the CBC contract" in reasons or "missing" in reasons


def test_the_card_names_baselines_subgroups_and_the_decision_curve(nhanes_model_dir: Path) -> None:
    metrics = B12Model.load(nhanes_model_dir).card()["metrics"]
    assert set(metrics["baselines"]) == {"mcv", "rdw", "hb"}
    assert set(metrics["candidates"]) == {"catboost", "logistic"}
    assert set(metrics["subgroups"]) == {"sex", "age", "anaemia", "assay era"}
    assert set(metrics["subgroups"]["age"]) == {"18–39", "40–59", "60+"}
    thresholds = [row["threshold"] for row in metrics["calibrated_out_of_sample"]["decision_curve"]]
    assert thresholds[0] == 0.01 and thresholds[-1] == 0.2


def _row_fingerprints(path: Path) -> set[str]:
    """Each row's Hb, RBC, HCT and MCV as the file writes them: four numbers a model directory never needs."""
    with path.open() as fh:
        return {",".join((r["hb"], r["rbc"], r["hct"], r["mcv"])) for r in csv.DictReader(fh)}


def _quadruples(text: str) -> set[str]:
    return set(re.findall(r"(?=(\d+(?:\.\d+)?,\d+(?:\.\d+)?,\d+(?:\.\d+)?,\d+(?:\.\d+)?))", text.replace(", ", ",")))


@pytest.mark.parametrize("which", ["trained here", "shipped"])
def test_a_model_directory_holds_no_row_of_nhanes(which: str, nhanes_model_dir: Path, nhanes_path: Path) -> None:
    directory = nhanes_model_dir if which == "trained here" else DEFAULT_MODEL_DIR
    rows = _row_fingerprints(nhanes_path)
    assert not any(p.suffix == ".csv" for p in directory.iterdir())
    for path in directory.iterdir():
        if path.suffix in {".json", ".md"}:
            assert not _quadruples(path.read_text(encoding="utf-8")) & rows, path.name


def test_the_shipped_model_was_trained_on_the_nhanes_file(nhanes_path: Path) -> None:
    import hashlib

    training = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
    assert training["data"]["sha256"] == hashlib.sha256(nhanes_path.read_bytes()).hexdigest()
    assert training["data"]["source"] == "nhanes"


def test_prior_shift_keeps_calibration_in_the_large_on_resampled_real_cohorts(nhanes_path: Path) -> None:
    """Resample NHANES to other prevalences (the CBC of each outcome group unchanged): the shipped model,
    told each new prevalence, predicts it on average within a few per cent."""
    model = B12Model.load(DEFAULT_MODEL_DIR)
    cohort = read_cohort(nhanes_path)
    rng = np.random.default_rng(3)
    groups = {"deficient": np.flatnonzero(cohort.deficient),
              "borderline": np.flatnonzero(cohort.abnormal & ~cohort.deficient),
              "normal": np.flatnonzero(~cohort.abnormal)}
    for declared in (0.02, 0.05, 0.10, 0.20):
        target, _ = model.policy.prevalence_for(declared)
        size = 20_000
        shares = {"deficient": target.deficient, "borderline": target.abnormal - target.deficient,
                  "normal": 1 - target.abnormal}
        rows = np.concatenate([rng.choice(groups[g], round(size * share), replace=True) for g, share in shares.items()])
        p1, p2 = model.predict_proba(cohort.features[rows], [declared] * len(rows))
        observed = cohort.deficient[rows].mean()
        assert (p1 * p2).mean() == pytest.approx(observed, rel=0.05), declared
        assert p1.mean() == pytest.approx(cohort.abnormal[rows].mean(), rel=0.05), declared
