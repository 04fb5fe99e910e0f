"""Labelled training data: a CSV of adult CBCs with serum B12, validated by the contract row by row.

Columns: the CBC in canonical units (``hb, rbc, hct, mcv, mch, mchc, rdw, wbc, platelets, neutrophils_pct,
lymphocytes_pct, age``), ``sex`` (``male``/``female``, or ``M``/``F``), ``b12`` and ``b12_unit``
(``pg/mL``, ``ng/L`` or ``pmol/L``; 1 pg/mL = 0.738 pmol/L). Other columns are ignored. A row the contract
would refuse (impossible value, inconsistent indices, under 18) is excluded and reported, never guessed at.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from inference.training.cohort import CBC_COLUMNS, PMOL_PER_PG, format_number
from shared.events.screening import FEATURE_ORDER, CompleteBloodCount

#: Serum B12 cut-offs, pg/mL: below 300 is abnormal (stage 1), below 200 deficient (stage 2).
ABNORMAL_BELOW = 300.0
DEFICIENT_BELOW = 200.0
#: Factor from each accepted B12 unit to pg/mL.
B12_UNITS: dict[str, float] = {"pg/mL": 1.0, "ng/L": 1.0, "pmol/L": 1.0 / PMOL_PER_PG}
_SEX = {"male": "male", "m": "male", "female": "female", "f": "female"}


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
class LabelledData:
    features: np.ndarray  # (n, len(FEATURE_ORDER)), float64, canonical units
    b12_pg_ml: np.ndarray  # (n,)
    sha256: str = ""
    rows_read: int = 0
    excluded: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    @property
    def abnormal(self) -> np.ndarray:
        return self.b12_pg_ml < ABNORMAL_BELOW

    @property
    def deficient(self) -> np.ndarray:
        return self.b12_pg_ml < DEFICIENT_BELOW

    def subset(self, mask: np.ndarray) -> LabelledData:
        return LabelledData(self.features[mask], self.b12_pg_ml[mask], self.sha256, int(mask.sum()), [])


def read_labelled_csv(path: Path, *, default_b12_unit: str | None = None) -> LabelledData:
    """Parse and validate ``path``; ``default_b12_unit`` applies when the CSV has no ``b12_unit`` column."""
    raw = Path(path).read_bytes()
    text = raw.decode("utf-8-sig")
    reader = csv.DictReader(text.splitlines())
    header = set(reader.fieldnames or ())
    missing = [c for c in (*CBC_COLUMNS, "b12") if c not in header]
    if "b12_unit" not in header and default_b12_unit is None:
        missing.append("b12_unit")
    if missing:
        raise ValueError(f"{path} lacks required columns: {', '.join(missing)}")
    rows: list[tuple[float, ...]] = []
    b12: list[float] = []
    excluded: list[tuple[int, str]] = []
    read = 0
    for line, record in enumerate(reader, start=2):
        read += 1
        try:
            sex = _SEX.get((record["sex"] or "").strip().lower())
            if sex is None:
                raise ValueError(f"sex {record['sex']!r} is not male/female")
            values = {name: float(record[name]) for name in CBC_COLUMNS if name != "sex"}
            cbc = CompleteBloodCount(**values, sex=sex)
            unit = record.get("b12_unit") or default_b12_unit or ""
            level = b12_to_pg_ml(float(record["b12"]), unit)
        except ValidationError as exc:
            excluded.append((line, "; ".join(e["msg"] for e in exc.errors())))
            continue
        except (TypeError, ValueError) as exc:
            excluded.append((line, str(exc)))
            continue
        rows.append(cbc.as_features())
        b12.append(level)
    features = np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_ORDER))
    return LabelledData(
        features, np.array(b12, dtype=np.float64), hashlib.sha256(raw).hexdigest(), read, excluded
    )


def write_labelled_csv(data: LabelledData, path: Path) -> None:
    """Write rows in the same format ``read_labelled_csv`` reads (B12 in pg/mL); floats round-trip exactly."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*CBC_COLUMNS, "b12", "b12_unit"])
        sex_index = FEATURE_ORDER.index("sex_male")
        for row, level in zip(data.features, data.b12_pg_ml, strict=True):
            values = {name: row[i] for i, name in enumerate(FEATURE_ORDER)}
            out = [format_number(values[name]) for name in CBC_COLUMNS if name != "sex"]
            out.append("male" if row[sex_index] >= 0.5 else "female")
            writer.writerow([*out, format_number(level), "pg/mL"])
