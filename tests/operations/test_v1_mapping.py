"""The pure rules of the v1 migration (clinomic_ops.v1.mapping): ids, slugs, roles, names, CBC and result checks,
and the plan's account of every document (planned or refused with a reason, never dropped)."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st

from clinomic_ops.v1 import mapping
from clinomic_ops.v1.mapping import Refused
from clinomic_ops.v1.report import Report
from clinomic_ops.v1.run import check_names, v1_decryptor
from clinomic_ops.pgtools import OpsError
from shared.events.screening import RANGES
from tests.operations.v1_fixtures import V1Data


def documents(data: V1Data) -> dict[str, list[dict[str, Any]]]:
    return {c: data.collections[c] for c in mapping.V1_COLLECTIONS}


# -- ids and values ---------------------------------------------------------------------------------------------


def test_derived_ids_are_stable_and_differ_per_collection_and_organisation() -> None:
    assert mapping.derived_id("patients", "ORG-A", "P1") == mapping.derived_id("patients", "ORG-A", "P1")
    assert len({mapping.derived_id(c, o, "P1") for c in ("patients", "labs") for o in ("ORG-A", "ORG-B")}) == 4


def test_a_v1_uuid_is_kept_as_the_id_and_any_other_id_is_derived() -> None:
    kept = str(uuid.uuid4())
    assert mapping.kept_id("screenings", "ORG-A", kept) == uuid.UUID(kept)
    assert mapping.kept_id("screenings", "ORG-A", "DEMO-SCR-PAT-1") == mapping.derived_id(
        "screenings", "ORG-A", "DEMO-SCR-PAT-1")


@given(st.text(min_size=1, max_size=80).filter(lambda s: sum(ch.isascii() and ch.isalnum() for ch in s) >= 2))
def test_every_organisation_code_with_two_letters_or_digits_gives_a_valid_slug(code: str) -> None:
    assert mapping.SLUG.match(mapping.org_slug(code))


def test_an_organisation_code_without_letters_or_digits_is_refused() -> None:
    with pytest.raises(Refused, match="bad_org_id"):
        mapping.org_slug("--")


@pytest.mark.parametrize(("v1", "ours"), [("ADMIN", "org_admin"), ("LAB", "lab_technician"), ("doctor", "doctor")])
def test_v1_roles_map_to_the_platforms_roles(v1: str, ours: str) -> None:
    assert mapping.map_role(v1).value == ours


@pytest.mark.parametrize("role", ["SUPERUSER", "", None, 3])
def test_an_unknown_role_is_refused(role: Any) -> None:
    with pytest.raises(Refused, match="unknown_role"):
        mapping.map_role(role)


@pytest.mark.parametrize("raw", ["2025-01-02T03:04:05.678901+00:00", "2025-01-02T03:04:05.678Z"])
def test_both_v1_timestamp_forms_are_read_as_utc(raw: str) -> None:
    moment = mapping.parse_time(raw, "createdAt")
    assert moment.utcoffset() is not None and (moment.year, moment.hour) == (2025, 3)


def test_an_unreadable_timestamp_is_refused() -> None:
    with pytest.raises(Refused, match="bad_timestamp"):
        mapping.parse_time("yesterday", "createdAt")


# -- names -------------------------------------------------------------------------------------------------------


def test_a_v1_name_token_is_decrypted_with_the_v1_key() -> None:
    key = Fernet.generate_key()
    decrypt = v1_decryptor([key])
    assert mapping.open_name(Fernet(key).encrypt(b"Jane").decode(), decrypt) == ("Jane", None)


def test_an_empty_name_is_no_name_with_a_warning() -> None:
    assert mapping.open_name("", None) == (None, "no name in v1")


def test_a_plaintext_name_is_kept_with_a_warning() -> None:
    assert mapping.open_name("Jane Plain", None) == ("Jane Plain", "name was stored in plaintext in v1")


def test_a_token_the_v1_key_does_not_open_is_refused() -> None:
    token = Fernet(Fernet.generate_key()).encrypt(b"Jane").decode()
    with pytest.raises(Refused, match="name_undecryptable"):
        mapping.open_name(token, v1_decryptor([Fernet.generate_key()]))


# -- CBC and result ----------------------------------------------------------------------------------------------


@given(st.sampled_from(mapping.SNAPSHOT), st.floats(allow_nan=False, allow_infinity=False))
def test_a_snapshot_value_is_accepted_exactly_when_it_is_within_our_range(analyte: str, value: float) -> None:
    snapshot = {"hb": 12.0, "mcv": 90.0, "rdw": 13.0} | {analyte: value}
    low, high = RANGES[analyte]
    if low <= value <= high:
        assert mapping.check_snapshot(snapshot)[analyte] == value
    else:
        with pytest.raises(Refused, match="bad_cbc"):
            mapping.check_snapshot(snapshot)


@pytest.mark.parametrize("snapshot", [None, {"hb": 12.0, "mcv": 90.0}, {"hb": "12", "mcv": 90.0, "rdw": 13.0},
                                      {"hb": True, "mcv": 90.0, "rdw": 13.0}])
def test_a_missing_or_non_numeric_snapshot_value_is_refused(snapshot: Any) -> None:
    with pytest.raises(Refused, match="bad_cbc"):
        mapping.check_snapshot(snapshot)


def result(p_deficient: float, risk: int) -> dict[str, Any]:
    rest = round(1.0 - p_deficient, 3)
    return {"riskClass": risk, "label": risk, "labelText": mapping.LABEL_TEXTS[risk].lower(),
            "probabilities": {"normal": rest, "borderline": 0.0, "deficient": p_deficient}}


@given(st.integers(0, 1000).map(lambda n: n / 1000))
def test_a_result_is_accepted_only_with_the_risk_class_v1_derived_from_it(p_deficient: float) -> None:
    right = mapping.v1_risk_class(p_deficient)
    assert mapping.check_result(result(p_deficient, right))[0] == right
    wrong = 1 + right % 3
    with pytest.raises(Refused, match="inconsistent_result"):
        mapping.check_result(result(p_deficient, wrong))


def test_probabilities_that_do_not_sum_to_one_are_refused() -> None:
    doc = result(0.5, 2) | {"probabilities": {"normal": 0.5, "borderline": 0.2, "deficient": 0.5}}
    with pytest.raises(Refused, match="sum to 1.200"):
        mapping.check_result(doc)


def test_a_migrated_assessment_fits_the_contract_and_names_v1_as_its_model() -> None:
    data = V1Data()
    doc = data.collections["screenings"][0]
    risk, probabilities = mapping.check_result(doc)
    assessment = mapping.migrated_assessment(doc, risk, probabilities, doc["id"], "0" * 64)
    assert assessment["model"]["version"] == "clinomic-v1/1.0.0"
    assert assessment["top_contributions"] == [] and "not re-scored" in assessment["recommendation"]
    assert assessment["migrated"]["v1_id"] == doc["id"]
    assert assessment["migrated"]["partial_cbc"] == ["hb", "mcv", "rdw"]


# -- the plan ---------------------------------------------------------------------------------------------------


def test_the_plan_refuses_orphans_duplicates_bad_cbcs_unknown_roles_and_unopened_names() -> None:
    data = V1Data()
    plan = mapping.plan(documents(data), v1_decryptor([data.key]))
    codes = sorted((p.collection, p.code) for p in plan.refused)
    assert codes == [("consents", "orphan"), ("patients", "duplicate"), ("patients", "name_undecryptable"),
                     ("screenings", "bad_cbc"), ("screenings", "duplicate"), ("screenings", "orphan"),
                     ("screenings", "patient_refused"), ("users", "unknown_role")]


def test_a_patient_without_a_name_is_planned_without_one_and_reported() -> None:
    data = V1Data()
    plan = mapping.plan(documents(data), v1_decryptor([data.key]))
    unnamed = next(r for r in plan.records["patients"] if r.v1_id == "PID-0002")
    assert unnamed.values["name"] is None
    assert any(w.v1_id == "PID-0002" and w.detail == "no name in v1" for w in plan.warnings)


def test_a_reference_to_an_unknown_lab_is_left_empty_with_a_warning_not_the_patient_dropped() -> None:
    data = V1Data()
    plan = mapping.plan(documents(data), v1_decryptor([data.key]))
    patient = next(r for r in plan.records["patients"] if r.v1_id == "PID-0004")
    assert "lab_id" not in patient.refs and patient.values["sex"] == "male"
    assert any(w.v1_id == "PID-0004" and "LAB-GONE" in w.detail for w in plan.warnings)


def test_organisations_come_from_every_collection_even_without_labs() -> None:
    data = V1Data()
    plan = mapping.plan(documents(data), v1_decryptor([data.key]))
    assert set(plan.organizations) == {data.org_a, data.org_b}  # org B has no lab


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False), st.floats(0.0, 1.0))
def test_every_document_read_is_planned_or_refused(rng: random.Random, keep: float) -> None:
    data = V1Data()
    subset = {c: [d for d in docs if rng.random() < keep] for c, docs in documents(data).items()}
    for docs in subset.values():
        rng.shuffle(docs)
    plan = mapping.plan(subset, v1_decryptor([data.key]))
    for collection in mapping.V1_COLLECTIONS:
        refused = sum(1 for p in plan.refused if p.collection == collection)
        assert plan.read[collection] == len(subset[collection]) == len(plan.records[collection]) + refused


def test_a_wrong_v1_key_stops_the_run_when_it_opens_no_name() -> None:
    data = V1Data()
    plan = mapping.plan(documents(data), v1_decryptor([Fernet.generate_key()]))
    with pytest.raises(OpsError, match="decrypts none of the 4"):
        check_names(plan, keys_given=True)


def test_encrypted_names_without_a_v1_key_stop_the_run() -> None:
    data = V1Data()
    with pytest.raises(OpsError, match="give the v1 MASTER_ENCRYPTION_KEY"):
        check_names(mapping.plan(documents(data), None), keys_given=False)


def test_the_report_counts_refusals_by_reason_and_lists_them() -> None:
    report = Report("dump:/x", dry_run=True, org_filter=None, skip_screenings=True, run_id="r")
    report.counts["patients"].read = 2
    report.refuse(mapping.Problem("patients", "ORG-A", "P1", "orphan", "its patient is not in the organisation"))
    summary = report.as_dict()
    assert "screenings" not in summary["collections"]
    assert summary["collections"]["patients"] == {"read": 2, "created": 0, "skipped_already_migrated": 0,
                                                  "refused": 1, "refused_by_reason": {"orphan": 1}}
    assert summary["refused"][0]["v1_id"] == "P1" and report.lines()[0].startswith("DRY RUN")
