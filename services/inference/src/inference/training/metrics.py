"""Discrimination and calibration metrics in plain numpy, so the card's numbers can be recomputed anywhere.

Calibration is judged as a rare outcome needs: intercept (calibration-in-the-large) and slope of the
logistic recalibration, Brier skill against the prevalence-only forecast, a reliability table by tenths of
predicted risk, and decision-curve net benefit. ``auroc`` is the Mann–Whitney statistic with average ranks
for ties; ``average_precision`` is the step-wise area under the precision–recall curve (the definition scikit-learn uses; the tests check both agree).
Confidence intervals are percentile bootstraps over rows with a fixed seed, so they are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

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


def brier_skill(y: np.ndarray, p: np.ndarray) -> float:
    """1 − Brier / Brier of the prevalence-only forecast (which predicts the observed rate for everyone)."""
    rate = float(np.mean(y))
    reference = rate * (1.0 - rate)
    return 1.0 - brier(y, p) / reference if reference > 0 else float("nan")


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(q / (1.0 - q))


def _newton_logistic(design: np.ndarray, y: np.ndarray, offset: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Maximum-likelihood coefficients of ``y ~ σ(design·w + offset)`` (small designs: one or two columns)."""
    w = np.zeros(design.shape[1])
    for _ in range(iterations):
        z = design @ w + offset
        q = 1.0 / (1.0 + np.exp(-z))
        gradient = design.T @ (q - y)
        hessian = design.T @ (design * (q * (1 - q))[:, None]) + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w = w - step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def calibration_intercept(y: np.ndarray, p: np.ndarray) -> float:
    """Calibration-in-the-large: the log-odds offset that makes the mean prediction match (0 is ideal)."""
    y = np.asarray(y, dtype=np.float64)
    return float(_newton_logistic(np.ones((len(y), 1)), y, _logit(p))[0])


def calibration_slope(y: np.ndarray, p: np.ndarray) -> float:
    """Slope of the logistic recalibration ``y ~ a + b·logit(p)`` (1 is ideal; < 1 means too extreme)."""
    y = np.asarray(y, dtype=np.float64)
    z = _logit(p)
    return float(_newton_logistic(np.column_stack([np.ones_like(z), z]), y, np.zeros_like(z))[1])


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Rows grouped by tenths of predicted risk (quantiles, because a rare outcome's probabilities crowd
    near zero): rows, predicted range, mean predicted probability and observed rate per group."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="mergesort")
    table = []
    for part in np.array_split(order, bins):
        if len(part):
            table.append({
                "rows": int(len(part)),
                "predicted_range": [float(p[part].min()), float(p[part].max())],
                "mean_predicted": float(p[part].mean()),
                "observed_rate": float(y[part].mean()),
            })
    return table


#: Threshold probabilities of the decision curve: 1 % to 20 %.
DECISION_THRESHOLDS = tuple(round(0.01 * k, 2) for k in range(1, 21))


def net_benefit(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    """Net benefit of testing those with ``p ≥ threshold``: true positives minus false positives weighted by
    the odds of the threshold, per person screened (Vickers & Elkin's decision-curve analysis)."""
    y = np.asarray(y, dtype=bool)
    flagged = np.asarray(p) >= threshold
    n = len(y)
    return float(((y & flagged).sum() - (~y & flagged).sum() * threshold / (1.0 - threshold)) / n)


def decision_curve(y: np.ndarray, p: np.ndarray,
                   thresholds: tuple[float, ...] = DECISION_THRESHOLDS) -> list[dict[str, float]]:
    """Net benefit of the model, of testing everyone and of testing no one (0) at each threshold."""
    y = np.asarray(y, dtype=bool)
    rate = float(y.mean())
    return [{
        "threshold": t,
        "model": net_benefit(y, p, t),
        "test_everyone": rate - (1.0 - rate) * t / (1.0 - t),
        "test_no_one": 0.0,
        "flagged_fraction": float(np.mean(np.asarray(p) >= t)),
    } for t in thresholds]


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


def _interval(estimate: float, ci: list[float] | None) -> dict[str, Any]:
    return {"estimate": estimate, "ci95": ci}


def outcome_report(y: np.ndarray, p: np.ndarray, *, resamples: int, seed: int,
                   progress: bool = False, desc: str = "bootstrap") -> dict[str, Any]:
    """Discrimination, calibration, overall accuracy and the decision curve of one score for one outcome."""
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=np.float64)
    out: dict[str, Any] = {"rows": int(len(y)), "events": int(y.sum()),
                           "prevalence": float(y.mean()) if len(y) else float("nan"),
                           "mean_predicted": float(p.mean()) if len(y) else float("nan")}
    if len(y) == 0 or y.all() or not y.any():
        return out | {"note": "both outcomes are needed for these metrics"}
    functions = {"auroc": auroc, "auprc": average_precision, "calibration_intercept": calibration_intercept,
                 "calibration_slope": calibration_slope, "brier_skill": brier_skill}
    ci = bootstrap_ci(y, p, functions, resamples, seed, progress=progress, desc=desc) if resamples else {}
    out |= {name: _interval(fn(y, p), ci.get(name)) for name, fn in functions.items()}
    out["brier"] = brier(y, p)
    out["mean_predicted_relative_error"] = out["mean_predicted"] / out["prevalence"] - 1.0
    out["reliability"] = reliability_table(y, p)
    out["decision_curve"] = decision_curve(y, p)
    return out


def class_report(y: np.ndarray, classes: np.ndarray, *, resamples: int, seed: int) -> dict[str, Any]:
    """What each risk class and each "class ≥ k" rule does for one outcome, with bootstrap 95 % intervals:
    sensitivity, specificity, PPV, NPV and share flagged of the rules; the likelihood ratio and observed rate
    of each class."""
    y = np.asarray(y, dtype=bool)
    classes = np.asarray(classes)
    if len(y) == 0 or y.all() or not y.any():
        return {"note": "both outcomes are needed for these figures"}

    def figures(yy: np.ndarray, cc: np.ndarray) -> dict[str, float | None]:
        row: dict[str, float | None] = {}
        positives, negatives = yy.sum(), (~yy).sum()
        for k in (2, 3):
            point = operating_point(yy, cc >= k)
            for name in ("sensitivity", "specificity", "ppv", "npv", "flagged_fraction"):
                row[f"ge{k}.{name}"] = point[name]
        for k in (1, 2, 3):
            in_class = cc == k
            share_pos = in_class[yy].sum() / positives if positives else None
            share_neg = in_class[~yy].sum() / negatives if negatives else None
            row[f"class{k}.likelihood_ratio"] = (share_pos / share_neg
                                                 if share_pos is not None and share_neg else None)
            row[f"class{k}.observed_rate"] = float(yy[in_class].mean()) if in_class.any() else None
            row[f"class{k}.fraction"] = float(in_class.mean())
        return row

    estimate = figures(y, classes)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in estimate}
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        for name, value in figures(y[idx], classes[idx]).items():
            if value is not None and math.isfinite(value):
                draws[name].append(value)
    report: dict[str, Any] = {}
    for name, value in estimate.items():
        group, metric = name.split(".")
        values = draws[name]
        ci = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None
        report.setdefault(group, {})[metric] = _interval(value, ci)
    return report
