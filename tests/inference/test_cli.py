"""The ``clinomic-model`` command line, end to end on a tiny cohort."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from inference.cli import app

runner = CliRunner()


def test_generate_train_verify_evaluate_and_benchmark(tmp_path: Path) -> None:
    csv = tmp_path / "cohort.csv"
    result = runner.invoke(
        app,
        [
            "generate-cohort",
            "--out",
            str(csv),
            "--rows",
            "2500",
            "--seed",
            "3",
            "--b12-unit",
            "pmol/L",
            "--no-latent",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "B12 < 200 pg/mL" in result.output
    assert json.loads(Path(str(csv) + ".json").read_text())["b12_unit"] == "pmol/L"

    out = tmp_path / "model"
    result = runner.invoke(
        app,
        [
            "train",
            str(csv),
            "--out",
            str(out),
            "--version",
            "b12-cbc-cli",
            "--iterations",
            "40",
            "--bootstrap",
            "10",
            "--no-plots",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "held-out: AUROC" in result.output
    training = json.loads((out / "training.json").read_text())
    assert training["data"]["cohort"]["seed"] == 3  # the generator's sidecar travels into the card

    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0 and "b12-cbc-cli" in result.output

    result = runner.invoke(app, ["evaluate", str(out), str(out / "holdout.csv")])
    assert result.exit_code == 0
    assert (
        json.loads(result.output)["deficient"]["auroc"]["estimate"]
        == json.loads((out / "card.json").read_text())["metrics"]["deficient"]["auroc"]["estimate"]
    )

    result = runner.invoke(app, ["benchmark", "--model", str(out), "--single", "20", "--batch", "200"])
    assert result.exit_code == 0, result.output
    assert "p50" in result.output and "rows/s" in result.output


def test_train_reports_a_bad_input_without_a_traceback(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("hb,b12\n14,300\n")
    result = runner.invoke(app, ["train", str(csv), "--out", str(tmp_path / "m"), "--no-progress"])
    assert result.exit_code == 1
    assert "lacks required columns" in result.output


def test_verify_fails_on_a_broken_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1
