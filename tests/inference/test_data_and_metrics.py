"""Reading labelled CSVs (units, validation) and the numpy metrics behind the model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from inference.training.cohort import generate_cohort, write_cohort_csv
from inference.training.data import b12_to_pg_ml, read_cohort
from inference.training.metrics import (
    auroc,
    average_precision,
    brier_skill,
    calibration_intercept,
    calibration_slope,
    decision_curve,
    net_benefit,
    operating_point,
    reliability_table,
)

HEADER = "hb,rbc,hct,mcv,mch,mchc,rdw,wbc,platelets,neutrophils_pct,lymphocytes_pct,age,sex,b12,b12_unit\n"
HEALTHY = "14.5,4.81,43.3,90,30.1,33.5,12.8,6.5,250,58,32,40,male"


def _csv(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "lab.csv"
    path.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_b12_in_pmol_per_litre_is_converted_to_pg_per_ml() -> None:
    assert b12_to_pg_ml(147.6, "pmol/L") == pytest.approx(200.0)
    assert b12_to_pg_ml(221.4, "pmol/L") == pytest.approx(300.0)
    assert b12_to_pg_ml(250.0, "ng/L") == 250.0
    with pytest.raises(ValueError):
        b12_to_pg_ml(250.0, "nmol/L")


def test_training_rows_in_pmol_per_litre_get_the_labels_of_their_pg_per_ml_value(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        f"{HEALTHY},140,pmol/L",
        f"{HEALTHY},150,pmol/L",
        f"{HEALTHY},230,pmol/L",
        f"{HEALTHY},189.7,pg/mL",
    )
    data = read_cohort(path)
    assert data.b12_pg_ml == pytest.approx([140 / 0.738, 150 / 0.738, 230 / 0.738, 189.7])
    assert data.deficient.tolist() == [True, False, False, True]  # 189.7, 203.3, 311.7, 189.7 pg/mL
    assert data.abnormal.tolist() == [True, True, False, True]


def test_a_cohort_written_in_pmol_per_litre_reads_back_with_the_same_labels(tmp_path: Path) -> None:
    columns = generate_cohort(2000, seed=8)
    write_cohort_csv(columns, tmp_path / "pg.csv", b12_unit="pg/mL")
    write_cohort_csv(columns, tmp_path / "pmol.csv", b12_unit="pmol/L")
    pg, pmol = read_cohort(tmp_path / "pg.csv"), read_cohort(tmp_path / "pmol.csv")
    assert np.array_equal(pg.features, pmol.features)
    assert np.allclose(pg.b12_pg_ml, pmol.b12_pg_ml, atol=0.1)  # pmol/L is written to 0.1
    near_cutoff = (np.abs(pg.b12_pg_ml - 200) < 0.1) | (np.abs(pg.b12_pg_ml - 300) < 0.1)
    assert np.array_equal(pg.deficient[~near_cutoff], pmol.deficient[~near_cutoff])
    assert np.array_equal(pg.abnormal[~near_cutoff], pmol.abnormal[~near_cutoff])


def test_missing_unit_column_takes_the_default_unit(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"{HEALTHY},140", header=HEADER.replace(",b12_unit", ""))
    with pytest.raises(ValueError, match="b12_unit"):
        read_cohort(path)
    assert read_cohort(path, default_b12_unit="pmol/L").deficient.tolist() == [True]


def test_rows_the_contract_refuses_are_excluded_and_reported(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        f"{HEALTHY},400,pg/mL",
        "14.5,4.81,43.3,120,30.1,33.5,12.8,6.5,250,58,32,40,male,400,pg/mL",  # MCV disagrees with HCT/RBC
        "14.5,4.81,43.3,90,30.1,33.5,12.8,6.5,250,58,32,16,male,400,pg/mL",  # a child
        f"{HEALTHY},400,mmol/L",  # unknown B12 unit
        "14.5,4.81,43.3,90,30.1,33.5,12.8,6.5,250,58,32,40,other,400,pg/mL",  # sex not male/female
        "14.5,4.81,43.3,90,30.1,33.5,12.8,6.5,250,58,32,40,F,150,pg/mL",
    )
    data = read_cohort(path)
    assert data.rows_read == 6 and len(data.b12_pg_ml) == 2
    assert sum(data.excluded.values()) == 4
    reasons = " ".join(data.excluded)
    assert "refused by the CBC contract: age" in reasons and "refused by the CBC contract: sex" in reasons
    assert "mmol/L" in reasons and "refused by the CBC contract: panel" in reasons
    assert data.features[1, -1] == 0.0  # "F" is female


def test_missing_cbc_columns_are_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, "14.5,400,pg/mL", header="hb,b12,b12_unit\n")
    with pytest.raises(ValueError, match="lacks required columns"):
        read_cohort(path)


scores = st.lists(
    st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.7, 0.9, 1.0])),
    min_size=2,
    max_size=60,
).filter(lambda rows: 0 < sum(y for y, _ in rows) < len(rows))


@settings(max_examples=60, deadline=None)
@given(rows=scores)
def test_auroc_and_average_precision_agree_with_scikit_learn_including_ties(rows) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows])
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_reliability_table_and_operating_point_count_every_row() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(1000)
    y = rng.random(1000) < p
    table = reliability_table(y, p)
    assert sum(row["rows"] for row in table) == 1000 and len(table) == 10
    assert all(abs(row["observed_rate"] - row["mean_predicted"]) < 0.12 for row in table)
    op = operating_point(y, p >= 0.5)
    assert op["tp"] + op["fp"] + op["tn"] + op["fn"] == 1000
    assert op["sensitivity"] == pytest.approx(op["tp"] / (op["tp"] + op["fn"]))


def test_a_calibrated_score_has_intercept_zero_and_slope_one_and_an_overconfident_one_does_not() -> None:
    rng = np.random.default_rng(1)
    logit = rng.normal(-3, 1.2, 200_000)
    y = rng.random(len(logit)) < 1 / (1 + np.exp(-logit))
    calibrated = 1 / (1 + np.exp(-logit))
    assert calibration_intercept(y, calibrated) == pytest.approx(0.0, abs=0.03)
    assert calibration_slope(y, calibrated) == pytest.approx(1.0, abs=0.03)
    overconfident = 1 / (1 + np.exp(-(2 * logit + 3)))
    assert calibration_slope(y, overconfident) == pytest.approx(0.5, abs=0.03)


def test_brier_skill_is_zero_for_the_prevalence_forecast_and_one_for_a_perfect_one() -> None:
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0], dtype=bool)
    assert brier_skill(y, np.full(len(y), y.mean())) == pytest.approx(0.0)
    assert brier_skill(y, y.astype(float)) == pytest.approx(1.0)


def test_net_benefit_counts_true_positives_minus_threshold_weighted_false_positives() -> None:
    y = np.array([True, True, False, False, False, False, False, False, False, False])
    p = np.array([0.5, 0.05, 0.5, 0.3, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    # at 10 %: flagged are rows 0, 2, 3 -> 1 TP, 2 FP
    assert net_benefit(y, p, 0.10) == pytest.approx((1 - 2 * 0.1 / 0.9) / 10)
    curve = decision_curve(y, p, (0.10,))
    assert curve[0]["test_everyone"] == pytest.approx(0.2 - 0.8 * 0.1 / 0.9)
    assert curve[0]["flagged_fraction"] == pytest.approx(0.3)
