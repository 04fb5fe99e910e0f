"""The bulk path of ``B12Model.assess`` (results computed from arrays) against its row-by-row path (the
per-panel rules of ``domain``): the same assessment, to the last bit of its JSON, for every row."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import domain
from inference.model import BULK_ROWS, B12Model
from inference.training.cohort import generate_cohort
from shared.events.screening import FEATURE_ORDER, RANGES

COHORT_ROWS = 3000


def _cohort(rows: int, seed: int) -> np.ndarray:
    columns = generate_cohort(rows, seed)
    return np.column_stack([(columns["sex"] == "male").astype(np.float64) if name == "sex_male"
                            else columns[name].astype(np.float64) for name in FEATURE_ORDER])


def _row_by_row(model: B12Model, x: np.ndarray, prevalences: list[float | None]) -> list:
    return [model.assess(x[i : i + 1], [prevalences[i]])[0] for i in range(len(x))]


def _differences(bulk: list, single: list) -> list[int]:
    assert len(bulk) == len(single)
    return [i for i, (a, b) in enumerate(zip(bulk, single, strict=True))
            if a != b or a.model_dump_json() != b.model_dump_json()]


def test_bulk_assessments_equal_row_by_row_ones_on_the_synthetic_cohort(shipped_model: B12Model) -> None:
    x = _cohort(COHORT_ROWS, seed=31)
    rng = np.random.default_rng(31)
    prevalences = [None if r < 0.4 else float(p)
                   for r, p in zip(rng.random(COHORT_ROWS), rng.uniform(0.005, 0.6, COHORT_ROWS), strict=True)]
    bulk = shipped_model.assess(x, prevalences)
    assert _differences(bulk, _row_by_row(shipped_model, x, prevalences)) == []
    # the comparison means something only if the cohort raises every finding and every risk class
    assert {f.code for a in bulk for f in a.findings} == set(domain.FINDING_CODES)
    assert {int(a.risk_class) for a in bulk} == {1, 2, 3}
    assert any(a.indices.pancytopenia for a in bulk)


def _feature(name: str) -> st.SearchStrategy[float]:
    """Anywhere in the contract's range, with its ends and the findings' cut-offs drawn often."""
    low, high = RANGES[name]
    edges = {
        "hb": (domain.HB_LOWER_FEMALE, domain.HB_LOWER_MALE),
        "mcv": (domain.MICROCYTOSIS_MCV, domain.MACROCYTOSIS_MCV),
        "rdw": (domain.RDW_UPPER, domain.RDW_MARKED),
        "wbc": (domain.WBC_LOWER,),
        "platelets": (domain.PLATELETS_LOWER,),
    }.get(name, ())
    return st.one_of(st.sampled_from((low, high, *edges)), st.floats(low, high))


_PANEL = st.fixed_dictionaries({name: _feature(name) for name in RANGES}).map(
    lambda panel: {**panel, "lymphocytes_pct": min(panel["lymphocytes_pct"], 100.0 - panel["neutrophils_pct"])})
_EDGE_PANELS = st.one_of(
    _PANEL,
    _PANEL.map(lambda panel: {**panel, "lymphocytes_pct": 0.0}),
    # pancytopenia, in either sex, with the haemoglobin just under its limit
    _PANEL.map(lambda panel: {**panel, "hb": 11.9, "wbc": min(panel["wbc"], 3.9),
                              "platelets": min(panel["platelets"], 149.0)}),
    # a Mentzer index of exactly 13 (MCV 65 fL, RBC 5.0)
    _PANEL.map(lambda panel: {**panel, "mcv": 65.0, "rbc": 5.0}),
)


@settings(max_examples=80, deadline=None)
@given(panels=st.lists(st.tuples(_EDGE_PANELS, st.booleans()), min_size=BULK_ROWS, max_size=3 * BULK_ROWS),
       declared=st.one_of(st.none(), st.floats(min_value=0.001, max_value=0.9)))
def test_bulk_assessments_equal_row_by_row_ones_on_edge_panels(
    shipped_model: B12Model, panels: list[tuple[dict[str, float], bool]], declared: float | None
) -> None:
    x = np.array([[float(male) if name == "sex_male" else panel[name] for name in FEATURE_ORDER]
                  for panel, male in panels])
    prevalences = [declared if i % 2 else None for i in range(len(x))]
    assert _differences(shipped_model.assess(x, prevalences), _row_by_row(shipped_model, x, prevalences)) == []


@pytest.mark.parametrize("enabled", [True, False])
def test_a_bulk_call_leaves_the_cyclic_collector_as_it_found_it(shipped_model: B12Model, enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        shipped_model.assess(_cohort(BULK_ROWS, seed=3))
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
