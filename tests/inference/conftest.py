"""Fixtures for the B12 model tests: consistent CBC panels, the shipped model, tiny models trained here, and
a small stratified fixture of the real NHANES file (read from ``../shared``, never written into the project).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference.model import DEFAULT_MODEL_DIR, B12Model
from inference.training.cohort import generate_cohort, write_cohort_csv
from inference.training.pipeline import TrainingConfig, train
from inference.training.validation import FitSettings
from shared.events.screening import CompleteBloodCount

#: Small and fast: enough rows for both stages to see both classes, few trees, few bootstrap resamples.
TINY_ROWS = 2500
TINY_CONFIG = TrainingConfig(
    version="b12-cbc-test",
    fit=FitSettings(seed=11, iterations=60, learning_rate=0.1, early_stopping_rounds=30),
    bootstrap_resamples=20,
    resamples_other=5,
    plots=False,
)

#: The NHANES extract beside the checkout (``NHANES_PATH`` overrides); CI has it there too.
NHANES = Path(os.environ.get("NHANES_PATH", Path(__file__).resolve().parents[3] / "shared" / "data" / "nhanes"
                             / "nhanes_cbc_b12_1999_2012.csv"))
#: Fixture size: every deficient adult of the file and a seeded sample of the others.
NHANES_OTHERS = 3000

PanelFactory = Callable[..., CompleteBloodCount]


def build_panel(
    *,
    hb: float,
    mcv: float,
    rdw: float,
    wbc: float,
    platelets: float,
    age: float,
    sex: str,
    mchc: float = 33.5,
    neutrophils_pct: float = 58.0,
    lymphocytes_pct: float = 32.0,
    rbc: float | None = None,
) -> CompleteBloodCount:
    """A panel whose HCT, RBC and MCH follow from Hb, MCV and MCHC, so it passes the Wintrobe checks."""
    if rbc is None:
        hct = round(hb * 100.0 / mchc, 1)
        rbc = round(hct * 10.0 / mcv, 2)
    else:
        hct = round(rbc * mcv / 10.0, 1)
        mchc = round(hb * 100.0 / hct, 1)
    return CompleteBloodCount(
        hb=hb,
        rbc=rbc,
        hct=hct,
        mcv=mcv,
        mch=round(hb * 10.0 / rbc, 1),
        mchc=mchc,
        rdw=rdw,
        wbc=wbc,
        platelets=platelets,
        neutrophils_pct=neutrophils_pct,
        lymphocytes_pct=lymphocytes_pct,
        age=age,
        sex=sex,
    )


@pytest.fixture(scope="session")
def tiny_config() -> TrainingConfig:
    return TINY_CONFIG


@pytest.fixture
def make_panel() -> PanelFactory:
    return build_panel


@pytest.fixture(scope="session")
def shipped_model() -> B12Model:
    return B12Model.load(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cohort") / "tiny.csv"
    write_cohort_csv(generate_cohort(TINY_ROWS, seed=5), path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_csv: Path) -> Path:
    out = tmp_path_factory.mktemp("model") / "b12-cbc-test"
    train(tiny_csv, out, TINY_CONFIG, progress=False)
    return out


@pytest.fixture(scope="session")
def nhanes_path() -> Path:
    """The real file: skipped with a reason only outside CI when it is absent; in CI its absence fails."""
    if not NHANES.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the NHANES extract is missing at {NHANES}; CI must run the real-data tests")
        pytest.skip(f"the NHANES extract is not at {NHANES} (set NHANES_PATH)")
    return NHANES


@pytest.fixture(scope="session")
def nhanes_fixture(tmp_path_factory: pytest.TempPathFactory, nhanes_path: Path) -> Path:
    """Every row below 300 pg/mL and a seeded sample of the others, written to a temporary file."""
    with nhanes_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    low = [r for r in rows if float(r["b12_roche_equiv_pg_ml"]) < 300]
    others = [r for r in rows if float(r["b12_roche_equiv_pg_ml"]) >= 300]
    picked = np.random.default_rng(7).choice(len(others), NHANES_OTHERS, replace=False)
    path = tmp_path_factory.mktemp("nhanes") / "nhanes_fixture.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(low + [others[i] for i in sorted(picked)])
    return path


@pytest.fixture(scope="session")
def nhanes_model_dir(tmp_path_factory: pytest.TempPathFactory, nhanes_fixture: Path) -> Path:
    out = tmp_path_factory.mktemp("nhanes-model") / "b12-cbc-nhanes-test"
    train(nhanes_fixture, out, TINY_CONFIG, progress=False)
    return out
