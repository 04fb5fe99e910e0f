"""Labelled cohorts for training and validation: NHANES as CDC published it, or a lab's own labelled CSV.

Both are read into one ``Cohort``: the contract's feature matrix, serum B12 on one assay scale, the
validation group of each row (NHANES survey cycle, or a lab's ``group`` column), and what is known for
the secondary outcome and the subgroups. Each row passes ``CompleteBloodCount``, the same validation the
API applies, so training sees exactly the panels serving would accept; a refused row is counted by reason,
never repaired.

Outcomes (docs/model.md, "Outcomes"): deficient = serum B12 < 200 pg/mL and abnormal = < 300 pg/mL on the
Roche (electrochemiluminescence) scale, NHANES 1999–2006 Bio-Rad values converted with CDC's crossover
equation; metabolically confirmed = B12 < 300 and MMA > 0.271 µmol/L, where MMA was measured.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from inference.training.cohort import CBC_COLUMNS, PMOL_PER_PG
from shared.events.screening import FEATURE_ORDER, CompleteBloodCount

#: Serum B12 cut-offs, pg/mL: below 300 is abnormal (stage 1), below 200 deficient (stage 2).
ABNORMAL_BELOW = 300.0
DEFICIENT_BELOW = 200.0
#: Methylmalonic acid above this (µmol/L) is the usual cut-off for functional B12 deficiency.
MMA_RAISED_ABOVE = 0.271
#: Factor from each accepted B12 unit to pg/mL.
B12_UNITS: dict[str, float] = {"pg/mL": 1.0, "ng/L": 1.0, "pmol/L": 1.0 / PMOL_PER_PG}
#: Folds drawn at random (seeded) when a lab's CSV names no validation group.
DEFAULT_FOLDS = 5

#: Columns that mark the NHANES extract (``../shared/data/nhanes``): harmonised B12 and the survey cycle.
NHANES_B12 = "b12_roche_equiv_pg_ml"
NHANES_GROUP = "cycle"


def b12_to_pg_ml(value: float, unit: str) -> float:
    """Serum B12 in pg/mL from a value in any accepted unit."""
    try:
        factor = B12_UNITS[unit.strip()]
    except KeyError:
        raise ValueError(f"B12 unit {unit!r} is not accepted; use one of: {', '.join(B12_UNITS)}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"B12 {value!r} must be a positive number")
    return value * factor


@dataclass
class Cohort:
    """Validated rows of one labelled file, in the contract's feature order."""

    features: np.ndarray  # (n, len(FEATURE_ORDER)), float64, canonical units
    b12_pg_ml: np.ndarray  # (n,), harmonised scale
    group: np.ndarray  # (n,), str: the validation fold each row belongs to
    mma_umol_l: np.ndarray  # (n,), NaN where not measured
    assay: np.ndarray  # (n,), str: the B12 assay ("" when unknown)
    source: str = ""  # "nhanes" or "labelled-csv"
    file: str = ""
    sha256: str = ""
    rows_read: int = 0
    excluded: Counter[str] = field(default_factory=Counter)  # reason → rows
    group_kind: str = "fold"  # what a group is: "survey cycle", "group column" or "random fold"

    @property
    def deficient(self) -> np.ndarray:
        return self.b12_pg_ml < DEFICIENT_BELOW

    @property
    def abnormal(self) -> np.ndarray:
        return self.b12_pg_ml < ABNORMAL_BELOW

    @property
    def mma_measured(self) -> np.ndarray:
        return ~np.isnan(self.mma_umol_l)

    @property
    def metabolically_confirmed(self) -> np.ndarray:
        """B12 < 300 pg/mL with MMA > 0.271 µmol/L (meaningful only where ``mma_measured``)."""
        with np.errstate(invalid="ignore"):
            return self.abnormal & (self.mma_umol_l > MMA_RAISED_ABOVE)

    def column(self, name: str) -> np.ndarray:
        return self.features[:, FEATURE_ORDER.index(name)]

    def __len__(self) -> int:
        return len(self.b12_pg_ml)


def _number(record: dict[str, str], name: str) -> float:
    text = (record.get(name) or "").strip()
    if not text:
        raise _Excluded(f"{name} missing")
    try:
        value = float(text)
    except ValueError:
        raise _Excluded(f"{name} not a number") from None
    if not math.isfinite(value):
        raise _Excluded(f"{name} not finite")
    return value


class _Excluded(Exception):
    """A row that cannot be used, with the reason it is counted under."""


def _refusal(exc: ValidationError) -> str:
    """The contract's first objection, by field only (values vary row by row and would not count up)."""
    error = exc.errors()[0]
    where = ".".join(map(str, error["loc"])) or "panel"
    return f"refused by the CBC contract: {where} ({error['type']})"


def read_cohort(path: Path, *, default_b12_unit: str | None = None, folds: int = DEFAULT_FOLDS,
                seed: int = 0) -> Cohort:
    """Read and validate ``path``: the NHANES extract (recognised by its columns) or a labelled CSV.

    A labelled CSV has the CBC columns, ``sex``, ``b12`` and ``b12_unit`` (or ``default_b12_unit``), and may
    have ``group`` (validation fold, e.g. site or period) and ``mma_umol_l``; without ``group`` rows are
    dealt into ``folds`` seeded random folds. NHANES rows of pregnant participants are excluded (the screen
    is not for pregnancy).
    """
    raw = Path(path).read_bytes()
    reader = csv.DictReader(raw.decode("utf-8-sig").splitlines())
    header = set(reader.fieldnames or ())
    nhanes = {NHANES_B12, NHANES_GROUP} <= header
    required = [*CBC_COLUMNS, NHANES_B12] if nhanes else [*CBC_COLUMNS, "b12"]
    missing = [c for c in required if c not in header]
    if not nhanes and "b12_unit" not in header and default_b12_unit is None:
        missing.append("b12_unit")
    if missing:
        raise ValueError(f"{path} lacks required columns: {', '.join(missing)}")
    rows: list[tuple[float, ...]] = []
    b12: list[float] = []
    groups: list[str] = []
    mma: list[float] = []
    assays: list[str] = []
    excluded: Counter[str] = Counter()
    read = 0
    for record in reader:
        read += 1
        try:
            if nhanes and (record.get("pregnant") or "").strip() in ("1", "1.0"):
                raise _Excluded("pregnant (the screen is not for pregnancy)")
            values = {name: _number(record, name) for name in CBC_COLUMNS if name != "sex"}
            try:
                cbc = CompleteBloodCount(**values, sex=(record.get("sex") or "").strip())
            except ValidationError as exc:
                raise _Excluded(_refusal(exc)) from None
            if nhanes:
                level = _number(record, NHANES_B12)
            else:
                unit = record.get("b12_unit") or default_b12_unit or ""
                try:
                    level = b12_to_pg_ml(_number(record, "b12"), unit)
                except ValueError as exc:
                    raise _Excluded(str(exc).split(";")[0]) from None
            if level <= 0:
                raise _Excluded("B12 not positive")
        except _Excluded as reason:
            excluded[str(reason)] += 1
            continue
        rows.append(cbc.as_features())
        b12.append(level)
        groups.append((record.get(NHANES_GROUP if nhanes else "group") or "").strip())
        mma_text = (record.get("mma_umol_l") or "").strip()
        mma.append(float(mma_text) if mma_text else math.nan)
        assays.append((record.get("b12_assay") or "").strip())
    group = np.array(groups, dtype=object)
    if nhanes:
        kind = "survey cycle"
    elif len(group) and all(groups):
        kind = "group column"
    else:
        kind = "random fold"
        order = np.random.default_rng(seed).permutation(len(group))
        group = np.empty(len(order), dtype=object)
        group[order] = [f"fold {i % folds + 1}" for i in range(len(order))]
    return Cohort(
        features=np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_ORDER)),
        b12_pg_ml=np.array(b12, dtype=np.float64),
        group=group,
        mma_umol_l=np.array(mma, dtype=np.float64),
        assay=np.array(assays, dtype=object),
        source="nhanes" if nhanes else "labelled-csv",
        file=Path(path).name,
        sha256=hashlib.sha256(raw).hexdigest(),
        rows_read=read,
        excluded=excluded,
        group_kind=kind,
    )
