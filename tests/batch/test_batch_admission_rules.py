"""The bulk admission applies the single admission's rule to every row, and plans each new patient once."""

from __future__ import annotations

import uuid

from screening import domain
from screening.batch import Candidate, judge_rows


def candidate(external_id: str, name: str | None = None, sex: str | None = "female") -> Candidate:
    return Candidate(external_id, name, f"index:{name}" if name else None, sex, 50.0)


def test_without_an_active_consent_every_row_is_refused_when_the_policy_requires_one() -> None:
    known = {"P-1": domain.StoredPatient(uuid.uuid4(), None, False, None)}
    verdicts, planned = judge_rows([candidate("P-1"), candidate("P-2")], consent_required=True, known=known,
                                   consents={"P-1": None})
    assert [v.reason for v in verdicts] == ["consent_required", "consent_required"]  # type: ignore[union-attr]
    assert planned == {}


def test_a_consented_patient_is_admitted_with_the_consent_in_force() -> None:
    patient, consent = uuid.uuid4(), uuid.uuid4()
    known = {"P-1": domain.StoredPatient(patient, "index:Ada", True, "female")}
    [verdict], _ = judge_rows([candidate("P-1", "Ada")], consent_required=True, known=known, consents={"P-1": consent})
    assert verdict == domain.Admitted(patient, consent)


def test_a_new_patient_is_planned_once_and_its_later_rows_are_compared_with_the_first() -> None:
    rows = [candidate("N-1", "Ada"), candidate("N-1", "Ada"), candidate("N-1", "Eve"), candidate("N-1", "Ada", "male")]
    verdicts, planned = judge_rows(rows, consent_required=False, known={}, consents={})
    patient_id = planned["N-1"][0]
    assert verdicts[:2] == [domain.Admitted(patient_id, None)] * 2
    assert verdicts[2] == domain.Refused("patient_details_mismatch", patient_id, ("name",))
    assert verdicts[3] == domain.Refused("patient_details_mismatch", patient_id, ("sex",))
    assert list(planned) == ["N-1"]


def test_rows_judged_again_after_a_race_plan_no_new_patient() -> None:
    verdicts, planned = judge_rows([candidate("N-2")], consent_required=False, known={}, consents={}, create=False)
    assert verdicts == [domain.Admitted(None, None)] and planned == {}
