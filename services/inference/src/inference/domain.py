"""Clinical rules of the B12 screen, without I/O: indices, findings, recommendation, probabilities, risk class.

A panel is a mapping from the contract's ``FEATURE_ORDER`` names to floats (``sex_male`` is 1.0 or 0.0).
Findings and the recommendation explain a result; they are computed beside the probabilities and never
feed back into them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from shared.events.screening import (
    FEATURE_ORDER,
    DerivedIndices,
    Finding,
    Label,
    Probabilities,
    RiskClass,
)

# -- reference limits (adults) ---------------------------------------------------------------------------

MACROCYTOSIS_MCV = 100.0  # fL
MICROCYTOSIS_MCV = 80.0  # fL
RDW_UPPER = 14.5  # %, upper reference limit of RDW-CV
RDW_MARKED = 16.0  # %, "markedly raised": anisocytosis beyond what one process usually gives
HB_LOWER_MALE = 13.0  # g/dL (WHO anaemia threshold, adult men)
HB_LOWER_FEMALE = 12.0  # g/dL (WHO anaemia threshold, non-pregnant adult women)
WBC_LOWER = 4.0  # 10^9/L
PLATELETS_LOWER = 150.0  # 10^9/L
MENTZER_CUTOFF = 13.0  # MCV/RBC below 13 favours thalassaemia trait, above 13 iron deficiency

#: The highest ``intermediate`` threshold allowed: any P(deficient) ≥ 1/3 can be the largest of the three
#: probabilities, and a "deficient" label must never come with a low risk class.
MAX_INTERMEDIATE_THRESHOLD = 0.33

Panel = Mapping[str, float]


def panel_from_features(row: Sequence[float] | np.ndarray) -> dict[str, float]:
    """One feature row (in ``FEATURE_ORDER``) as a name → value mapping."""
    if len(row) != len(FEATURE_ORDER):
        raise ValueError(f"a panel has {len(FEATURE_ORDER)} features, got {len(row)}")
    return {name: float(value) for name, value in zip(FEATURE_ORDER, row, strict=True)}


# -- probabilities and risk ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskThresholds:
    """Cut-offs on the calibrated P(deficient) that define the risk class, chosen from the decision curve.

    class 3 (high)          if P(deficient) ≥ ``high``
    class 2 (intermediate)  if ``intermediate`` ≤ P(deficient) < ``high``
    class 1 (low)           otherwise

    A class ≥ 2 means a serum B12 test is advised. ``intermediate`` ≤ 0.33 keeps a "deficient" label (the
    most probable category) out of class 1. A class may be 3 while "normal" is the most probable label: at a
    prevalence of a few per cent, a 1-in-10 chance of deficiency warrants a test although most such people
    are not deficient (docs/model.md, "Risk class and label").
    """

    intermediate: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.intermediate) and math.isfinite(self.high)):
            raise ValueError("risk thresholds must be finite")
        if not 0.0 < self.intermediate <= MAX_INTERMEDIATE_THRESHOLD:
            raise ValueError(
                f"intermediate threshold {self.intermediate} must be in (0, {MAX_INTERMEDIATE_THRESHOLD}]"
            )
        if not self.intermediate < self.high < 1.0:
            raise ValueError(f"high threshold {self.high} must be in ({self.intermediate}, 1)")


# -- prevalence: the population a probability is calibrated for -------------------------------------------


@dataclass(frozen=True)
class Prevalence:
    """Expected fractions of a screened population with serum B12 < 200 (deficient) and < 300 pg/mL."""

    deficient: float
    abnormal: float

    def __post_init__(self) -> None:
        if not (0.0 < self.deficient < self.abnormal < 1.0):
            raise ValueError(
                f"prevalences must satisfy 0 < deficient ({self.deficient}) < abnormal ({self.abnormal}) < 1"
            )


def implied_prevalence(deficient: float, reference: Prevalence) -> Prevalence:
    """The (deficient, abnormal) pair of a population whose only declared figure is its deficient fraction.

    Serum B12 is close to log-normal; a population with more (or less) deficiency is modelled as the
    reference population's distribution shifted on the log scale. The log-sd is the one the reference's
    two prevalences imply, so the reference maps onto itself exactly.
    """
    if not 0.0 < deficient < 1.0:
        raise ValueError(f"a prevalence must lie strictly between 0 and 1, got {deficient}")
    normal = NormalDist()
    z_d, z_a = normal.inv_cdf(reference.deficient), normal.inv_cdf(reference.abnormal)
    gap = z_a - z_d  # = ln(300/200) / sigma
    abnormal = normal.cdf(normal.inv_cdf(deficient) + gap)
    return Prevalence(deficient=deficient, abnormal=max(abnormal, math.nextafter(deficient, 1.0)))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def stage_log_odds_shifts(reference: Prevalence, target: Prevalence) -> tuple[float, float]:
    """Prior-shift correction (Bayes on the odds) of each stage's log-odds, from ``reference`` to ``target``.

    Stage 1 predicts B12 < 300 with prior ``abnormal``; stage 2 predicts B12 < 200 among < 300 with prior
    ``deficient / abnormal``. If the CBC of a deficient (or borderline, or normal) adult looks the same in
    both populations (label shift), the posterior odds scale by the ratio of prior odds, i.e. each stage's
    log-odds move by a constant.
    """
    shift1 = _logit(target.abnormal) - _logit(reference.abnormal)
    shift2 = _logit(target.deficient / target.abnormal) - _logit(reference.deficient / reference.abnormal)
    return shift1, shift2


def post_test_probability(prevalence: float, likelihood_ratio: float) -> float:
    """P(deficient | result) from the pre-test probability and the result's likelihood ratio (Bayes)."""
    odds = prevalence / (1.0 - prevalence) * likelihood_ratio
    return odds / (1.0 + odds)


def combine_arrays(
    p_abnormal: np.ndarray, p_deficient_given_abnormal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(normal), P(borderline), P(deficient)) from the two stages, element-wise; each row sums to 1."""
    p1 = np.asarray(p_abnormal, dtype=np.float64)
    p2 = np.asarray(p_deficient_given_abnormal, dtype=np.float64)
    if not (np.all(np.isfinite(p1)) and np.all(np.isfinite(p2))):
        raise ValueError("stage probabilities must be finite")
    if np.any((p1 < 0) | (p1 > 1) | (p2 < 0) | (p2 > 1)):
        raise ValueError("stage probabilities must lie in [0, 1]")
    deficient = p1 * p2
    borderline = p1 - deficient
    normal = 1.0 - p1
    return normal, borderline, deficient


def combine(p_abnormal: float, p_deficient_given_abnormal: float) -> Probabilities:
    normal, borderline, deficient = combine_arrays(
        np.array([p_abnormal]), np.array([p_deficient_given_abnormal])
    )
    return Probabilities(
        normal=float(normal[0]), borderline=float(borderline[0]), deficient=float(deficient[0])
    )


def risk_classes(p_deficient: np.ndarray, thresholds: RiskThresholds) -> np.ndarray:
    """Risk class (1, 2 or 3) per row, a non-decreasing step function of P(deficient)."""
    p = np.asarray(p_deficient, dtype=np.float64)
    return (1 + (p >= thresholds.intermediate) + (p >= thresholds.high)).astype(np.int64)


def risk_class(p_deficient: float, thresholds: RiskThresholds) -> RiskClass:
    return RiskClass(int(risk_classes(np.array([p_deficient]), thresholds)[0]))


_LABELS = (Label.NORMAL, Label.BORDERLINE, Label.DEFICIENT)


def labels(normal: np.ndarray, borderline: np.ndarray, deficient: np.ndarray) -> list[Label]:
    """The most probable category per row; a tie goes to the more severe category."""
    n, b, d = (np.asarray(p, dtype=np.float64) for p in (normal, borderline, deficient))
    if not n.shape == b.shape == d.shape:
        raise ValueError("labels need three probability arrays of the same shape")
    most = np.where((d >= b) & (d >= n), 2, np.where(b >= n, 1, 0))
    return [_LABELS[k] for k in most.tolist()]


def label(probabilities: Probabilities) -> Label:
    return labels(
        np.array([probabilities.normal]),
        np.array([probabilities.borderline]),
        np.array([probabilities.deficient]),
    )[0]


# -- indices and findings --------------------------------------------------------------------------------


def hb_lower_limit(panel: Panel) -> float:
    return HB_LOWER_MALE if panel["sex_male"] >= 0.5 else HB_LOWER_FEMALE


def derived_indices(panel: Panel) -> DerivedIndices:
    mcv, rbc, rdw, hb = panel["mcv"], panel["rbc"], panel["rdw"], panel["hb"]
    lymphocytes = panel["lymphocytes_pct"]
    return DerivedIndices(
        mentzer=mcv / rbc,
        green_king=mcv * mcv * rdw / (100.0 * hb),
        nlr=panel["neutrophils_pct"] / lymphocytes if lymphocytes > 0 else None,
        pancytopenia=bool(
            hb < hb_lower_limit(panel) and panel["wbc"] < WBC_LOWER and panel["platelets"] < PLATELETS_LOWER
        ),
    )


#: Every finding's code, in the order ``findings`` lists them (bit ``k`` of ``finding_flags`` is code ``k``).
FINDING_CODES = (
    "macrocytosis", "raised_rdw", "pancytopenia", "anaemia", "microcytosis", "iron_deficiency_pattern",
    "thalassaemia_trait_pattern", "dimorphic_pattern",
)

#: Each finding's text, filled in with ``str.format_map`` from the panel's values, ``hb_lower`` (the
#: sex-specific anaemia limit), ``mentzer`` and ``green_king``.
FINDING_TEXTS = {
    "macrocytosis": (
        f"MCV {{mcv:.1f}} fL is above {MACROCYTOSIS_MCV:g} fL (macrocytosis): consistent with B12 or folate "
        "deficiency; alcohol, liver disease, hypothyroidism, drugs (e.g. methotrexate, hydroxyurea) and "
        "reticulocytosis also cause it."
    ),
    "raised_rdw": (
        f"RDW {{rdw:.1f}} % is above {RDW_UPPER:g} % (anisocytosis): seen early in B12 or folate deficiency, "
        "and equally in iron deficiency."
    ),
    "pancytopenia": (
        "Hb {hb:.1f} g/dL, WBC {wbc:.2f} ×10⁹/L and platelets {platelets:.0f} ×10⁹/L are all below their "
        "reference limits (pancytopenia): severe megaloblastic anaemia is one cause; marrow failure, "
        "infiltration and hypersplenism are others."
    ),
    "anaemia": "Hb {hb:.1f} g/dL is below {hb_lower:g} g/dL (anaemia).",
    "microcytosis": (
        f"MCV {{mcv:.1f}} fL is below {MICROCYTOSIS_MCV:g} fL (microcytosis): iron deficiency or "
        "thalassaemia trait can mask the macrocytosis of a coexisting B12 deficiency, so a normal or low MCV "
        "does not exclude it."
    ),
    "iron_deficiency_pattern": (
        f"Mentzer index {{mentzer:.1f}} (≥ {MENTZER_CUTOFF:g}) with microcytosis favours iron deficiency: "
        "check ferritin."
    ),
    "thalassaemia_trait_pattern": (
        f"Mentzer index {{mentzer:.1f}} (< {MENTZER_CUTOFF:g}) favours thalassaemia trait (Green–King index "
        "{green_king:.1f}): small, numerous red cells can mask macrocytosis; consider haemoglobin "
        "electrophoresis."
    ),
    "dimorphic_pattern": (
        f"Normocytic anaemia with RDW {{rdw:.1f}} % (> {RDW_MARKED:g} %) can be a dimorphic picture: "
        "combined iron and B12 or folate deficiency averages out to a normal MCV; review the blood film."
    ),
}


def findings(panel: Panel, indices: DerivedIndices) -> list[Finding]:
    """What the panel itself shows: signs that point to B12/folate deficiency, then confounders."""
    mcv, rdw, hb = panel["mcv"], panel["rdw"], panel["hb"]
    anaemic = hb < hb_lower_limit(panel)
    codes: list[str] = []
    if mcv > MACROCYTOSIS_MCV:
        codes.append("macrocytosis")
    if rdw > RDW_UPPER:
        codes.append("raised_rdw")
    if indices.pancytopenia:
        codes.append("pancytopenia")
    elif anaemic:
        codes.append("anaemia")
    if mcv < MICROCYTOSIS_MCV:
        codes.append("microcytosis")
        if indices.mentzer >= MENTZER_CUTOFF:
            codes.append("iron_deficiency_pattern")
    if indices.mentzer < MENTZER_CUTOFF:
        codes.append("thalassaemia_trait_pattern")
    if MICROCYTOSIS_MCV <= mcv <= MACROCYTOSIS_MCV and rdw > RDW_MARKED and anaemic:
        codes.append("dimorphic_pattern")
    values = {**panel, "hb_lower": hb_lower_limit(panel), "mentzer": indices.mentzer,
              "green_king": indices.green_king}
    return [Finding(code=code, text=FINDING_TEXTS[code].format_map(values)) for code in codes]


# -- the same rules over many panels at once (the bulk path of ``B12Model.assess``) -----------------------


@dataclass(frozen=True)
class PanelColumns:
    """``derived_indices`` and ``findings`` of every row of a feature matrix, as columns."""

    mentzer: np.ndarray
    green_king: np.ndarray
    #: Neutrophil-to-lymphocyte ratio; only where ``has_lymphocytes`` (elsewhere 0, and None in a result).
    nlr: np.ndarray
    has_lymphocytes: np.ndarray
    pancytopenia: np.ndarray
    hb_lower: np.ndarray
    #: Bit ``k`` set: the row shows ``FINDING_CODES[k]``.
    finding_flags: np.ndarray


def panel_columns(x: np.ndarray) -> PanelColumns:
    """The rules of ``derived_indices`` and ``findings`` for a matrix of rows in ``FEATURE_ORDER``, in the
    same floating-point operations, so every value is the one the row-by-row functions give."""
    col = {name: x[:, j] for j, name in enumerate(FEATURE_ORDER)}
    mcv, rbc, rdw, hb = col["mcv"], col["rbc"], col["rdw"], col["hb"]
    lymphocytes = col["lymphocytes_pct"]
    mentzer = mcv / rbc
    hb_lower = np.where(col["sex_male"] >= 0.5, HB_LOWER_MALE, HB_LOWER_FEMALE)
    anaemic = hb < hb_lower
    pancytopenia = anaemic & (col["wbc"] < WBC_LOWER) & (col["platelets"] < PLATELETS_LOWER)
    has_lymphocytes = lymphocytes > 0
    microcytic = mcv < MICROCYTOSIS_MCV
    shown = (
        mcv > MACROCYTOSIS_MCV,
        rdw > RDW_UPPER,
        pancytopenia,
        anaemic & ~pancytopenia,
        microcytic,
        microcytic & (mentzer >= MENTZER_CUTOFF),
        mentzer < MENTZER_CUTOFF,
        (MICROCYTOSIS_MCV <= mcv) & (mcv <= MACROCYTOSIS_MCV) & (rdw > RDW_MARKED) & anaemic,
    )
    flags = np.zeros(len(x), dtype=np.int64)
    for bit, rows in enumerate(shown):
        flags |= rows.astype(np.int64) << bit
    with np.errstate(over="ignore"):  # a vanishing lymphocyte count gives an infinite ratio, as in Python
        nlr = np.divide(col["neutrophils_pct"], lymphocytes, out=np.zeros(len(x)), where=has_lymphocytes)
    return PanelColumns(
        mentzer=mentzer,
        green_king=mcv * mcv * rdw / (100.0 * hb),
        nlr=nlr,
        has_lymphocytes=has_lymphocytes,
        pancytopenia=pancytopenia,
        hb_lower=hb_lower,
        finding_flags=flags,
    )


@functools.cache
def finding_codes(flags: int) -> tuple[str, ...]:
    """The codes of a row's ``finding_flags``, in the order ``findings`` lists them."""
    return tuple(code for bit, code in enumerate(FINDING_CODES) if flags >> bit & 1)


_MASKING_CODES = frozenset({"microcytosis", "thalassaemia_trait_pattern", "dimorphic_pattern"})


def recommendation(risk: RiskClass, found: Sequence[Finding]) -> str:
    """One actionable sentence for the risk class, with a clause for findings that change what to do."""
    return recommendation_for_codes(risk, {f.code for f in found})


def recommendation_for_codes(risk: RiskClass, codes: Collection[str]) -> str:
    """``recommendation`` from the findings' codes alone (the bulk path reuses one sentence per combination)."""
    if risk is RiskClass.HIGH:
        text = (
            "B12 test advised with priority: the CBC puts this adult in the screen's highest-risk tier; measure "
            "serum B12 and folate (add methylmalonic acid or homocysteine if B12 is 200–300 pg/mL) and review "
            "the blood film before starting treatment"
        )
    elif risk is RiskClass.INTERMEDIATE:
        text = (
            "B12 test advised: the CBC puts the chance of deficiency above the screen's testing threshold, so "
            "measure serum B12, particularly with neuropathy, cognitive change, metformin or acid-suppressant "
            "use, a vegetarian diet, age over 60 or malabsorption"
        )
    else:
        text = (
            "Low risk from the CBC: it gives no reason on its own to measure B12, but a normal CBC does not "
            "exclude deficiency, so test if symptoms or risk factors are present"
        )
    if "pancytopenia" in codes:
        text += "; pancytopenia needs prompt clinical review and a blood film whatever the B12 result"
    if _MASKING_CODES.intersection(codes):
        text += (
            "; check ferritin (and haemoglobin electrophoresis if Mentzer < 13), as a masked macrocytosis "
            "can hide B12 deficiency"
        )
    return text + "."
