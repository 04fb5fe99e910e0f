"""Discrimination and calibration metrics in plain numpy, so the card's numbers can be recomputed anywhere.

``auroc`` is the Mann–Whitney statistic with average ranks for ties; ``average_precision`` is the step-wise
area under the precision–recall curve (the definition scikit-learn uses; the tests check both agree).
Confidence intervals are percentile bootstraps over rows with a fixed seed, so they are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from inference import domain
from inference.training.data import ABNORMAL_BELOW, DEFICIENT_BELOW

CALIBRATION_BINS = 10


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    _, inverse, counts = np.unique(score[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each tie group
    ranks = np.empty(len(score))
    ranks[order] = average_rank[inverse]
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    y_sorted = y[order]
    s_sorted = score[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), len(y) - 1]
    true_positives = np.cumsum(y_sorted)[last_of_group]
    precision = true_positives / (last_of_group + 1)
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Equal-width probability bins: rows, mean predicted probability and observed rate (empty bins left out)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            table.append(
                {
                    "bin": [b / bins, (b + 1) / bins],
                    "rows": int(mask.sum()),
                    "mean_predicted": float(p[mask].mean()),
                    "observed_rate": float(y[mask].mean()),
                }
            )
    return table


def operating_point(y: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Sensitivity, specificity and predictive values of a binary flag against the truth."""
    y = np.asarray(y, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    tp = int((y & flagged).sum())
    fp = int((~y & flagged).sum())
    fn = int((y & ~flagged).sum())
    tn = int((~y & ~flagged).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "flagged_fraction": ratio(tp + fp, len(y)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def bootstrap_ci(
    y: np.ndarray,
    score: np.ndarray,
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]],
    resamples: int,
    seed: int,
    *,
    progress: bool = False,
    desc: str = "bootstrap",
) -> dict[str, list[float]]:
    """Percentile 95 % intervals for each metric over ``resamples`` row resamples (same resamples for all)."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in tqdm(range(resamples), desc=desc, disable=not progress, leave=False):
        idx = rng.integers(0, len(y), len(y))
        yy, ss = y[idx], score[idx]
        if yy.all() or not yy.any():
            continue
        for name, fn in metrics.items():
            draws[name].append(fn(yy, ss))
    return {
        name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [float("nan")] * 2
        for name, v in draws.items()
    }


def _discrimination(
    y: np.ndarray, p: np.ndarray, resamples: int, seed: int, progress: bool, desc: str
) -> dict[str, Any]:
    ci = (
        bootstrap_ci(
            y, p, {"auroc": auroc, "auprc": average_precision}, resamples, seed, progress=progress, desc=desc
        )
        if resamples
        else {"auroc": None, "auprc": None}
    )
    return {
        "rows": len(y),
        "prevalence": float(np.mean(y)),
        "auroc": {"estimate": auroc(y, p), "ci95": ci["auroc"]},
        "auprc": {"estimate": average_precision(y, p), "ci95": ci["auprc"]},
        "brier": brier(y, p),
    }


def evaluate(
    p_abnormal: np.ndarray,
    p_deficient_given_abnormal: np.ndarray,
    b12_pg_ml: np.ndarray,
    thresholds: domain.RiskThresholds,
    *,
    resamples: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Everything the model card reports about one labelled split, from the calibrated stage outputs."""
    normal, borderline, p_deficient = domain.combine_arrays(p_abnormal, p_deficient_given_abnormal)
    b12 = np.asarray(b12_pg_ml, dtype=np.float64)
    deficient = b12 < DEFICIENT_BELOW
    abnormal = b12 < ABNORMAL_BELOW
    classes = domain.risk_classes(p_deficient, thresholds)
    labels = domain.labels(normal, borderline, p_deficient)

    out: dict[str, Any] = {
        "rows": len(b12),
        "bootstrap": {"resamples": resamples, "seed": seed, "interval": "percentile 95 %"},
    }
    out["deficient"] = {
        "definition": f"serum B12 < {DEFICIENT_BELOW:g} pg/mL",
        "score": "P(deficient)",
        **_discrimination(deficient, p_deficient, resamples, seed, progress, "bootstrap deficient"),
        "calibration": calibration_table(deficient, p_deficient),
        "at_intermediate": {
            "rule": "risk class ≥ 2",
            "threshold": thresholds.intermediate,
            **operating_point(deficient, classes >= 2),
        },
        "at_high": {
            "rule": "risk class 3",
            "threshold": thresholds.high,
            **operating_point(deficient, classes >= 3),
        },
    }
    out["abnormal"] = {
        "definition": f"serum B12 < {ABNORMAL_BELOW:g} pg/mL",
        "score": "P(abnormal)",
        **_discrimination(abnormal, p_abnormal, resamples, seed + 1, progress, "bootstrap abnormal"),
        "calibration": calibration_table(abnormal, p_abnormal),
        "at_intermediate": {"rule": "risk class ≥ 2", **operating_point(abnormal, classes >= 2)},
    }
    stage2 = {
        "definition": f"serum B12 < {DEFICIENT_BELOW:g} among B12 < {ABNORMAL_BELOW:g} pg/mL",
        "score": "P(deficient | abnormal)",
    }
    if abnormal.any() and not deficient[abnormal].all() and deficient[abnormal].any():
        stage2.update(
            _discrimination(
                deficient[abnormal],
                np.asarray(p_deficient_given_abnormal)[abnormal],
                resamples,
                seed + 2,
                progress,
                "bootstrap stage 2",
            )
        )
    out["deficient_given_abnormal"] = stage2
    out["risk_classes"] = {
        str(c): {
            "rows": int((classes == c).sum()),
            "fraction": float((classes == c).mean()),
            "deficient_rate": float(deficient[classes == c].mean()) if (classes == c).any() else None,
            "abnormal_rate": float(abnormal[classes == c].mean()) if (classes == c).any() else None,
        }
        for c in (1, 2, 3)
    }
    truth = np.where(deficient, "deficient", np.where(abnormal, "borderline", "normal"))
    predicted = np.array([str(label) for label in labels])
    out["labels"] = {
        "confusion": {
            t: {
                p: int(((truth == t) & (predicted == p)).sum()) for p in ("normal", "borderline", "deficient")
            }
            for t in ("normal", "borderline", "deficient")
        },
        "accuracy": float((truth == predicted).mean()),
    }
    return out
