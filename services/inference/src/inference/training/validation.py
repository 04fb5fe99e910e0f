"""Internal–external validation: every candidate fitted on all groups but one and scored on the one left out.

With NHANES the groups are survey cycles (leave-one-cycle-out), so each prediction is made on people from
a survey the model never saw, including a change of B12 assay between 2005–06 and 2011–12. The same folds
serve every candidate: the two-stage CatBoost and logistic models, and the single-marker baselines (MCV,
RDW, Hb, each a one-variable logistic regression), so their figures compare like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from catboost import CatBoostClassifier, Pool
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from inference import domain
from inference.model import CatBoostStage, LogisticStage, Stage, sigmoid
from inference.training.data import Cohort
from inference.training.metrics import class_report, outcome_report
from shared.events.screening import FEATURE_ORDER

FAMILIES = ("catboost", "logistic")
SINGLE_MARKERS = ("mcv", "rdw", "hb")
MIN_STAGE_ROWS = 50


class TrainingError(Exception):
    """The data cannot produce a model (too few rows, an outcome missing in a fold, no signal at all)."""


@dataclass(frozen=True)
class FitSettings:
    seed: int = 20240617
    iterations: int = 3000
    learning_rate: float = 0.03
    depth: int = 3
    l2_leaf_reg: float = 20.0
    early_stopping_rounds: int = 300
    early_stopping_fraction: float = 0.2
    logistic_c: float = 1.0
    thread_count: int = 1


# -- fitting one stage -------------------------------------------------------------------------------------


def _check_outcome(y: np.ndarray, what: str) -> None:
    if len(y) < MIN_STAGE_ROWS or y.all() or not y.any():
        raise TrainingError(f"{what}: {len(y)} rows with {int(y.sum())} events; both outcomes and at least "
                            f"{MIN_STAGE_ROWS} rows are needed")


def fit_catboost(x: np.ndarray, y: np.ndarray, settings: FitSettings, *,
                 iterations: int | None = None) -> tuple[CatBoostStage, int]:
    """A CatBoost stage. Without ``iterations``, a seeded stratified part is held out for early stopping and
    the best iteration is returned; with it, all rows are fitted for exactly that many trees."""
    _check_outcome(y, "catboost stage")
    params = dict(loss_function="Logloss", learning_rate=settings.learning_rate, depth=settings.depth,
                  l2_leaf_reg=settings.l2_leaf_reg, boosting_type="Plain", random_seed=settings.seed,
                  thread_count=settings.thread_count, allow_writing_files=False, verbose=False)
    if iterations is not None:
        model = CatBoostClassifier(iterations=iterations, **params)
        model.fit(Pool(x, y.astype(int), feature_names=list(FEATURE_ORDER)))
        return CatBoostStage(model), iterations
    rng = np.random.default_rng(settings.seed)
    stop = np.zeros(len(y), dtype=bool)
    for outcome in (False, True):
        rows = rng.permutation(np.flatnonzero(y == outcome))
        stop[rows[: max(1, round(len(rows) * settings.early_stopping_fraction))]] = True
    model = CatBoostClassifier(iterations=settings.iterations, od_type="Iter",
                               od_wait=settings.early_stopping_rounds, use_best_model=True, **params)
    model.fit(Pool(x[~stop], y[~stop].astype(int), feature_names=list(FEATURE_ORDER)),
              eval_set=Pool(x[stop], y[stop].astype(int), feature_names=list(FEATURE_ORDER)))
    return CatBoostStage(model), int(model.get_best_iteration()) + 1


def fit_logistic(x: np.ndarray, y: np.ndarray, settings: FitSettings) -> LogisticStage:
    """An L2-penalised logistic regression on standardised features (lbfgs, deterministic)."""
    _check_outcome(y, "logistic stage")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=settings.logistic_c, max_iter=5000)
    model.fit((x - mean) / scale, y.astype(int))
    return LogisticStage(mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
                         coef=tuple(map(float, model.coef_[0])), intercept=float(model.intercept_[0]))


@dataclass
class TwoStage:
    stage1: Stage
    stage2: Stage
    iterations: dict[str, int] = field(default_factory=dict)  # CatBoost trees per stage


def fit_two_stage(family: str, x: np.ndarray, abnormal: np.ndarray, deficient: np.ndarray,
                  settings: FitSettings, iterations: dict[str, int] | None = None) -> TwoStage:
    """Stage 1 (B12 < 300) on every row, stage 2 (B12 < 200 | < 300) on the abnormal rows only."""
    if family == "logistic":
        return TwoStage(fit_logistic(x, abnormal, settings),
                        fit_logistic(x[abnormal], deficient[abnormal], settings))
    if family != "catboost":
        raise ValueError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    given = iterations or {}
    stage1, trees1 = fit_catboost(x, abnormal, settings, iterations=given.get("stage1"))
    stage2, trees2 = fit_catboost(x[abnormal], deficient[abnormal], settings, iterations=given.get("stage2"))
    return TwoStage(stage1, stage2, {"stage1": trees1, "stage2": trees2})


# -- leave one group out -----------------------------------------------------------------------------------


@dataclass
class OutOfSample:
    """Each row's raw stage margins from the model fitted without the row's group."""

    margin1: np.ndarray
    margin2: np.ndarray
    iterations: list[dict[str, int]]

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        return sigmoid(self.margin1), sigmoid(self.margin2)


def leave_one_group_out(cohort: Cohort, family: str, settings: FitSettings,
                        progress: bool = False) -> OutOfSample:
    x, abnormal, deficient = cohort.features, cohort.abnormal, cohort.deficient
    margin1 = np.full(len(cohort), np.nan)
    margin2 = np.full(len(cohort), np.nan)
    iterations = []
    for group in tqdm(sorted(set(cohort.group)), desc=f"{family}: leave one out", disable=not progress,
                      leave=False):
        held = cohort.group == group
        fitted = fit_two_stage(family, x[~held], abnormal[~held], deficient[~held], settings)
        margin1[held] = fitted.stage1.margins(x[held], settings.thread_count)
        margin2[held] = fitted.stage2.margins(x[held], settings.thread_count)
        iterations.append(fitted.iterations)
    return OutOfSample(margin1, margin2, iterations)


def single_marker_out_of_sample(cohort: Cohort, marker: str, settings: FitSettings) -> np.ndarray:
    """P(deficient) from one marker (a one-variable logistic regression), fitted leaving each group out."""
    column = cohort.column(marker)[:, None]
    p = np.full(len(cohort), np.nan)
    for group in sorted(set(cohort.group)):
        held = cohort.group == group
        model = LogisticRegression(C=settings.logistic_c, max_iter=1000)
        model.fit(column[~held], cohort.deficient[~held].astype(int))
        p[held] = model.predict_proba(column[held])[:, 1]
    return p


# -- what is reported ---------------------------------------------------------------------------------------


def outcomes(cohort: Cohort, p_abnormal: np.ndarray, p_given: np.ndarray, *, resamples: int, seed: int,
             progress: bool = False) -> dict[str, Any]:
    """The primary, stage and secondary outcomes of one set of out-of-sample predictions."""
    p_deficient = p_abnormal * p_given
    mma = cohort.mma_measured
    abnormal = cohort.abnormal
    return {
        "deficient": outcome_report(cohort.deficient, p_deficient, resamples=resamples, seed=seed,
                                    progress=progress, desc="bootstrap: B12 < 200"),
        "abnormal": outcome_report(abnormal, p_abnormal, resamples=resamples, seed=seed + 1,
                                   progress=progress, desc="bootstrap: B12 < 300"),
        "deficient_given_abnormal": outcome_report(cohort.deficient[abnormal], p_given[abnormal],
                                                   resamples=resamples, seed=seed + 2),
        "metabolically_confirmed": outcome_report(cohort.metabolically_confirmed[mma], p_deficient[mma],
                                                  resamples=resamples, seed=seed + 3, progress=progress,
                                                  desc="bootstrap: MMA-confirmed"),
    }


def subgroups(cohort: Cohort) -> dict[str, dict[str, np.ndarray]]:
    """Masks of the reported subgroups: sex, age band, anaemia (WHO limits) and B12 assay era."""
    age, male, hb = cohort.column("age"), cohort.column("sex_male") == 1.0, cohort.column("hb")
    anaemic = hb < np.where(male, domain.HB_LOWER_MALE, domain.HB_LOWER_FEMALE)
    groups: dict[str, dict[str, np.ndarray]] = {
        "sex": {"female": ~male, "male": male},
        "age": {"18–39": age < 40, "40–59": (age >= 40) & (age < 60), "60+": age >= 60},
        "anaemia": {"anaemic": anaemic, "not anaemic": ~anaemic},
    }
    assays = sorted({a for a in cohort.assay if a})
    if len(assays) > 1:
        groups["assay era"] = {a: cohort.assay == a for a in assays}
    return groups


def subgroup_table(cohort: Cohort, p_deficient: np.ndarray, *, resamples: int, seed: int
                   ) -> dict[str, dict[str, Any]]:
    """B12 < 200 in each subgroup: discrimination with CIs and calibration-in-the-large."""
    table: dict[str, dict[str, Any]] = {}
    for dimension, masks in subgroups(cohort).items():
        table[dimension] = {}
        for name, mask in masks.items():
            report = outcome_report(cohort.deficient[mask], p_deficient[mask], resamples=resamples, seed=seed)
            table[dimension][name] = {key: report[key] for key in (
                "rows", "events", "prevalence", "mean_predicted", "auroc", "calibration_intercept",
                "calibration_slope") if key in report}
    return table


def per_group(cohort: Cohort, p_deficient: np.ndarray, *, resamples: int, seed: int) -> dict[str, Any]:
    """B12 < 200 in each held-out group (each NHANES cycle scored by the model fitted on the others)."""
    out = {}
    for group in sorted(set(cohort.group)):
        mask = cohort.group == group
        report = outcome_report(cohort.deficient[mask], p_deficient[mask], resamples=resamples, seed=seed)
        out[group] = {key: report[key] for key in (
            "rows", "events", "prevalence", "mean_predicted", "mean_predicted_relative_error", "auroc",
            "auprc", "calibration_intercept", "calibration_slope", "brier", "brier_skill") if key in report}
    return out


# -- the operating point -----------------------------------------------------------------------------------


#: Threshold probabilities the operating point is chosen from: 1 % to 20 % in steps of 0.25 %.
CHOICE_GRID = tuple(round(0.01 + 0.0025 * k, 4) for k in range(77))
THRESHOLD_RULE = (
    "A B12 test is advised (class ≥ 2) from the lowest threshold probability, at or above the lowest "
    "acceptable one, at which the model's out-of-sample net benefit exceeds both testing everyone and testing "
    "no one; class 3 starts at the lowest threshold above that which flags at most the stated share of adults "
    "and still exceeds both defaults.")


def choose_thresholds(decision: list[dict[str, float]], lowest: float, flagged_high: float
                      ) -> tuple[domain.RiskThresholds, dict[str, Any]]:
    """Risk-class thresholds from the decision curve (on ``CHOICE_GRID``) of the calibrated out-of-sample
    P(deficient); see ``THRESHOLD_RULE``. ``lowest`` is the smallest chance of deficiency for which a lab
    should order a test (a value judgement, stated in the card); when the model beats the defaults at no
    threshold from there, no test is advised from the CBC alone below the top of the grid, and the card says so.
    """
    useful = [row for row in decision
              if row["threshold"] >= lowest and row["flagged_fraction"] > 0
              and row["model"] > max(row["test_everyone"], row["test_no_one"])]
    notes: dict[str, Any] = {"rule": THRESHOLD_RULE, "lowest_acceptable_threshold": lowest,
                             "class3_flags_at_most": flagged_high,
                             "useful_thresholds": [row["threshold"] for row in useful]}
    if not useful:
        top = decision[-1]["threshold"]
        notes["warning"] = f"the model's net benefit beats neither default at any threshold from {lowest:.2%}"
        return domain.RiskThresholds(intermediate=min(top, domain.MAX_INTERMEDIATE_THRESHOLD),
                                     high=math.nextafter(top, 1.0)), notes
    intermediate = useful[0]["threshold"]
    later = [row for row in useful if row["threshold"] > intermediate and row["flagged_fraction"] <= flagged_high]
    high = later[0]["threshold"] if later else math.nextafter(useful[-1]["threshold"], 1.0)
    if not later:
        notes["warning"] = (f"no useful threshold above {intermediate:.2%} flags at most {flagged_high:.0%}; class 3 "
                            "starts just above the highest useful threshold")
    return domain.RiskThresholds(intermediate=intermediate, high=high), notes


def operating_characteristics(cohort: Cohort, p_deficient: np.ndarray, thresholds: domain.RiskThresholds,
                              *, resamples: int, seed: int) -> dict[str, Any]:
    """What each class and rule does, out of sample, for B12 < 200 and for MMA-confirmed deficiency."""
    classes = domain.risk_classes(p_deficient, thresholds)
    mma = cohort.mma_measured
    return {
        "deficient": class_report(cohort.deficient, classes, resamples=resamples, seed=seed),
        "metabolically_confirmed": class_report(cohort.metabolically_confirmed[mma], classes[mma],
                                                resamples=resamples, seed=seed + 1),
    }

