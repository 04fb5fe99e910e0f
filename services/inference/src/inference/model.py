"""The shipped two-stage B12 model: load a verified model directory and assess batches of CBCs.

Stage 1 estimates P(abnormal) = P(serum B12 < 300 pg/mL); stage 2 estimates P(deficient | abnormal) =
P(B12 < 200 | B12 < 300). Each stage is a CatBoost classifier or a logistic regression (whichever validated
better, ``stages.json``) whose raw log-odds are Platt-calibrated (``p = σ(a·margin + b)``, fitted on
out-of-sample predictions). A declared prevalence moves each stage's calibrated log-odds by a constant (Bayes
on the odds, ``domain.stage_log_odds_shifts``). Both steps are affine in log-odds, so a feature's SHAP value
scaled by ``a`` is exactly its contribution to the *calibrated* log-odds; ``top_contributions`` report the sum
of those contributions over both stages, i.e. to logit P(abnormal) + logit P(deficient | abnormal), so a
positive value always pushes towards deficiency.

A model directory holds ``manifest.json`` (sha256 of every other file) and the artifacts it lists. Nothing
is unpickled: CatBoost stages are ``.cbm`` files, logistic stages and everything else JSON, Markdown or PNG.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from inference import domain

if TYPE_CHECKING:
    from catboost import CatBoostClassifier
from shared.events.screening import (
    FEATURE_ORDER,
    RANGES,
    Assessment,
    Contribution,
    DerivedIndices,
    Finding,
    Label,
    ModelIdentity,
    PrevalenceBasis,
    Probabilities,
    RiskClass,
    ScreeningAdvice,
)
from shared.memory import gc_paused

MANIFEST = "manifest.json"
STAGES = "stages.json"
STAGE_FILES = {"stage1": "stage1_abnormal", "stage2": "stage2_deficient"}  # + ".cbm" or ".json"
CALIBRATION = "calibration.json"
THRESHOLDS = "thresholds.json"
FEATURES = "features.json"
TRAINING = "training.json"
CARD_JSON = "card.json"
CARD_MARKDOWN = "card.md"
#: Artifacts without which a directory is not a model (besides the two stage files ``stages.json`` names).
REQUIRED_ARTIFACTS = (STAGES, CALIBRATION, THRESHOLDS, FEATURES, TRAINING, CARD_JSON)
MANIFEST_FORMAT = 1
#: How many features ``Assessment.top_contributions`` lists, largest absolute contribution first.
TOP_CONTRIBUTIONS = 5

#: From this many rows on, ``assess`` builds its results from arrays; below, row by row is faster (the two
#: cross between 8 and 16 rows: 0.58 vs 0.53 ms for 8, 0.68 vs 0.80 ms for 16, measured under load).
BULK_ROWS = 16

#: Batches up to this size compute SHAP values without precalculation (faster for one or two rows).
SMALL_BATCH = 2

#: The directory shipped in this package's source tree.
DEFAULT_MODEL_DIR = pathlib.Path(__file__).resolve().parents[2] / "models" / "b12-cbc-v2"


class ModelArtifactError(Exception):
    """A model directory is missing, incomplete, corrupt or does not match its manifest."""


# -- hashing and manifest --------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifacts_digest(hashes: Mapping[str, str]) -> str:
    """``ModelIdentity.artifacts_sha256``: sha256 of the artifacts' hex digests, sorted, one per line."""
    return sha256_bytes("\n".join(sorted(hashes.values())).encode("ascii"))


def write_manifest(directory: pathlib.Path, version: str) -> dict[str, Any]:
    """Hash every file of ``directory`` (except the manifest) into ``manifest.json``."""
    artifacts = {
        path.name: sha256_file(path)
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "artifacts": artifacts,
        "artifacts_sha256": artifacts_digest(artifacts),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def read_verified(directory: pathlib.Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the bytes of every artifact, each checked against its sha256.

    Files that the manifest does not list are refused too: a model directory is exactly what was trained.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ModelArtifactError(f"model directory {directory} does not exist")
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelArtifactError(f"{directory} has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise ModelArtifactError(f"{directory / MANIFEST} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelArtifactError(f"{directory / MANIFEST} is not a JSON object")
    artifacts = manifest.get("artifacts")
    if (
        manifest.get("format") != MANIFEST_FORMAT
        or not isinstance(manifest.get("version"), str)
        or not isinstance(artifacts, dict)
        or not all(isinstance(v, str) for v in artifacts.values())
    ):
        raise ModelArtifactError(f"{directory / MANIFEST} is not a format-{MANIFEST_FORMAT} model manifest")
    missing = [name for name in REQUIRED_ARTIFACTS if name not in artifacts]
    if missing:
        raise ModelArtifactError(f"manifest of {directory} lacks required artifacts: {', '.join(missing)}")
    unlisted = sorted(p.name for p in directory.iterdir() if p.name != MANIFEST and p.name not in artifacts)
    if unlisted:
        raise ModelArtifactError(f"{directory} holds files its manifest does not list: {', '.join(unlisted)}")
    contents: dict[str, bytes] = {}
    for name, expected in sorted(artifacts.items()):
        path = directory / name
        if pathlib.PurePath(name).name != name:
            raise ModelArtifactError(f"manifest entry {name!r} is not a plain file name")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelArtifactError(
                f"artifact {name} listed in the manifest is missing from {directory}"
            ) from None
        except OSError as exc:
            raise ModelArtifactError(f"artifact {name} is unreadable: {exc}") from exc
        actual = sha256_bytes(data)
        if actual != expected:
            raise ModelArtifactError(f"artifact {name} has sha256 {actual}, the manifest says {expected}")
        contents[name] = data
    if manifest.get("artifacts_sha256") not in (None, artifacts_digest(artifacts)):
        raise ModelArtifactError(
            f"{directory / MANIFEST} has an artifacts_sha256 that does not match its entries"
        )
    return manifest, contents


# -- calibration -----------------------------------------------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    e = np.exp(z[~positive])
    out[~positive] = e / (1.0 + e)
    return out


@dataclass(frozen=True)
class PlattCalibration:
    """``p = σ(slope · margin + intercept)`` on a stage's raw CatBoost log-odds."""

    slope: float
    intercept: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)) or self.slope <= 0:
            raise ValueError("Platt calibration needs a finite positive slope and a finite intercept")

    def logit(self, margin: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(margin, dtype=np.float64) + self.intercept

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        return sigmoid(self.logit(margin))

    def to_json(self) -> dict[str, Any]:
        return {"method": "platt", "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlattCalibration:
        if data.get("method") != "platt":
            raise ValueError(f"unsupported calibration method {data.get('method')!r}")
        return cls(slope=float(data["slope"]), intercept=float(data["intercept"]))


def thresholds_from_json(data: Mapping[str, Any]) -> domain.RiskThresholds:
    return domain.RiskThresholds(intermediate=float(data["intermediate"]), high=float(data["high"]))


# -- stages ----------------------------------------------------------------------------------------------


class CatBoostStage:
    """A CatBoost classifier: raw log-odds and exact (tree) SHAP values."""

    family = "catboost"
    suffix = ".cbm"

    def __init__(self, model: CatBoostClassifier) -> None:
        self.model = model

    def margins(self, x: np.ndarray, thread_count: int) -> np.ndarray:
        return np.asarray(self.model.predict(x, prediction_type="RawFormulaVal", thread_count=thread_count),
                          dtype=np.float64)

    def shap(self, x: np.ndarray, thread_count: int) -> np.ndarray:
        from catboost import Pool

        pool = Pool(x, feature_names=list(FEATURE_ORDER))
        # Exact SHAP either way; precalculating per-leaf values costs ~3 ms a call and pays off only for batches.
        mode = "NoPreCalc" if len(x) <= SMALL_BATCH else "Auto"
        values = self.model.get_feature_importance(pool, type="ShapValues", thread_count=thread_count,
                                                   shap_mode=mode)
        return values[:, :-1]  # the last column is the expected value (bias), not a feature

    def write(self, path: pathlib.Path) -> None:
        self.model.save_model(str(path), format="cbm")

    @classmethod
    def from_bytes(cls, blob: bytes, name: str) -> CatBoostStage:
        return cls(_load_catboost(blob, name))


@dataclass(frozen=True)
class LogisticStage:
    """A logistic regression on standardised features: ``margin = Σ coef·(x − mean)/scale + intercept``.

    Its exact SHAP value (features taken as independent, the training mean as baseline) is the term of each
    feature, ``coef·(x − mean)/scale``, so explanations stay additive in log-odds as CatBoost's do.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    family = "logistic"
    suffix = ".json"

    def __post_init__(self) -> None:
        sizes = {len(self.mean), len(self.scale), len(self.coef)}
        if sizes != {len(FEATURE_ORDER)}:
            raise ValueError(f"a logistic stage needs {len(FEATURE_ORDER)} means, scales and coefficients")
        numbers = (*self.mean, *self.scale, *self.coef, self.intercept)
        if not all(math.isfinite(v) for v in numbers) or min(self.scale) <= 0:
            raise ValueError("a logistic stage needs finite numbers and positive scales")

    def _terms(self, x: np.ndarray) -> np.ndarray:
        return (x - np.asarray(self.mean)) / np.asarray(self.scale) * np.asarray(self.coef)

    def margins(self, x: np.ndarray, thread_count: int) -> np.ndarray:
        return self._terms(x).sum(axis=1) + self.intercept

    def shap(self, x: np.ndarray, thread_count: int) -> np.ndarray:
        return self._terms(x)

    def write(self, path: pathlib.Path) -> None:
        document = {"family": self.family, "features": list(FEATURE_ORDER), "mean": list(self.mean),
                    "scale": list(self.scale), "coef": list(self.coef), "intercept": self.intercept,
                    "formula": "margin = sum(coef * (x - mean) / scale) + intercept"}
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_bytes(cls, blob: bytes, name: str) -> LogisticStage:
        try:
            data = json.loads(blob)
            if data.get("features") != list(FEATURE_ORDER):
                raise ValueError(f"features {data.get('features')} differ from {list(FEATURE_ORDER)}")
            return cls(mean=tuple(map(float, data["mean"])), scale=tuple(map(float, data["scale"])),
                       coef=tuple(map(float, data["coef"])), intercept=float(data["intercept"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"{name} is not a logistic stage: {exc}") from exc


Stage = CatBoostStage | LogisticStage
STAGE_FAMILIES: dict[str, type[CatBoostStage] | type[LogisticStage]] = {
    "catboost": CatBoostStage, "logistic": LogisticStage}


def stage_file(stage_key: str, stage: Stage) -> str:
    return STAGE_FILES[stage_key] + stage.suffix


# -- what a lab acts on ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScreenPolicy:
    """Thresholds and what was measured about them out of sample: the population the probabilities are
    calibrated for, and each risk class's likelihood ratio for deficiency."""

    thresholds: domain.RiskThresholds
    reference: domain.Prevalence
    class_likelihood_ratios: Mapping[int, float]
    data_source: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any], data_source: str) -> ScreenPolicy:
        reference = data["reference_prevalence"]
        ratios = {int(k): float(v) for k, v in data["class_likelihood_ratios"].items()}
        if set(ratios) != {1, 2, 3} or not all(math.isfinite(v) and v > 0 for v in ratios.values()):
            raise ValueError("class_likelihood_ratios needs a positive finite ratio for classes 1, 2 and 3")
        return cls(thresholds_from_json(data),
                   domain.Prevalence(deficient=float(reference["deficient"]),
                                     abnormal=float(reference["abnormal"])),
                   ratios, data_source)

    def prevalence_for(self, declared: float | None) -> tuple[domain.Prevalence, str]:
        if declared is None:
            return self.reference, "model"
        return domain.implied_prevalence(declared, self.reference), "organisation"


# -- the model -------------------------------------------------------------------------------------------


class B12Model:
    """A verified, loaded model directory. Thread-compatible for reads; ``assess`` takes whole batches."""

    version: str
    identity: ModelIdentity

    def __init__(
        self,
        *,
        version: str,
        identity: ModelIdentity,
        stage1: Stage,
        stage2: Stage,
        calibration1: PlattCalibration,
        calibration2: PlattCalibration,
        policy: ScreenPolicy,
        card: Mapping[str, Any] | None = None,
        thread_count: int = 1,
    ) -> None:
        self.version = version
        self.identity = identity
        self.stage1 = stage1
        self.stage2 = stage2
        self.calibration1 = calibration1
        self.calibration2 = calibration2
        self.policy = policy
        self.thresholds = policy.thresholds
        self._card = dict(card or {})
        self.thread_count = thread_count

    @classmethod
    def load(cls, directory: pathlib.Path, *, thread_count: int = 1) -> B12Model:
        """Load ``directory`` after checking every artifact against the manifest's sha256."""
        manifest, contents = read_verified(pathlib.Path(directory))
        stages, features, calibration, thresholds, card, training = (
            _json_object(contents, name, directory)
            for name in (STAGES, FEATURES, CALIBRATION, THRESHOLDS, CARD_JSON, TRAINING)
        )
        order = features.get("feature_order")
        if not isinstance(order, list) or tuple(order) != FEATURE_ORDER:
            raise ModelArtifactError(
                f"model features {order} differ from the contract's {list(FEATURE_ORDER)}"
            )
        loaded = {key: _load_stage(stages, key, contents, directory) for key in STAGE_FILES}
        try:
            calibration1 = PlattCalibration.from_json(calibration["stage1"])
            calibration2 = PlattCalibration.from_json(calibration["stage2"])
            data = training.get("data") if isinstance(training.get("data"), dict) else {}
            policy = ScreenPolicy.from_json(thresholds, str(data.get("description", "unknown")))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"calibration or thresholds of {directory} are invalid: {exc}") from exc
        identity = ModelIdentity(
            version=manifest["version"], artifacts_sha256=artifacts_digest(manifest["artifacts"]),
            data_source=policy.data_source,
        )
        return cls(
            version=manifest["version"],
            identity=identity,
            stage1=loaded["stage1"],
            stage2=loaded["stage2"],
            calibration1=calibration1,
            calibration2=calibration2,
            policy=policy,
            card=card,
            thread_count=thread_count,
        )

    # -- prediction --------------------------------------------------------------------------------------

    def _matrix(self, features: np.ndarray) -> np.ndarray:
        # a private copy: CatBoost marks the arrays it is given read-only, which must not leak to the caller
        x = np.array(features, dtype=np.float64, copy=True)
        if x.ndim != 2 or x.shape[1] != len(FEATURE_ORDER):
            raise ValueError(
                f"features must have shape (n, {len(FEATURE_ORDER)}) in FEATURE_ORDER, got {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("features must be finite (validate panels with CompleteBloodCount first)")
        for j, name in enumerate(FEATURE_ORDER):
            low, high = RANGES.get(name, (0.0, 1.0))
            if np.any((x[:, j] < low) | (x[:, j] > high)):
                raise ValueError(f"{name} is outside the contract's range {low:g}–{high:g} in some row")
        if np.any(
            (x[:, FEATURE_ORDER.index("sex_male")] != 0.0) & (x[:, FEATURE_ORDER.index("sex_male")] != 1.0)
        ):
            raise ValueError("sex_male must be 1.0 (male) or 0.0 (female)")
        return x

    def margins(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (uncalibrated) log-odds of both stages: one call per stage for the whole batch."""
        return self._margins(self._matrix(features))

    def _margins(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.stage1.margins(x, self.thread_count), self.stage2.margins(x, self.thread_count)

    def _shifts(self, n: int, prevalences: Sequence[float | None] | None) -> tuple[
            np.ndarray, np.ndarray, list[float | None], dict[float | None, tuple[domain.Prevalence, str]]]:
        """Per-row log-odds shifts of both stages, each row's declared prevalence, and the population each
        declared value stands for."""
        declared = list(prevalences) if prevalences is not None else [None] * n
        if len(declared) != n:
            raise ValueError(f"{len(declared)} prevalences for {n} rows")
        bases = {value: self.policy.prevalence_for(value) for value in set(declared)}
        shifts = {value: domain.stage_log_odds_shifts(self.policy.reference, basis)
                  for value, (basis, _) in bases.items()}
        shift1 = np.array([shifts[v][0] for v in declared], dtype=np.float64)
        shift2 = np.array([shifts[v][1] for v in declared], dtype=np.float64)
        return shift1, shift2, declared, bases

    def predict_proba(self, features: np.ndarray, prevalences: Sequence[float | None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated P(abnormal) and P(deficient | abnormal) per row, at each row's declared prevalence of
        deficiency (None: the population the model was calibrated on)."""
        x = self._matrix(features)
        m1, m2 = self._margins(x)
        shift1, shift2, _, _ = self._shifts(len(x), prevalences)
        return sigmoid(self.calibration1.logit(m1) + shift1), sigmoid(self.calibration2.logit(m2) + shift2)

    def probabilities(self, features: np.ndarray, prevalences: Sequence[float | None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated (P(normal), P(borderline), P(deficient)) per row."""
        return domain.combine_arrays(*self.predict_proba(features, prevalences))

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Per-row, per-feature SHAP contribution to logit P(abnormal) + logit P(deficient | abnormal)."""
        return self._contributions(self._matrix(features))

    def _contributions(self, x: np.ndarray) -> np.ndarray:
        return (self.calibration1.slope * self.stage1.shap(x, self.thread_count)
                + self.calibration2.slope * self.stage2.shap(x, self.thread_count))

    def advice(self, risk: RiskClass, basis: domain.Prevalence, source: str) -> ScreeningAdvice:
        """What the lab acts on: whether to test, and what the risk class means at this prevalence."""
        ratio = self.policy.class_likelihood_ratios[int(risk)]
        return ScreeningAdvice(
            test_advised=risk >= RiskClass.INTERMEDIATE,
            threshold=self.thresholds.intermediate,
            high_threshold=self.thresholds.high,
            likelihood_ratio=ratio,
            post_test_probability=domain.post_test_probability(basis.deficient, ratio),
            prevalence=PrevalenceBasis(deficient=basis.deficient, abnormal=basis.abnormal, source=source),
        )

    def assess(self, features: np.ndarray, prevalences: Sequence[float | None] | None = None
               ) -> list[Assessment]:
        """One ``Assessment`` per row of ``features`` (shape (n, len(FEATURE_ORDER)), canonical units), each
        at its row's declared prevalence of deficiency (None: the model's own population).

        Calls of ``BULK_ROWS`` rows or more compute what each result says for all rows at once
        (``_from_arrays``); smaller ones, row by row with the per-panel rules of ``domain`` (``_row_by_row``,
        faster for the few rows of a classify). Both give the same results to the last bit
        (tests/inference/test_bulk_assessment.py)."""
        x = self._matrix(features)
        if len(x) == 0:
            return []
        m1, m2 = self._margins(x)
        shift1, shift2, declared, bases = self._shifts(len(x), prevalences)
        normal, borderline, deficient = domain.combine_arrays(
            sigmoid(self.calibration1.logit(m1) + shift1), sigmoid(self.calibration2.logit(m2) + shift2))
        scores = _Scores(normal, borderline, deficient, domain.risk_classes(deficient, self.thresholds),
                         domain.labels(normal, borderline, deficient), self._contributions(x))
        if len(x) < BULK_ROWS:
            return self._row_by_row(x, scores, [bases[v] for v in declared])
        with gc_paused():
            return self._from_arrays(x, scores, declared, bases)

    def _row_by_row(self, x: np.ndarray, s: _Scores, bases: list[tuple[domain.Prevalence, str]]
                    ) -> list[Assessment]:
        order = s.top_features()
        results = []
        for i in range(len(x)):
            panel = domain.panel_from_features(x[i])
            indices = domain.derived_indices(panel)
            found = domain.findings(panel, indices)
            risk = RiskClass(int(s.classes[i]))
            results.append(
                Assessment(
                    label=s.labels[i],
                    probabilities=Probabilities(
                        normal=float(s.normal[i]),
                        borderline=float(s.borderline[i]),
                        deficient=float(s.deficient[i]),
                    ),
                    risk_class=risk,
                    indices=indices,
                    findings=found,
                    recommendation=domain.recommendation(risk, found),
                    top_contributions=[
                        Contribution(
                            feature=FEATURE_ORDER[j],
                            value=float(x[i, j]),
                            contribution=float(s.contributions[i, j]),
                        )
                        for j in order[i]
                    ],
                    model=self.identity,
                    advice=self.advice(risk, *bases[i]),
                )
            )
        return results

    def _from_arrays(self, x: np.ndarray, s: _Scores, declared: list[float | None],
                     bases: Mapping[float | None, tuple[domain.Prevalence, str]]) -> list[Assessment]:
        """The results of ``_row_by_row``, every number computed for all rows at once
        (``domain.panel_columns``) and what rows share made once: the advice per prevalence and risk class,
        the recommendation per risk class and combination of findings."""
        columns = domain.panel_columns(x)
        order = s.top_features()
        top_names = [[FEATURE_ORDER[j] for j in row] for row in order.tolist()]
        top_values = np.take_along_axis(x, order, axis=1).tolist()
        top_contributions = np.take_along_axis(s.contributions, order, axis=1).tolist()
        normal, borderline, deficient = s.normal.tolist(), s.borderline.tolist(), s.deficient.tolist()
        mentzer, green_king = columns.mentzer.tolist(), columns.green_king.tolist()
        nlr = [value if present else None
               for value, present in zip(columns.nlr.tolist(), columns.has_lymphocytes.tolist(), strict=True)]
        pancytopenia = columns.pancytopenia.tolist()
        text_columns = {name: x[:, FEATURE_ORDER.index(name)].tolist() for name in _FINDING_TEXT_FEATURES}
        text_columns |= {"hb_lower": columns.hb_lower.tolist(), "mentzer": mentzer, "green_king": green_king}
        advice: dict[tuple[float | None, int], ScreeningAdvice] = {}
        recommendations: dict[tuple[int, int], str] = {}
        results = []
        flags_of_rows = columns.finding_flags.tolist()
        for i, (risk, flags) in enumerate(zip(s.classes.tolist(), flags_of_rows, strict=True)):
            codes = domain.finding_codes(flags)
            found = []
            if codes:
                values = {name: column[i] for name, column in text_columns.items()}
                found = [Finding(code=code, text=domain.FINDING_TEXTS[code].format_map(values))
                         for code in codes]
            if (risk, flags) not in recommendations:
                recommendations[risk, flags] = domain.recommendation_for_codes(RiskClass(risk), codes)
            if (declared[i], risk) not in advice:
                advice[declared[i], risk] = self.advice(RiskClass(risk), *bases[declared[i]])
            results.append(Assessment(
                label=s.labels[i],
                probabilities=Probabilities(normal=normal[i], borderline=borderline[i],
                                            deficient=deficient[i]),
                risk_class=_RISK_CLASSES[risk],
                indices=DerivedIndices(mentzer=mentzer[i], green_king=green_king[i], nlr=nlr[i],
                                       pancytopenia=pancytopenia[i]),
                findings=found,
                recommendation=recommendations[risk, flags],
                top_contributions=[
                    Contribution(feature=name, value=value, contribution=contribution)
                    for name, value, contribution in zip(top_names[i], top_values[i], top_contributions[i],
                                                         strict=True)],
                model=self.identity,
                advice=advice[declared[i], risk],
            ))
        return results

    def card_metrics(self) -> dict[str, Any]:
        """The model card's measured metrics (out of sample), as written at training time."""
        return json.loads(json.dumps(self._card.get("metrics", {})))

    def card(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._card))


# -- building results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scores:
    """What the model computed for a call's rows, before any result is built."""

    normal: np.ndarray
    borderline: np.ndarray
    deficient: np.ndarray
    classes: np.ndarray
    labels: list[Label]
    contributions: np.ndarray

    def top_features(self) -> np.ndarray:
        """Per row, the columns of the ``TOP_CONTRIBUTIONS`` largest absolute contributions, largest first."""
        return np.argsort(-np.abs(self.contributions), axis=1, kind="stable")[:, :TOP_CONTRIBUTIONS]


_RISK_CLASSES = {int(risk): risk for risk in RiskClass}
#: The panel's values that ``domain.FINDING_TEXTS`` quote.
_FINDING_TEXT_FEATURES = ("mcv", "rdw", "hb", "wbc", "platelets")


def _json_object(contents: Mapping[str, bytes], name: str, directory: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(contents[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{name} of {directory} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelArtifactError(f"{name} of {directory} is not a JSON object")
    return data


def _load_stage(stages: Mapping[str, Any], key: str, contents: Mapping[str, bytes],
                directory: pathlib.Path) -> Stage:
    entry = stages.get(key)
    family = STAGE_FAMILIES.get(entry.get("family")) if isinstance(entry, dict) else None
    if family is None:
        raise ModelArtifactError(f"{STAGES} of {directory} names no known family for {key}")
    name = STAGE_FILES[key] + family.suffix
    if name not in contents:
        raise ModelArtifactError(f"manifest of {directory} lacks {name}, the {key} model")
    return family.from_bytes(contents[name], name)


def _load_catboost(blob: bytes, name: str) -> CatBoostClassifier:
    # Imported when a model has CatBoost stages: catboost (with pandas) costs a service start ~1.5 s of CPU.
    from catboost import CatBoostClassifier, CatBoostError

    model = CatBoostClassifier()
    try:
        model.load_model(blob=blob)
    except CatBoostError as exc:
        raise ModelArtifactError(f"{name} is not a loadable CatBoost model: {exc}") from exc
    if list(model.feature_names_ or ()) != list(FEATURE_ORDER):
        raise ModelArtifactError(
            f"{name} was trained on features {model.feature_names_}, expected {list(FEATURE_ORDER)}"
        )
    return model
