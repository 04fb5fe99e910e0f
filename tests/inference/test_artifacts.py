"""A model directory loads only as it was written: every artifact is checked against the manifest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.model import (
    CALIBRATION,
    FEATURES,
    MANIFEST,
    STAGES,
    THRESHOLDS,
    B12Model,
    ModelArtifactError,
    write_manifest,
)

STAGE1, STAGE2 = "stage1", "stage2"  # resolved to the trained family's file names below


@pytest.fixture
def model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def _stage_files(directory: Path) -> dict[str, str]:
    stages = json.loads((directory / STAGES).read_text())
    return {key: entry["file"] for key, entry in stages.items()}


def _name(directory: Path, name: str) -> str:
    return _stage_files(directory).get(name, name)


def test_an_intact_copy_loads_with_the_same_identity(model_copy: Path, tiny_model_dir: Path) -> None:
    assert B12Model.load(model_copy).identity == B12Model.load(tiny_model_dir).identity


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [STAGE1, STAGE2, STAGES, CALIBRATION, THRESHOLDS, "card.md"])
def test_a_corrupted_artifact_is_refused(model_copy: Path, name: str) -> None:
    name = _name(model_copy, name)
    _flip_a_byte(model_copy / name)
    with pytest.raises(ModelArtifactError, match=name):
        B12Model.load(model_copy)


@pytest.mark.parametrize("name", [STAGE1, STAGE2, FEATURES, "card.json"])
def test_a_missing_artifact_is_refused(model_copy: Path, name: str) -> None:
    name = _name(model_copy, name)
    (model_copy / name).unlink()
    with pytest.raises(ModelArtifactError, match=name):
        B12Model.load(model_copy)


def test_a_missing_manifest_is_refused(model_copy: Path) -> None:
    (model_copy / MANIFEST).unlink()
    with pytest.raises(ModelArtifactError, match="manifest"):
        B12Model.load(model_copy)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="does not exist"):
        B12Model.load(tmp_path / "nowhere")


def test_a_file_the_manifest_does_not_list_is_refused(model_copy: Path) -> None:
    (model_copy / "extra.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ModelArtifactError, match="extra.pkl"):
        B12Model.load(model_copy)


def test_a_manifest_that_drops_a_required_artifact_is_refused(model_copy: Path) -> None:
    manifest = json.loads((model_copy / MANIFEST).read_text())
    del manifest["artifacts"][THRESHOLDS]
    (model_copy / THRESHOLDS).unlink()
    (model_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelArtifactError, match=THRESHOLDS):
        B12Model.load(model_copy)


def _rewrite_json(key: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        data = json.loads((directory / key).read_text())
        change(data)
        (directory / key).write_text(json.dumps(data))

    return apply


@pytest.mark.parametrize(
    "tamper",
    [
        _rewrite_json(
            THRESHOLDS, lambda d: d.update(intermediate=0.45)
        ),  # could call a deficient label low risk
        _rewrite_json(THRESHOLDS, lambda d: d["class_likelihood_ratios"].update({"2": -1.0})),
        _rewrite_json(THRESHOLDS, lambda d: d["reference_prevalence"].update(abnormal=0.001)),
        _rewrite_json(CALIBRATION, lambda d: d["stage1"].update(method="isotonic")),
        _rewrite_json(CALIBRATION, lambda d: d["stage2"].update(slope=-1.0)),
        _rewrite_json(FEATURES, lambda d: d["feature_order"].reverse()),
        _rewrite_json(STAGES, lambda d: d["stage1"].update(family="pickle")),
        lambda directory: (directory / _name(directory, STAGE1)).write_bytes(b"not a stage model"),
        lambda directory: (directory / "card.json").write_text("{truncated"),
    ],
    ids=["thresholds", "likelihood-ratio", "prevalences", "calibration-method", "calibration-slope",
         "feature-order", "family", "stage-file", "card-json"],
)
def test_consistently_rehashed_but_invalid_artifacts_are_refused(model_copy: Path, tamper) -> None:
    tamper(model_copy)
    write_manifest(model_copy, "b12-cbc-test")  # hashes match again, so the content checks must catch it
    with pytest.raises(ModelArtifactError):
        B12Model.load(model_copy)
