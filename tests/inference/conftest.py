"""Fixtures for the B12 model tests: consistent CBC panels, the shipped model, a tiny model trained here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from inference.model import DEFAULT_MODEL_DIR, B12Model
from inference.training.cohort import generate_cohort, write_cohort_csv
from inference.training.pipeline import TrainingConfig, train
from shared.events.screening import CompleteBloodCount

#: Small and fast: enough rows for both stages to see both classes, few trees, few bootstrap resamples.
TINY_ROWS = 2500
TINY_CONFIG = TrainingConfig(
    version="b12-cbc-test",
    seed=11,
    iterations=60,
    learning_rate=0.1,
    early_stopping_rounds=30,
    bootstrap_resamples=20,
    plots=False,
)

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
