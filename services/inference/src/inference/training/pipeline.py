"""Train and validate the two-stage screen, then write a versioned, hash-manifested model directory.

1. Read the cohort (``data.read_cohort``): NHANES or a lab's labelled CSV, each row through the contract.
2. Leave one group out (NHANES: one survey cycle) for each candidate family and the single-marker
   baselines, on the same folds (``validation``).
3. Ship the family with the higher pooled out-of-sample AUROC for B12 < 200 pg/mL; refit it on every row
   (CatBoost with the median number of trees early stopping chose in the folds).
4. Calibrate each stage by Platt scaling of the out-of-sample margins (cross-fitted calibration), so the
   shipped probabilities are calibrated at the training population's prevalence.
5. Choose the risk-class thresholds from the decision curve of those calibrated out-of-sample
   probabilities, and measure each class's sensitivity, specificity, predictive values, share flagged and
   likelihood ratio with bootstrap intervals.
6. Write the artefacts, the card generated from this run, its plots and the manifest; reload the directory
   and check it reproduces the refitted model's predictions.

The directory holds no row of the data: only models, aggregate figures, plots and hashes.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from inference import domain
from inference.model import (
    CALIBRATION,
    CARD_JSON,
    CARD_MARKDOWN,
    FEATURES,
    STAGES,
    THRESHOLDS,
    TRAINING,
    B12Model,
    CatBoostStage,
    ModelIdentity,
    PlattCalibration,
    ScreenPolicy,
    sigmoid,
    stage_file,
    write_manifest,
)
from inference.training import card as card_module
from inference.training import validation
from inference.training.data import (
    ABNORMAL_BELOW,
    DEFICIENT_BELOW,
    MMA_RAISED_ABOVE,
    Cohort,
    read_cohort,
)
from inference.training.metrics import decision_curve, outcome_report
from inference.training.validation import FAMILIES, SINGLE_MARKERS, FitSettings, TrainingError
from shared.events.screening import FEATURE_ORDER, UNITS


@dataclass(frozen=True)
class TrainingConfig:
    version: str = "b12-cbc-v2"
    fit: FitSettings = field(default_factory=FitSettings)
    families: tuple[str, ...] = FAMILIES
    #: resamples of the shipped model's pooled intervals; comparisons and subgroups use ``resamples_other``
    bootstrap_resamples: int = 1000
    resamples_other: int = 200
    #: the smallest chance of deficiency worth a B12 test, and the most adults class 3 may flag
    #: (``validation.choose_thresholds``; docs/model.md, "The operating point")
    lowest_test_threshold: float = 0.02
    high_flagged_at_most: float = 0.02
    plots: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if not self.families or unknown:
            raise ValueError(f"families must be among {', '.join(FAMILIES)}")
        if not 0 < self.high_flagged_at_most < 1 or not 0 < self.lowest_test_threshold < 0.2:
            raise ValueError("high_flagged_at_most must be in (0, 1) and lowest_test_threshold in (0, 0.2)")


@dataclass
class TrainingResult:
    directory: Path
    identity: ModelIdentity
    card: dict[str, Any]
    seconds: float


def fit_platt(margin: np.ndarray, y: np.ndarray, iterations: int = 100) -> tuple[PlattCalibration, bool]:
    """Maximum-likelihood ``σ(a·margin + b)`` by Newton's method; falls back to the base rate without signal.

    Returns the calibration and whether it is degenerate (no positive association out of sample).
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


def class_likelihood_ratios(deficient: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """P(class | deficient) / P(class | not deficient) per class; a class that no deficient (or no other)
    adult fell into gets Haldane's +0.5 correction, so every ratio is positive and finite."""
    y = np.asarray(deficient, dtype=bool)
    ratios = {}
    for k in (1, 2, 3):
        pos, neg = int(((classes == k) & y).sum()), int(((classes == k) & ~y).sum())
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if min(pos, neg) == 0:
            ratios[str(k)] = ((pos + 0.5) / (n_pos + 1)) / ((neg + 0.5) / (n_neg + 1))
        else:
            ratios[str(k)] = (pos / n_pos) / (neg / n_neg)
    return ratios


def _make_reproducible(stage: CatBoostStage, key: str) -> None:
    """Drop the wall-clock finish time and derive the model GUID from the inputs, so a seed gives same bytes."""
    metadata = stage.model.get_metadata()
    if "train_finish_time" in metadata:
        del metadata["train_finish_time"]
    digest = hashlib.sha256(key.encode()).hexdigest()
    metadata["model_guid"] = "-".join(digest[i : i + 8] for i in range(0, 32, 8))


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


def describe_data(cohort: Cohort) -> str:
    """One line on what the model learnt from, carried by every assessment (``ModelIdentity.data_source``)."""
    groups = sorted(set(cohort.group))
    if cohort.source == "nhanes":
        return (f"NHANES {groups[0][:4]}–{groups[-1][-4:]} ({len(groups)} survey cycles, {len(cohort)} US adults"
                f"; {cohort.file} sha256 {cohort.sha256[:12]})")
    return f"{cohort.file} ({len(cohort)} adults, sha256 {cohort.sha256[:12]}; {len(groups)} validation groups)"


def _nan_free(value: Any) -> Any:
    """JSON has no NaN: undefined figures (e.g. an AUROC without events) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_free(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_free(v) for v in value]
    return value


def train(data_path: Path, out: Path, config: TrainingConfig = TrainingConfig(), *, force: bool = False,
          progress: bool = True, default_b12_unit: str | None = None) -> TrainingResult:
    """Validate, train and write the model directory ``out`` from the labelled file ``data_path``."""
    started = time.perf_counter()
    settings = config.fit
    steps = tqdm(total=6, desc="training", disable=not progress, unit="step")

    steps.set_postfix_str("reading data")
    cohort = read_cohort(data_path, default_b12_unit=default_b12_unit, seed=settings.seed)
    if len(cohort) == 0:
        raise TrainingError(f"{data_path} has no usable rows ({sum(cohort.excluded.values())} excluded)")
    if len(set(cohort.group)) < 2:
        raise TrainingError("validation needs at least two groups (cycles, sites or folds)")
    steps.update(1)

    steps.set_postfix_str("leave one group out")
    oos = {family: validation.leave_one_group_out(cohort, family, settings, progress) for family in config.families}
    candidates = {family: validation.outcomes(cohort, *o.probabilities(), resamples=config.resamples_other,
                                              seed=settings.seed) for family, o in oos.items()}
    baselines = {marker: outcome_report(cohort.deficient,
                                        validation.single_marker_out_of_sample(cohort, marker, settings),
                                        resamples=config.resamples_other, seed=settings.seed)
                 for marker in SINGLE_MARKERS}
    shipped = max(config.families, key=lambda f: candidates[f]["deficient"].get("auroc", {}).get("estimate", 0.0))
    steps.update(1)

    steps.set_postfix_str(f"refitting {shipped} on every row")
    trees = None
    if shipped == "catboost":
        trees = {stage: int(np.median([fold[stage] for fold in oos[shipped].iterations]))
                 for stage in ("stage1", "stage2")}
    final = validation.fit_two_stage(shipped, cohort.features, cohort.abnormal, cohort.deficient, settings,
                                     iterations=trees)
    steps.update(1)

    steps.set_postfix_str("calibrating and choosing thresholds")
    o = oos[shipped]
    abnormal = cohort.abnormal
    calibration1, degenerate1 = fit_platt(o.margin1, abnormal)
    calibration2, degenerate2 = fit_platt(o.margin2[abnormal], cohort.deficient[abnormal])
    p1_oos, p2_oos = o.probabilities()
    p_deficient_calibrated = calibration1(o.margin1) * calibration2(o.margin2)
    decision = decision_curve(cohort.deficient, p_deficient_calibrated, validation.CHOICE_GRID)
    thresholds, threshold_notes = validation.choose_thresholds(decision, config.lowest_test_threshold,
                                                               config.high_flagged_at_most)
    classes_oos = domain.risk_classes(p_deficient_calibrated, thresholds)
    reference = domain.Prevalence(deficient=float(cohort.deficient.mean()), abnormal=float(abnormal.mean()))
    ratios = class_likelihood_ratios(cohort.deficient, classes_oos)
    steps.update(1)

    steps.set_postfix_str("measuring the shipped model")
    report = {
        "validation": f"leave one {cohort.group_kind} out ({len(set(cohort.group))} groups)",
        "pooled": validation.outcomes(cohort, p1_oos, p2_oos, resamples=config.bootstrap_resamples,
                                      seed=settings.seed, progress=progress),
        "per_group": validation.per_group(cohort, p1_oos * p2_oos, resamples=config.resamples_other,
                                          seed=settings.seed),
        "subgroups": validation.subgroup_table(cohort, p1_oos * p2_oos, resamples=config.resamples_other,
                                               seed=settings.seed),
        "candidates": {family: {key: {k: r.get(k) for k in ("auroc", "auprc", "calibration_slope",
                                                              "calibration_intercept", "brier_skill")}
                                      for key, r in reports.items()}
                       for family, reports in candidates.items()},
        "baselines": {marker: {k: r.get(k) for k in ("auroc", "auprc", "calibration_slope", "brier_skill")}
                      for marker, r in baselines.items()},
        "calibrated_out_of_sample": outcome_report(cohort.deficient, p_deficient_calibrated, resamples=0, seed=0),
        "classes": validation.operating_characteristics(cohort, p_deficient_calibrated, thresholds,
                                                        resamples=config.bootstrap_resamples, seed=settings.seed),
    }
    steps.update(1)

    steps.set_postfix_str("writing artifacts")
    _prepare_directory(out, force)
    stages_doc = {}
    for key, stage in (("stage1", final.stage1), ("stage2", final.stage2)):
        if isinstance(stage, CatBoostStage):
            _make_reproducible(stage, f"{config.version}/{key}/{settings.seed}/{cohort.sha256}")
        stage.write(out / stage_file(key, stage))
        stages_doc[key] = {"family": stage.family, "file": stage_file(key, stage)}
    stages_doc["stage1"]["target"] = f"B12 < {ABNORMAL_BELOW:g} pg/mL"
    stages_doc["stage2"]["target"] = f"B12 < {DEFICIENT_BELOW:g} among B12 < {ABNORMAL_BELOW:g} pg/mL"
    _dump(out / STAGES, stages_doc)
    calibration_doc = {
        "stage1": calibration1.to_json() | {"fitted_on_rows": len(cohort), "degenerate": degenerate1},
        "stage2": calibration2.to_json() | {"fitted_on_rows": int(abnormal.sum()), "degenerate": degenerate2},
        "fitted_on": "out-of-sample margins (each row scored by the model fitted without its group)",
        "formula": "p = 1 / (1 + exp(-(slope * raw_log_odds + intercept + prior_shift)))",
    }
    _dump(out / CALIBRATION, calibration_doc)
    _dump(out / THRESHOLDS, {
        "intermediate": thresholds.intermediate,
        "high": thresholds.high,
        "score": "calibrated P(deficient) = P(abnormal) * P(deficient | abnormal)",
        "rule": "class 3 if P(deficient) >= high; class 2 if >= intermediate; else class 1; "
                "a B12 test is advised at class >= 2",
        "label_rule": "the most probable of normal / borderline / deficient (ties to the more severe)",
        "reference_prevalence": asdict(reference),
        "class_likelihood_ratios": ratios,
        "operating_point": threshold_notes,
    })
    _dump(out / FEATURES, {
        "feature_order": list(FEATURE_ORDER),
        "units": {name: UNITS[name][0] for name in FEATURE_ORDER if name in UNITS} | {"age": "years"},
        "sex_male": "1.0 for male, 0.0 for female",
        "source": "shared.events.screening.CompleteBloodCount.as_features()",
    })
    training_doc = {
        "version": config.version,
        "config": {"fit": asdict(settings), "families": list(config.families),
                   "bootstrap_resamples": config.bootstrap_resamples, "resamples_other": config.resamples_other,
                   "lowest_test_threshold": config.lowest_test_threshold,
                   "high_flagged_at_most": config.high_flagged_at_most},
        "libraries": library_versions(),
        "data": {
            "description": describe_data(cohort),
            "source": cohort.source,
            "file": cohort.file,
            "sha256": cohort.sha256,
            "rows_read": cohort.rows_read,
            "rows_excluded": sum(cohort.excluded.values()),
            "excluded_by_reason": dict(sorted(cohort.excluded.items(), key=lambda kv: (-kv[1], kv[0]))),
            "rows_used": len(cohort),
            "groups": {g: int((cohort.group == g).sum()) for g in sorted(set(cohort.group))},
            "group_kind": cohort.group_kind,
            "outcomes": {
                "deficient": f"serum B12 < {DEFICIENT_BELOW:g} pg/mL"
                             + (" (Roche-equivalent scale)" if cohort.source == "nhanes" else ""),
                "abnormal": f"serum B12 < {ABNORMAL_BELOW:g} pg/mL",
                "metabolically_confirmed": f"B12 < {ABNORMAL_BELOW:g} pg/mL and MMA > {MMA_RAISED_ABOVE} µmol/L "
                                           "(rows with MMA measured)",
            },
            "deficient_prevalence": reference.deficient,
            "abnormal_prevalence": reference.abnormal,
            "mma_measured_rows": int(cohort.mma_measured.sum()),
            "metabolically_confirmed_rows": int(cohort.metabolically_confirmed[cohort.mma_measured].sum()),
        },
        "shipped_family": shipped,
        "final_fit": {"rows": len(cohort), "trees": trees,
                      "fold_trees": oos[shipped].iterations if shipped == "catboost" else None},
    }
    _dump(out / TRAINING, _nan_free(training_doc))
    card = _nan_free(card_module.build_card(config, report, training_doc, thresholds, threshold_notes,
                                            calibration_doc, ratios))
    _dump(out / CARD_JSON, card)
    card = json.loads((out / CARD_JSON).read_text(encoding="utf-8"))  # render exactly what was written
    if config.plots:
        card_module.write_plots(out, card, cohort.deficient, p1_oos * p2_oos, p_deficient_calibrated)
    (out / CARD_MARKDOWN).write_text(card_module.render_markdown(card, plots=config.plots), encoding="utf-8")
    manifest = write_manifest(out, config.version)
    steps.update(1)
    steps.close()

    loaded = B12Model.load(out, thread_count=settings.thread_count)  # the directory must load as written
    expected = B12Model(version=config.version, identity=loaded.identity, stage1=final.stage1,
                        stage2=final.stage2, calibration1=calibration1, calibration2=calibration2,
                        policy=ScreenPolicy(thresholds, reference, {int(k): v for k, v in ratios.items()},
                                            describe_data(cohort)), thread_count=settings.thread_count)
    sample = cohort.features[:: max(1, len(cohort) // 500)]
    if not all(np.array_equal(a, b) for a, b in zip(loaded.predict_proba(sample), expected.predict_proba(sample),
                                                     strict=True)):
        raise TrainingError("the written model does not reproduce the refitted model's predictions")
    assert loaded.identity.artifacts_sha256 == manifest["artifacts_sha256"]
    return TrainingResult(directory=out, identity=loaded.identity, card=card, seconds=time.perf_counter() - started)


__all__ = ["TrainingConfig", "TrainingError", "TrainingResult", "class_likelihood_ratios", "fit_platt", "train"]
