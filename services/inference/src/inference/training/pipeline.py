"""Train, calibrate, choose thresholds, evaluate and write a versioned, hash-manifested model directory.

Splits (stratified by normal / borderline / deficient, seeded):
  fit (CatBoost)  ·  early stopping  ·  calibration (Platt fit + threshold choice)  ·  test (the card)
The test split is written into the model directory as ``holdout.csv`` and the card's metrics are computed
from that file through the same loaded-model code path that serves requests, so anyone can reproduce them.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from catboost import CatBoostClassifier, Pool
from tqdm import tqdm

from inference import domain
from inference.model import (
    CALIBRATION,
    CARD_JSON,
    CARD_MARKDOWN,
    FEATURES,
    HOLDOUT,
    STAGE1_MODEL,
    STAGE2_MODEL,
    THRESHOLDS,
    TRAINING,
    B12Model,
    ModelIdentity,
    PlattCalibration,
    _load_catboost,
    sigmoid,
    write_manifest,
)
from inference.training import card as card_module
from inference.training.data import (
    ABNORMAL_BELOW,
    B12_UNITS,
    DEFICIENT_BELOW,
    read_labelled_csv,
    write_labelled_csv,
)
from inference.training.metrics import evaluate
from shared.events.screening import FEATURE_ORDER, UNITS

MIN_STAGE_ROWS = 100


class TrainingError(Exception):
    """The data cannot produce a model (too few rows, a class missing, no signal at all)."""


@dataclass(frozen=True)
class TrainingConfig:
    version: str = "b12-cbc-v1"
    seed: int = 20240617
    iterations: int = 1500
    learning_rate: float = 0.04
    depth: int = 4
    l2_leaf_reg: float = 10.0
    early_stopping_rounds: int = 150
    thread_count: int = 1
    test_fraction: float = 0.2
    calibration_fraction: float = 0.2
    early_stopping_fraction: float = 0.15  # of what is left for fitting
    target_sensitivity: float = 0.90  # P(class ≥ 2 | deficient) on the calibration split
    high_specificity: float = 0.95  # P(class < 3 | not deficient) on the calibration split
    bootstrap_resamples: int = 1000
    plots: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1 or not 0 < self.calibration_fraction < 1:
            raise ValueError("split fractions must be in (0, 1)")
        if self.test_fraction + self.calibration_fraction >= 0.9:
            raise ValueError("test + calibration fractions leave too little to train on")
        if not 0 < self.target_sensitivity < 1 or not 0 < self.high_specificity < 1:
            raise ValueError("target sensitivity and specificity must be in (0, 1)")


@dataclass
class TrainingResult:
    directory: Path
    identity: ModelIdentity
    metrics: dict[str, Any]
    seconds: float


# -- splitting -------------------------------------------------------------------------------------------


def split_indices(b12_pg_ml: np.ndarray, config: TrainingConfig) -> dict[str, np.ndarray]:
    """Stratified, seeded split into fit / early_stopping / calibration / test row indices (each sorted)."""
    rng = np.random.default_rng(config.seed)
    category = (b12_pg_ml < ABNORMAL_BELOW).astype(int) + (b12_pg_ml < DEFICIENT_BELOW)
    parts: dict[str, list[np.ndarray]] = {"fit": [], "early_stopping": [], "calibration": [], "test": []}
    for c in (0, 1, 2):
        idx = rng.permutation(np.flatnonzero(category == c))
        n_test = round(len(idx) * config.test_fraction)
        n_cal = round(len(idx) * config.calibration_fraction)
        n_es = round((len(idx) - n_test - n_cal) * config.early_stopping_fraction)
        parts["test"].append(idx[:n_test])
        parts["calibration"].append(idx[n_test : n_test + n_cal])
        parts["early_stopping"].append(idx[n_test + n_cal : n_test + n_cal + n_es])
        parts["fit"].append(idx[n_test + n_cal + n_es :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


# -- fitting ---------------------------------------------------------------------------------------------


class _Progress:
    """CatBoost callback that advances a tqdm bar per boosting iteration."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def after_iteration(self, info: Any) -> bool:
        self.bar.update(1)
        return True


def fit_stage(
    x: np.ndarray,
    y: np.ndarray,
    x_es: np.ndarray,
    y_es: np.ndarray,
    config: TrainingConfig,
    name: str,
    progress: bool,
) -> CatBoostClassifier:
    for part, labels in (("fit", y), ("early-stopping", y_es)):
        if len(labels) < MIN_STAGE_ROWS or labels.all() or not labels.any():
            raise TrainingError(
                f"{name}: the {part} rows ({len(labels)}) need both classes and at least "
                f"{MIN_STAGE_ROWS} rows; provide more labelled data"
            )
    model = CatBoostClassifier(
        loss_function="Logloss",
        iterations=config.iterations,
        learning_rate=config.learning_rate,
        depth=config.depth,
        l2_leaf_reg=config.l2_leaf_reg,
        boosting_type="Plain",
        random_seed=config.seed,
        thread_count=config.thread_count,
        od_type="Iter",
        od_wait=config.early_stopping_rounds,
        use_best_model=True,
        allow_writing_files=False,
        verbose=False,
    )
    with tqdm(total=config.iterations, desc=name, disable=not progress, leave=False) as bar:
        model.fit(
            Pool(x, y.astype(int), feature_names=list(FEATURE_ORDER)),
            eval_set=Pool(x_es, y_es.astype(int), feature_names=list(FEATURE_ORDER)),
            callbacks=[_Progress(bar)],
        )
    return model


def fit_platt(margin: np.ndarray, y: np.ndarray, iterations: int = 100) -> tuple[PlattCalibration, bool]:
    """Maximum-likelihood ``σ(a·margin + b)`` by Newton's method; falls back to the base rate without signal.

    Returns the calibration and whether it is degenerate (no positive association on held-out data).
    """
    m = np.asarray(margin, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    design = np.column_stack([m, np.ones_like(m)])
    w = np.array([1.0, 0.0])
    for _ in range(iterations):
        z = design @ w
        p = sigmoid(z)
        gradient = design.T @ (p - t)
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w = w - step
        if np.max(np.abs(step)) < 1e-12:
            break
    if not np.all(np.isfinite(w)) or w[0] <= 1e-6:
        rate = float(np.clip(t.mean(), 1e-6, 1 - 1e-6))
        return PlattCalibration(slope=1e-6, intercept=math.log(rate / (1 - rate))), True
    return PlattCalibration(slope=float(w[0]), intercept=float(w[1])), False


def choose_thresholds(
    p_deficient: np.ndarray, deficient: np.ndarray, config: TrainingConfig
) -> tuple[domain.RiskThresholds, dict[str, Any]]:
    """The operating point, on the calibration split.

    intermediate: the largest P(deficient) cut-off that still flags ≥ ``target_sensitivity`` of the deficient
    (capped at 0.33 so a deficient label is never low risk); high: the smallest cut-off that leaves
    ≥ ``high_specificity`` of the non-deficient below it (floored at 0.5 so high risk is a deficient label).
    Both are rounded outward to 4 decimals (down for intermediate, up for high).
    """
    p = np.asarray(p_deficient, dtype=np.float64)
    positives = np.sort(p[deficient])
    negatives = np.sort(p[~deficient])
    if len(positives) == 0 or len(negatives) == 0:
        raise TrainingError("the calibration split needs deficient and non-deficient rows to set thresholds")
    k = math.floor((1.0 - config.target_sensitivity) * len(positives))
    raw_intermediate = float(positives[k])
    intermediate = math.floor(raw_intermediate * 1e4) / 1e4
    capped = intermediate > domain.MAX_INTERMEDIATE_THRESHOLD
    intermediate = max(min(intermediate, domain.MAX_INTERMEDIATE_THRESHOLD), 1e-4)
    j = min(math.ceil(config.high_specificity * len(negatives)) - 1, len(negatives) - 1)
    raw_high = float(np.nextafter(negatives[j], np.inf))
    high = math.ceil(raw_high * 1e4) / 1e4
    floored = high < domain.MIN_HIGH_THRESHOLD
    high = min(max(high, domain.MIN_HIGH_THRESHOLD, intermediate), 1.0)
    thresholds = domain.RiskThresholds(intermediate=intermediate, high=high)
    sensitivity = float(np.mean(positives >= intermediate))
    specificity = float(np.mean(negatives < high))
    return thresholds, {
        "selected_on": f"calibration split ({len(p)} rows)",
        "intermediate": {
            "goal": f"sensitivity for deficient (B12 < {DEFICIENT_BELOW:g}) at risk class ≥ 2 "
            f"≥ {config.target_sensitivity:.0%}",
            "unconstrained_cutoff": raw_intermediate,
            "capped_at_0_33": capped,
            "calibration_sensitivity": sensitivity,
        },
        "high": {
            "goal": f"specificity for deficient at risk class 3 ≥ {config.high_specificity:.0%}",
            "unconstrained_cutoff": raw_high,
            "floored_at_0_5": floored,
            "calibration_specificity": specificity,
        },
    }


def _make_reproducible(model: CatBoostClassifier, key: str) -> None:
    """Drop the wall-clock finish time and derive the model GUID from the inputs, so a seed gives same bytes."""
    metadata = model.get_metadata()
    if "train_finish_time" in metadata:
        del metadata["train_finish_time"]
    digest = hashlib.sha256(key.encode()).hexdigest()
    metadata["model_guid"] = "-".join(digest[i : i + 8] for i in range(0, 32, 8))


def cohort_sidecar(csv_path: Path, sha256: str) -> dict[str, Any] | None:
    """How a synthetic CSV was generated (``<csv>.json`` from ``generate-cohort``), if it matches the file."""
    sidecar = Path(str(csv_path) + ".json")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("csv_sha256") == sha256 else None


# -- the pipeline ----------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    import catboost
    import matplotlib
    import pydantic
    import sklearn

    return {
        "python": platform.python_version(),
        "catboost": catboost.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
        "pydantic": pydantic.__version__,
    }


def _dump(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(data, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )


def _prepare_directory(out: Path, force: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise TrainingError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not force:
                raise TrainingError(f"{out} is not empty; pass --force to replace the model in it")
            for child in out.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def train(
    csv_path: Path,
    out: Path,
    config: TrainingConfig = TrainingConfig(),
    *,
    force: bool = False,
    progress: bool = True,
    default_b12_unit: str | None = None,
) -> TrainingResult:
    """Train both stages from a labelled CSV and write the model directory ``out``."""
    started = time.perf_counter()
    steps = tqdm(total=6, desc="training", disable=not progress, unit="step")

    steps.set_postfix_str("reading data")
    data = read_labelled_csv(csv_path, default_b12_unit=default_b12_unit)
    if len(data.b12_pg_ml) == 0:
        raise TrainingError(f"{csv_path} has no valid labelled rows ({len(data.excluded)} excluded)")
    splits = split_indices(data.b12_pg_ml, config)
    x, b12 = data.features, data.b12_pg_ml
    abnormal, deficient = data.abnormal, data.deficient
    steps.update(1)

    steps.set_postfix_str("stage 1: B12 < 300")
    fit, es = splits["fit"], splits["early_stopping"]
    stage1 = fit_stage(x[fit], abnormal[fit], x[es], abnormal[es], config, "stage 1", progress)
    steps.update(1)

    steps.set_postfix_str("stage 2: B12 < 200 | < 300")
    fit2, es2 = fit[abnormal[fit]], es[abnormal[es]]
    stage2 = fit_stage(x[fit2], deficient[fit2], x[es2], deficient[es2], config, "stage 2", progress)
    steps.update(1)

    steps.set_postfix_str("calibrating")
    cal = splits["calibration"]
    cal_abn = cal[abnormal[cal]]
    margin1 = stage1.predict(x[cal], prediction_type="RawFormulaVal", thread_count=config.thread_count)
    margin2 = stage2.predict(x[cal_abn], prediction_type="RawFormulaVal", thread_count=config.thread_count)
    calibration1, degenerate1 = fit_platt(margin1, abnormal[cal])
    calibration2, degenerate2 = fit_platt(margin2, deficient[cal_abn])
    p1_cal = calibration1(margin1)
    p2_cal = calibration2(
        stage2.predict(x[cal], prediction_type="RawFormulaVal", thread_count=config.thread_count)
    )
    thresholds, threshold_notes = choose_thresholds(p1_cal * p2_cal, deficient[cal], config)
    steps.update(1)

    steps.set_postfix_str("writing artifacts")
    _prepare_directory(out, force)
    for stage, name in ((stage1, STAGE1_MODEL), (stage2, STAGE2_MODEL)):
        _make_reproducible(stage, f"{config.version}/{name}/{config.seed}/{data.sha256}")
        stage.save_model(str(out / name), format="cbm")
    _dump(
        out / CALIBRATION,
        {
            "stage1": calibration1.to_json()
            | {
                "target": f"B12 < {ABNORMAL_BELOW:g} pg/mL",
                "fitted_on_rows": len(cal),
                "degenerate": degenerate1,
            },
            "stage2": calibration2.to_json()
            | {
                "target": f"B12 < {DEFICIENT_BELOW:g} | < {ABNORMAL_BELOW:g} pg/mL",
                "fitted_on_rows": len(cal_abn),
                "degenerate": degenerate2,
            },
            "formula": "p = 1 / (1 + exp(-(slope * raw_catboost_log_odds + intercept)))",
        },
    )
    _dump(
        out / THRESHOLDS,
        {
            "intermediate": thresholds.intermediate,
            "high": thresholds.high,
            "score": "calibrated P(deficient) = P(abnormal) * P(deficient | abnormal)",
            "rule": "class 3 if P(deficient) >= high; class 2 if >= intermediate; else class 1",
            "label_rule": "the most probable of normal / borderline / deficient (ties to the more severe)",
            "operating_point": threshold_notes,
        },
    )
    _dump(
        out / FEATURES,
        {
            "feature_order": list(FEATURE_ORDER),
            "units": {name: UNITS[name][0] for name in FEATURE_ORDER if name in UNITS} | {"age": "years"},
            "sex_male": "1.0 for male, 0.0 for female",
            "source": "shared.events.screening.CompleteBloodCount.as_features()",
        },
    )
    test = data.subset(np.isin(np.arange(len(b12)), splits["test"]))
    write_labelled_csv(test, out / HOLDOUT)
    _dump(
        out / TRAINING,
        {
            "version": config.version,
            "config": {k: v for k, v in asdict(config).items() if k not in ("version", "plots")},
            "libraries": library_versions(),
            "data": {
                "file": Path(csv_path).name,
                "sha256": data.sha256,
                "rows_read": data.rows_read,
                "rows_excluded": len(data.excluded),
                "rows_used": len(b12),
                "excluded_examples": [f"line {line}: {reason}" for line, reason in data.excluded[:5]],
                "b12_units_accepted": {unit: f"× {factor:.6g} → pg/mL" for unit, factor in B12_UNITS.items()},
                "deficient_prevalence": float(deficient.mean()),
                "abnormal_prevalence": float(abnormal.mean()),
                "cohort": cohort_sidecar(csv_path, data.sha256),
            },
            "splits": {name: len(idx) for name, idx in splits.items()},
            "stages": {
                "stage1": {
                    "target": f"B12 < {ABNORMAL_BELOW:g} pg/mL",
                    "file": STAGE1_MODEL,
                    "best_iteration": int(stage1.get_best_iteration()),
                    "trees": int(stage1.tree_count_),
                },
                "stage2": {
                    "target": f"B12 < {DEFICIENT_BELOW:g} pg/mL among B12 < {ABNORMAL_BELOW:g}",
                    "file": STAGE2_MODEL,
                    "trained_on": "abnormal rows only",
                    "best_iteration": int(stage2.get_best_iteration()),
                    "trees": int(stage2.tree_count_),
                },
            },
        },
    )
    steps.update(1)

    steps.set_postfix_str("evaluating held-out split")
    # Score the held-out file as written, through the serving code path, so the card is reproducible.
    scorer = B12Model(
        version=config.version,
        identity=ModelIdentity(version=config.version, artifacts_sha256="0" * 64),
        stage1=_load_catboost((out / STAGE1_MODEL).read_bytes(), STAGE1_MODEL),
        stage2=_load_catboost((out / STAGE2_MODEL).read_bytes(), STAGE2_MODEL),
        calibration1=calibration1,
        calibration2=calibration2,
        thresholds=thresholds,
        thread_count=config.thread_count,
    )
    holdout = read_labelled_csv(out / HOLDOUT)
    p1_test, p2_test = scorer.predict_proba(holdout.features)
    metrics = evaluate(
        p1_test,
        p2_test,
        holdout.b12_pg_ml,
        thresholds,
        resamples=config.bootstrap_resamples,
        seed=config.seed,
        progress=progress,
    )
    training_info = json.loads((out / TRAINING).read_text(encoding="utf-8"))
    card = card_module.build_card(
        config,
        metrics,
        training_info,
        thresholds,
        threshold_notes,
        json.loads((out / CALIBRATION).read_text(encoding="utf-8")),
    )
    _dump(out / CARD_JSON, card)
    card = json.loads((out / CARD_JSON).read_text(encoding="utf-8"))  # render exactly what was written
    if config.plots:
        card_module.write_plots(out, p1_test, p2_test, holdout.b12_pg_ml, metrics)
    (out / CARD_MARKDOWN).write_text(card_module.render_markdown(card, plots=config.plots), encoding="utf-8")
    manifest = write_manifest(out, config.version)
    steps.update(1)
    steps.close()

    loaded = B12Model.load(out, thread_count=config.thread_count)  # the directory must load as written
    check1, check2 = loaded.predict_proba(holdout.features)
    if not (np.array_equal(check1, p1_test) and np.array_equal(check2, p2_test)):
        raise TrainingError("the written model does not reproduce the held-out predictions")
    assert loaded.identity.artifacts_sha256 == manifest["artifacts_sha256"]
    return TrainingResult(
        directory=out, identity=loaded.identity, metrics=metrics, seconds=time.perf_counter() - started
    )


__all__ = [
    "TrainingConfig",
    "TrainingError",
    "TrainingResult",
    "choose_thresholds",
    "fit_platt",
    "split_indices",
    "train",
]
