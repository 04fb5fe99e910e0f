"""The shipped two-stage B12 model: load a verified model directory and assess batches of CBCs.

Stage 1 estimates P(abnormal) = P(serum B12 < 300 pg/mL); stage 2 estimates P(deficient | abnormal) =
P(B12 < 200 | B12 < 300). Each stage is a CatBoost classifier whose raw log-odds are Platt-calibrated
(``p = σ(a·margin + b)``, fitted on held-out data). Because Platt scaling is affine in log-odds, a feature's
SHAP value scaled by ``a`` is exactly its contribution to the *calibrated* log-odds; ``top_contributions``
report the sum of those contributions over both stages, i.e. to logit P(abnormal) + logit P(deficient |
abnormal), so a positive value always pushes towards deficiency.

A model directory holds ``manifest.json`` (sha256 of every other file) and the artifacts it lists. Nothing
is unpickled: the models are CatBoost ``.cbm`` files and everything else is JSON, CSV, Markdown or PNG.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from catboost import CatBoostClassifier, CatBoostError, Pool

from inference import domain
from shared.events.screening import (
    FEATURE_ORDER,
    RANGES,
    Assessment,
    Contribution,
    ModelIdentity,
    Probabilities,
    RiskClass,
)

MANIFEST = "manifest.json"
STAGE1_MODEL = "stage1_abnormal.cbm"
STAGE2_MODEL = "stage2_deficient.cbm"
CALIBRATION = "calibration.json"
THRESHOLDS = "thresholds.json"
FEATURES = "features.json"
TRAINING = "training.json"
CARD_JSON = "card.json"
CARD_MARKDOWN = "card.md"
HOLDOUT = "holdout.csv"
#: Artifacts without which a directory is not a model.
REQUIRED_ARTIFACTS = (STAGE1_MODEL, STAGE2_MODEL, CALIBRATION, THRESHOLDS, FEATURES, TRAINING, CARD_JSON)
MANIFEST_FORMAT = 1
#: How many features ``Assessment.top_contributions`` lists, largest absolute contribution first.
TOP_CONTRIBUTIONS = 5

#: Batches up to this size compute SHAP values without precalculation (faster for one or two rows).
SMALL_BATCH = 2

#: The directory shipped in this package's source tree.
DEFAULT_MODEL_DIR = pathlib.Path(__file__).resolve().parents[2] / "models" / "b12-cbc-v1"


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
        stage1: CatBoostClassifier,
        stage2: CatBoostClassifier,
        calibration1: PlattCalibration,
        calibration2: PlattCalibration,
        thresholds: domain.RiskThresholds,
        card: Mapping[str, Any] | None = None,
        thread_count: int = 1,
    ) -> None:
        self.version = version
        self.identity = identity
        self.stage1 = stage1
        self.stage2 = stage2
        self.calibration1 = calibration1
        self.calibration2 = calibration2
        self.thresholds = thresholds
        self._card = dict(card or {})
        self.thread_count = thread_count

    @classmethod
    def load(cls, directory: pathlib.Path, *, thread_count: int = 1) -> B12Model:
        """Load ``directory`` after checking every artifact against the manifest's sha256."""
        manifest, contents = read_verified(pathlib.Path(directory))
        features, calibration, thresholds, card, _ = (
            _json_object(contents, name, directory)
            for name in (FEATURES, CALIBRATION, THRESHOLDS, CARD_JSON, TRAINING)
        )
        order = features.get("feature_order")
        if not isinstance(order, list) or tuple(order) != FEATURE_ORDER:
            raise ModelArtifactError(
                f"model features {order} differ from the contract's {list(FEATURE_ORDER)}"
            )
        try:
            calibration1 = PlattCalibration.from_json(calibration["stage1"])
            calibration2 = PlattCalibration.from_json(calibration["stage2"])
            risk_thresholds = thresholds_from_json(thresholds)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(f"calibration or thresholds of {directory} are invalid: {exc}") from exc
        stage1 = _load_catboost(contents[STAGE1_MODEL], STAGE1_MODEL)
        stage2 = _load_catboost(contents[STAGE2_MODEL], STAGE2_MODEL)
        identity = ModelIdentity(
            version=manifest["version"], artifacts_sha256=artifacts_digest(manifest["artifacts"])
        )
        return cls(
            version=manifest["version"],
            identity=identity,
            stage1=stage1,
            stage2=stage2,
            calibration1=calibration1,
            calibration2=calibration2,
            thresholds=risk_thresholds,
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
        """Raw (uncalibrated) log-odds of both stages: one CatBoost call per stage for the whole batch."""
        return self._margins(self._matrix(features))

    def _margins(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m1 = self.stage1.predict(x, prediction_type="RawFormulaVal", thread_count=self.thread_count)
        m2 = self.stage2.predict(x, prediction_type="RawFormulaVal", thread_count=self.thread_count)
        return np.asarray(m1, dtype=np.float64), np.asarray(m2, dtype=np.float64)

    def predict_proba(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated P(abnormal) and P(deficient | abnormal) per row."""
        m1, m2 = self.margins(features)
        return self.calibration1(m1), self.calibration2(m2)

    def probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated (P(normal), P(borderline), P(deficient)) per row."""
        return domain.combine_arrays(*self.predict_proba(features))

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Per-row, per-feature SHAP contribution to logit P(abnormal) + logit P(deficient | abnormal)."""
        return self._contributions(self._matrix(features))

    def _contributions(self, x: np.ndarray) -> np.ndarray:
        pool = Pool(x, feature_names=list(FEATURE_ORDER))
        # Exact SHAP either way; precalculating per-leaf values costs ~3 ms a call and pays off only for batches.
        mode = "NoPreCalc" if len(x) <= SMALL_BATCH else "Auto"
        shap1 = self.stage1.get_feature_importance(pool, type="ShapValues", thread_count=self.thread_count,
                                                   shap_mode=mode)
        shap2 = self.stage2.get_feature_importance(pool, type="ShapValues", thread_count=self.thread_count,
                                                   shap_mode=mode)
        # last column is the expected value (bias), not a feature
        return self.calibration1.slope * shap1[:, :-1] + self.calibration2.slope * shap2[:, :-1]

    def assess(self, features: np.ndarray) -> list[Assessment]:
        """One ``Assessment`` per row of ``features`` (shape (n, len(FEATURE_ORDER)), canonical units)."""
        x = self._matrix(features)
        if len(x) == 0:
            return []
        m1, m2 = self._margins(x)
        normal, borderline, deficient = domain.combine_arrays(self.calibration1(m1), self.calibration2(m2))
        classes = domain.risk_classes(deficient, self.thresholds)
        labels = domain.labels(normal, borderline, deficient)
        contributions = self._contributions(x)
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :TOP_CONTRIBUTIONS]
        results = []
        for i in range(len(x)):
            panel = domain.panel_from_features(x[i])
            indices = domain.derived_indices(panel)
            found = domain.findings(panel, indices)
            risk = RiskClass(int(classes[i]))
            results.append(
                Assessment(
                    label=labels[i],
                    probabilities=Probabilities(
                        normal=float(normal[i]),
                        borderline=float(borderline[i]),
                        deficient=float(deficient[i]),
                    ),
                    risk_class=risk,
                    indices=indices,
                    findings=found,
                    recommendation=domain.recommendation(risk, found),
                    top_contributions=[
                        Contribution(
                            feature=FEATURE_ORDER[j],
                            value=float(x[i, j]),
                            contribution=float(contributions[i, j]),
                        )
                        for j in order[i]
                    ],
                    model=self.identity,
                )
            )
        return results

    def card_metrics(self) -> dict[str, Any]:
        """The model card's measured metrics (held-out split), as written at training time."""
        return json.loads(json.dumps(self._card.get("metrics", {})))

    def card(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._card))


def _json_object(contents: Mapping[str, bytes], name: str, directory: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(contents[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"{name} of {directory} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelArtifactError(f"{name} of {directory} is not a JSON object")
    return data


def _load_catboost(blob: bytes, name: str) -> CatBoostClassifier:
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
