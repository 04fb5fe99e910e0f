"""A seeded synthetic cohort of adult CBCs with serum B12, built to be realistic rather than flattering.

Nothing here is patient data. Every distribution is a documented assumption anchored, where a figure is
available, on published numbers (see ``docs/model.md`` for the list and what is assumed without one):

* Serum B12 is log-normal (sd 0.5 on the log scale) with a mild decline with age, shifted so that the
  configured fraction of the cohort is below 200 pg/mL (Indian lab populations 40–50 %, US adults ~3 %).
  The log-sd makes ~30 % of an Indian lab population and ~12–15 % of US adults marginal (200–299 pg/mL).
* The marrow responds to the *true* tissue B12, the label is the *measured* serum B12 (assay noise ~10 %),
  so the label is imperfect the way serum B12 is.
* Only a minority of deficient adults have a haematological signature: the chance of megaloblastic change
  and its severity grow with the depth of deficiency. Most deficient adults keep a normal MCV (tuned to the
  Indian figures: 76.5 % MCV 80–100 fL, 10.4 % > 100 fL, 13.1 % < 80 fL). Marginal B12 (200–299 pg/mL) has
  essentially no CBC signature (odds ratio for macrocytosis 1.03). RDW rises a little even without anaemia.
  Leukopenia and thrombocytopenia, hence pancytopenia, appear only with severe megaloblastic change.
* Confounders that mask or mimic the signal are common: iron deficiency (microcytosis, raised RDW,
  reactive thrombocytosis; masks macrocytosis and makes a dimorphic picture), thalassaemia trait (low MCV,
  high RBC, Mentzer < 13), folate deficiency (the same megaloblastic picture with a normal B12), other
  macrocytosis (alcohol, liver disease, hypothyroidism, drugs, reticulocytosis), chronic disease and other
  cytopenias (viral infection, hypersplenism).
* The red-cell indices are derived from Hb, RBC and MCV with small analyser noise, so every panel satisfies
  the contract's Wintrobe consistency checks, and values are rounded to analyser precision.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from shared.events.screening import CONSISTENCY_TOLERANCE, FEATURE_ORDER, RANGES

#: 1 pg/mL of cobalamin is 0.738 pmol/L.
PMOL_PER_PG = 0.738

#: Decimal places an analyser reports each value with (platelets and age are whole numbers).
PRECISION: dict[str, int] = {
    "hb": 1,
    "rbc": 2,
    "hct": 1,
    "mcv": 1,
    "mch": 1,
    "mchc": 1,
    "rdw": 1,
    "wbc": 2,
    "platelets": 0,
    "neutrophils_pct": 1,
    "lymphocytes_pct": 1,
    "age": 0,
}

#: CBC columns of a labelled CSV (the contract's features, with sex spelled out as ``male``/``female``).
CBC_COLUMNS: tuple[str, ...] = tuple(name for name in FEATURE_ORDER if name != "sex_male") + ("sex",)
LABEL_COLUMNS: tuple[str, ...] = ("b12", "b12_unit")
#: Latent truth the generator knows and a lab never does; written for analysis, ignored by ``train``.
LATENT_COLUMNS: tuple[str, ...] = (
    "b12_true_pg_ml",
    "megaloblastic_severity",
    "iron_deficiency",
    "thalassaemia_trait",
    "folate_deficiency",
    "other_macrocytosis",
    "chronic_disease",
    "other_cytopenia",
)


@dataclass(frozen=True)
class Population:
    """Prevalences that describe who comes to the lab. Fractions are of the whole cohort unless stated."""

    name: str
    deficient_prevalence: float  # serum B12 < 200 pg/mL
    b12_log_sd: float  # spread of log serum B12; sets the marginal (200–299 pg/mL) fraction
    female_fraction: float
    iron_deficiency_female: float
    iron_deficiency_male: float
    thalassaemia_trait: float
    folate_deficiency: float
    other_macrocytosis: float
    chronic_disease: float
    other_cytopenia: float

    def __post_init__(self) -> None:
        for field, value in asdict(self).items():
            if field in ("name", "b12_log_sd"):
                continue
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{field} must be a fraction between 0 and 1, got {value}")
        if not 0.0 < self.deficient_prevalence < 1.0:
            raise ValueError("deficient_prevalence must be strictly between 0 and 1")
        if not 0.1 <= self.b12_log_sd <= 1.5:
            raise ValueError("b12_log_sd must be between 0.1 and 1.5")


#: Indian hospital/lab population: 40–50 % of tested adults below 200 pg/mL; anaemia (largely iron
#: deficiency) in over half of women (NFHS-5); β-thalassaemia trait ~3–4 % nationally (higher in some
#: communities); folate deficiency common in the absence of fortification.
INDIA_LAB = Population(
    name="india-lab",
    deficient_prevalence=0.45,
    b12_log_sd=0.5,
    female_fraction=0.55,
    iron_deficiency_female=0.30,
    iron_deficiency_male=0.10,
    thalassaemia_trait=0.04,
    folate_deficiency=0.06,
    other_macrocytosis=0.04,
    chronic_disease=0.08,
    other_cytopenia=0.02,
)
#: US adults: ~3 % below 200 pg/mL (NHANES), iron deficiency ~10 % of women, thalassaemia trait rare,
#: folate deficiency rare after fortification, other macrocytosis (alcohol, drugs) relatively commoner.
US_LAB = Population(
    name="us-lab",
    deficient_prevalence=0.03,
    b12_log_sd=0.5,
    female_fraction=0.55,
    iron_deficiency_female=0.10,
    iron_deficiency_male=0.02,
    thalassaemia_trait=0.005,
    folate_deficiency=0.005,
    other_macrocytosis=0.05,
    chronic_disease=0.08,
    other_cytopenia=0.02,
)
POPULATIONS: dict[str, Population] = {p.name: p for p in (INDIA_LAB, US_LAB)}


def population(name: str, deficient_prevalence: float | None = None) -> Population:
    try:
        base = POPULATIONS[name]
    except KeyError:
        raise ValueError(f"unknown population {name!r}; choose one of {', '.join(POPULATIONS)}") from None
    return base if deficient_prevalence is None else replace(base, deficient_prevalence=deficient_prevalence)


def generate_cohort(n: int, seed: int, pop: Population = INDIA_LAB) -> dict[str, np.ndarray]:
    """``n`` adults as column arrays: the CBC (canonical units), ``sex``, ``b12`` in pg/mL and latent truth.

    The same ``n``, ``seed`` and population always give the same cohort.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    rng = np.random.default_rng(seed)

    def uniform(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, n)

    def chance(p: float | np.ndarray) -> np.ndarray:
        return rng.random(n) < p

    # -- who: age (a lab population leans middle-aged and older) and sex
    age = np.round(18.0 + 77.0 * rng.beta(2.0, 2.4, n))
    female = chance(pop.female_fraction)
    age_z = (age - 50.0) / 20.0

    # -- serum B12: true tissue level drives the marrow, the measured level is the label
    true_offset = pop.b12_log_sd * rng.standard_normal(n) - 0.10 * age_z
    assay_noise = 0.10 * rng.standard_normal(n)
    # shift so that exactly the configured fraction is measured below 200 pg/mL
    mu = math.log(200.0) - float(np.quantile(true_offset + assay_noise, pop.deficient_prevalence))
    b12_true = np.exp(mu + true_offset)
    b12 = np.clip(np.round(np.exp(mu + true_offset + assay_noise)), 30.0, 2000.0)

    # -- confounders (iron and B12 deficiency share dietary causes: iron deficiency is 15 % commoner
    # among the B12-deficient)
    iron_risk = np.where(female, pop.iron_deficiency_female, pop.iron_deficiency_male)
    iron = chance(np.minimum(1.0, iron_risk * np.where(b12_true < 200.0, 1.15, 1.0)))
    thal = chance(pop.thalassaemia_trait)
    folate = chance(pop.folate_deficiency)
    other_macro = chance(pop.other_macrocytosis)
    chronic = chance(pop.chronic_disease)
    cytopenia = chance(pop.other_cytopenia)

    # -- healthy baseline (adult reference intervals)
    hb = np.where(female, rng.normal(13.4, 0.9, n), rng.normal(15.0, 1.0, n)) - 0.012 * np.maximum(
        age - 55, 0
    )
    mcv = rng.normal(89.5, 4.0, n) + 1.0 * age_z
    mchc = rng.normal(33.4, 0.8, n)
    rdw = 12.9 + 0.25 * age_z + rng.normal(0.0, 0.6, n)
    wbc = np.exp(rng.normal(math.log(6.7), 0.25, n))
    platelets = np.exp(rng.normal(np.where(female, math.log(255.0), math.log(240.0)), 0.22, n))
    neutrophils = rng.normal(58.0, 8.0, n)
    lymphocytes = rng.normal(31.0, 7.0, n)

    # -- thalassaemia trait: small red cells, many of them, little anisocytosis
    mcv = np.where(thal, rng.normal(65.0, 3.5, n), mcv)
    hb = hb - thal * uniform(0.5, 1.5)
    mchc = mchc - thal * uniform(0.0, 1.5)
    rdw = rdw + thal * uniform(0.0, 1.5)

    # -- iron deficiency: microcytic, hypochromic, anisocytosis, reactive thrombocytosis
    iron_severity = iron * uniform(0.15, 1.0)
    mcv = mcv - iron_severity * uniform(8.0, 24.0)
    hb = hb - iron_severity * uniform(1.0, 4.0)
    rdw = rdw + iron_severity * uniform(1.0, 5.0)
    mchc = mchc - iron_severity * uniform(0.5, 3.0)
    platelets = platelets * (1.0 + 0.3 * iron_severity)

    # -- B12: the depth of true deficiency sets the chance and severity of megaloblastic change
    depth = np.maximum(0.0, np.log(200.0 / b12_true))
    involved = chance(np.clip(0.5 * (depth - 0.05), 0.0, 0.8))
    b12_severity = involved * np.clip(depth * uniform(0.4, 1.6), 0.0, 1.0)
    # subclinical: slightly wider and larger red cells even without megaloblastic change
    rdw = rdw + depth * uniform(0.0, 1.2)
    mcv = mcv + depth * rng.normal(1.5, 1.0, n)
    # folate deficiency gives the same marrow picture with a normal B12
    folate_severity = folate * uniform(0.1, 0.8)
    severity = 1.0 - (1.0 - b12_severity) * (1.0 - folate_severity)
    mcv = mcv + severity * uniform(12.0, 28.0)
    rdw = rdw + severity * uniform(2.0, 7.0)
    hb = hb - severity * uniform(1.5, 5.0)
    mchc = mchc + severity * uniform(0.0, 0.8)
    wbc = wbc * (1.0 - 0.55 * severity**1.5)
    platelets = platelets * (1.0 - 0.65 * severity**1.5)
    neutrophils = neutrophils - 8.0 * severity

    # -- other causes of macrocytosis, anaemia and cytopenia
    mcv = mcv + other_macro * uniform(4.0, 12.0)
    rdw = rdw + other_macro * uniform(0.0, 1.5)
    hb = hb - chronic * uniform(0.5, 2.5)
    mcv = mcv - chronic * uniform(0.0, 4.0)
    rdw = rdw + chronic * uniform(0.0, 1.5)
    platelets = platelets * (1.0 + chronic * uniform(0.0, 0.4))
    neutrophils = neutrophils + chronic * uniform(0.0, 12.0)
    wbc = wbc * np.where(cytopenia, uniform(0.35, 0.8), 1.0)
    platelets = platelets * np.where(cytopenia, uniform(0.2, 0.7), 1.0)
    hb = hb - cytopenia * uniform(0.0, 2.0)

    # -- keep within what an analyser reports
    hb = np.clip(hb, 4.0, 20.0)
    mcv = np.clip(mcv, 55.0, 130.0)
    mchc = np.clip(mchc, 26.0, 37.0)
    rdw = np.clip(rdw, 10.5, 35.0)
    wbc = np.clip(wbc, 0.5, 30.0)
    platelets = np.clip(platelets, 10.0, 900.0)
    neutrophils = np.clip(neutrophils, 10.0, 90.0)
    lymphocytes = np.clip(lymphocytes, 4.0, 80.0)
    lymphocytes = np.minimum(lymphocytes, 96.0 - neutrophils)
    hb = np.minimum(hb, 8.2 * mcv * mchc / 1000.0)  # keeps RBC = Hb·1000/(MCHC·MCV) below 8.2 × 10^12/L

    # -- measured panel: Hb, RBC and MCV measured, HCT/MCH/MCHC computed from them with small noise
    rbc = hb * 100.0 / mchc * 10.0 / mcv
    hb_m = hb * (1.0 + rng.normal(0.0, 0.01, n))
    rbc_m = rbc * (1.0 + rng.normal(0.0, 0.012, n))
    mcv_m = mcv * (1.0 + rng.normal(0.0, 0.005, n))
    hct_m = rbc_m * mcv_m / 10.0 * (1.0 + np.clip(rng.normal(0.0, 0.004, n), -0.02, 0.02))
    mch_m = hb_m * 10.0 / rbc_m * (1.0 + np.clip(rng.normal(0.0, 0.004, n), -0.02, 0.02))
    mchc_m = hb_m * 100.0 / hct_m * (1.0 + np.clip(rng.normal(0.0, 0.004, n), -0.02, 0.02))

    values = {
        "hb": hb_m,
        "rbc": rbc_m,
        "hct": hct_m,
        "mcv": mcv_m,
        "mch": mch_m,
        "mchc": mchc_m,
        "rdw": rdw,
        "wbc": wbc,
        "platelets": platelets,
        "neutrophils_pct": neutrophils,
        "lymphocytes_pct": lymphocytes,
        "age": age,
    }
    columns: dict[str, np.ndarray] = {name: np.round(v, PRECISION[name]) for name, v in values.items()}
    columns["sex"] = np.where(female, "female", "male")
    columns["b12"] = b12
    columns["b12_unit"] = np.full(n, "pg/mL")
    columns["b12_true_pg_ml"] = np.round(b12_true, 1)
    columns["megaloblastic_severity"] = np.round(severity, 3)
    for name, flag in (
        ("iron_deficiency", iron),
        ("thalassaemia_trait", thal),
        ("folate_deficiency", folate),
        ("other_macrocytosis", other_macro),
        ("chronic_disease", chronic),
        ("other_cytopenia", cytopenia),
    ):
        columns[name] = flag.astype(np.int8)
    bad = ~panel_is_valid(columns)
    if bad.any():  # never expected: the construction above keeps every panel valid
        raise AssertionError(f"generator produced {int(bad.sum())} panels the contract would refuse")
    return columns


def panel_is_valid(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Vectorised twin of the contract's range and Wintrobe checks (the tests confirm it agrees)."""
    ok = np.ones(len(columns["hb"]), dtype=bool)
    for name, (low, high) in RANGES.items():
        ok &= (columns[name] >= low) & (columns[name] <= high)
    hb, rbc, hct = columns["hb"], columns["rbc"], columns["hct"]
    for measured, derived in (
        (columns["mcv"], hct * 10.0 / rbc),
        (columns["mch"], hb * 10.0 / rbc),
        (columns["mchc"], hb * 100.0 / hct),
    ):
        ok &= np.abs(measured - derived) <= CONSISTENCY_TOLERANCE * derived
    ok &= columns["neutrophils_pct"] + columns["lymphocytes_pct"] <= 100.0
    return ok


def write_cohort_csv(
    columns: Mapping[str, np.ndarray], path: Path, *, b12_unit: str = "pg/mL", latent: bool = True
) -> None:
    """Write a labelled CSV that ``clinomic-model train`` reads; B12 in pg/mL or pmol/L."""
    if b12_unit not in ("pg/mL", "pmol/L"):
        raise ValueError("b12_unit must be pg/mL or pmol/L")
    names = list(CBC_COLUMNS + LABEL_COLUMNS) + (list(LATENT_COLUMNS) if latent else [])
    b12 = np.asarray(columns["b12"], dtype=float)
    if b12_unit == "pmol/L":
        b12 = np.round(b12 * PMOL_PER_PG, 1)
    n = len(b12)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(names)
        for i in range(n):
            row: list[object] = []
            for name in names:
                if name == "b12":
                    row.append(format_number(b12[i]))
                elif name == "b12_unit":
                    row.append(b12_unit)
                elif name == "sex":
                    row.append(str(columns["sex"][i]))
                else:
                    row.append(format_number(columns[name][i]))
            writer.writerow(row)


def format_number(value: object) -> str:
    """Shortest text that reads back to the same float; whole numbers without a trailing ``.0``."""
    x = float(value)  # type: ignore[arg-type]
    return str(int(x)) if x.is_integer() else repr(x)
