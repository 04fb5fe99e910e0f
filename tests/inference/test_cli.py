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
        ["train", "--data", str(csv), "--out", str(out), "--version", "b12-cbc-cli", "--iterations", "40",
         "--bootstrap", "10", "--bootstrap-other", "0", "--no-plots", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "leave one random fold out (5 groups)" in result.output and "B12 < 200: AUROC" in result.output
    assert "aim " in result.output  # every aim is printed, met or not

    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0 and "b12-cbc-cli" in result.output

    result = runner.invoke(app, ["evaluate", str(out), str(csv), "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["data"]["rows_used"] == 2500 - sum(report["data"]["excluded_by_reason"].values())
    assert 0.5 < report["outcomes"]["deficient"]["auroc"]["estimate"] <= 1.0
    assert set(report["classes"]["deficient"]) >= {"ge2", "ge3", "class1", "class2", "class3"}

    result = runner.invoke(app, ["benchmark", "--model", str(out), "--single", "20", "--batch", "200"])
    assert result.exit_code == 0, result.output
    assert "p50" in result.output and "rows/s" in result.output


def test_train_reports_a_bad_input_without_a_traceback(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("hb,b12\n14,300\n")
    result = runner.invoke(app, ["train", "--data", str(csv), "--out", str(tmp_path / "m"), "--no-progress"])
    assert result.exit_code == 1
    assert "lacks required columns" in result.output


def test_train_without_data_names_where_it_looked(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "absent.csv" in result.output


def test_verify_fails_on_a_broken_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1
