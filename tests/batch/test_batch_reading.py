"""Reading a batch upload: every row checked against the classify contract, problems reported per row and
field without the value, the whole file refused only when it cannot be read at all."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.batch import (
    CSV,
    JSON,
    CSV_COLUMNS,
    CheckedRow,
    UnreadableBatch,
    read_csv,
    read_json,
    refused_row,
)
from shared.events.screening import CompleteBloodCount
from tests.conftest import HEALTHY_CBC

HEADER = ",".join(CSV_COLUMNS)


def csv_line(external_id: str = "P-1", name: str = "Ada Example", **changes: object) -> str:
    cbc = HEALTHY_CBC | changes
    return ",".join([external_id, name, *(str(cbc[c]) for c in CSV_COLUMNS[2:])])


def csv_file(*lines: str, header: str = HEADER) -> bytes:
    return "\n".join([header, *lines]).encode()


def errors_of(data: bytes, row: int) -> dict[str, tuple[str, str]]:
    checked = read_csv(data, 100)
    [rejected] = [r for r in checked.rejected if r.row == row]
    return {p.field: (p.type, p.message) for p in rejected.errors}


def test_a_valid_csv_row_becomes_the_same_cbc_classify_would_accept() -> None:
    checked = read_csv(csv_file(csv_line("P-7", "Grace Example")), 100)
    assert checked.rejected == [] and checked.total == 1
    [row] = checked.accepted
    assert row == CheckedRow(1, "P-7", "Grace Example", CompleteBloodCount.model_validate(HEALTHY_CBC))


def test_rows_are_numbered_from_one_after_the_header_and_blank_lines_are_not_counted() -> None:
    checked = read_csv(csv_file(csv_line("P-1"), "", csv_line("P-2", hb="x"), ",,,", csv_line("P-3")), 100)
    assert [r.row for r in checked.accepted] == [1, 3] and [r.row for r in checked.rejected] == [2]
    assert checked.total == 3


def test_a_byte_order_mark_spaces_and_capitals_in_the_header_are_tolerated() -> None:
    header = "\ufeff" + ", ".join(c.upper() for c in CSV_COLUMNS)
    assert len(read_csv(csv_file(csv_line(), header=header), 100).accepted) == 1


def test_the_name_column_is_optional_and_an_empty_name_is_no_name() -> None:
    header = ",".join(c for c in CSV_COLUMNS if c != "name")
    line = ",".join(["P-1", *(str(HEALTHY_CBC[c]) for c in CSV_COLUMNS[2:])])
    assert read_csv(csv_file(line, header=header), 100).accepted[0].name is None
    assert read_csv(csv_file(csv_line(name="")), 100).accepted[0].name is None


def test_a_non_numeric_value_is_reported_by_its_column_without_the_value() -> None:
    errors = errors_of(csv_file(csv_line(hb="Jane Doe")), 1)
    assert set(errors) == {"hb"} and "must be a number" in errors["hb"][1]
    assert "Jane" not in json.dumps(errors)


def test_nan_and_infinity_are_reported_as_not_finite() -> None:
    assert set(errors_of(csv_file(csv_line(mcv="NaN")), 1)) == {"mcv"}
    assert set(errors_of(csv_file(csv_line(wbc="inf")), 1)) == {"wbc"}


def test_an_under_18_row_is_reported_with_the_adult_only_reason() -> None:
    kind, message = errors_of(csv_file(csv_line(age=16)), 1)["age"]
    assert "adults only" in message and kind == "value_error"


def test_an_empty_cell_is_reported_missing() -> None:
    assert errors_of(csv_file(csv_line(rdw="")), 1)["rdw"][0] == "missing"


def test_an_inconsistent_panel_is_reported_against_the_cbc() -> None:
    errors = errors_of(csv_file(csv_line(mcv=120)), 1)
    assert "cbc" in errors and "disagrees" in errors["cbc"][1]


def test_a_row_with_too_few_values_is_reported_for_the_row() -> None:
    assert errors_of(csv_file("P-1,Ada,14.2"), 1) == {"row": ("wrong_number_of_values", "3 values for 15 columns")}


def test_every_problem_of_a_row_is_reported() -> None:
    assert {"hb", "age", "external_id"} <= set(errors_of(csv_file(csv_line("P 1!", hb="?", age=12)), 1))


@pytest.mark.parametrize("header, kind", [
    (HEADER.replace(",rdw", ""), "missing_columns"),
    (HEADER + ",ferritin", "unknown_columns"),
    (HEADER + ",hb", "duplicate_columns"),
])
def test_a_header_without_a_required_column_or_with_a_stray_one_refuses_the_file(header: str, kind: str) -> None:
    with pytest.raises(UnreadableBatch) as refused:
        read_csv(csv_file(csv_line(), header=header), 100)
    assert refused.value.problem.field == "header" and refused.value.problem.type == kind


def test_a_data_row_taken_for_a_header_is_not_echoed_in_the_refusal() -> None:
    with pytest.raises(UnreadableBatch) as refused:
        read_csv(csv_file(csv_line(), header=csv_line("P-9", "Jane Doe")), 100)
    assert "Jane" not in refused.value.problem.message


@pytest.mark.parametrize("data", [b"", b"\n\n", HEADER.encode(), b"\xff\xfe\x00garbage", b"a,b\x00,c\n1,2,3"])
def test_an_empty_or_garbled_file_is_refused_as_a_whole(data: bytes) -> None:
    with pytest.raises(UnreadableBatch):
        read_csv(data, 100)


def test_more_rows_than_the_limit_refuse_the_file_with_the_limit_in_the_message() -> None:
    with pytest.raises(UnreadableBatch) as refused:
        read_csv(csv_file(*[csv_line(f"P-{i}") for i in range(4)]), 3)
    assert refused.value.problem.type == "too_many_rows" and "at most 3" in refused.value.problem.message


def test_a_json_batch_reports_fields_by_their_path() -> None:
    body = [{"patient": {"external_id": "P-1"}, "cbc": HEALTHY_CBC},
            {"patient": {"external_id": "P-2"}, "cbc": HEALTHY_CBC | {"hb": "high"}},
            "not a row"]
    checked = read_json(json.dumps(body).encode(), 100)
    assert [r.row for r in checked.accepted] == [1]
    assert {r.row: [p.field for p in r.errors] for r in checked.rejected} == {2: ["cbc.hb"], 3: ["row"]}


@pytest.mark.parametrize("data", [b"{", b'{"rows": []}', b"[]"])
def test_a_json_body_that_is_not_a_non_empty_array_is_refused_as_a_whole(data: bytes) -> None:
    with pytest.raises(UnreadableBatch):
        read_json(data, 100)


def test_a_refused_row_names_the_patient_detail_that_differs_in_each_format() -> None:
    row = CheckedRow(4, "P-1", "Ada", CompleteBloodCount.model_validate(HEALTHY_CBC))
    mismatch = refused_row(CSV, row, "patient_details_mismatch", ["name", "sex"])
    assert [(p.field, p.type) for p in mismatch.errors] == [("name", "patient_details_mismatch"),
                                                           ("sex", "patient_details_mismatch")]
    assert [p.field for p in refused_row(JSON, row, "patient_details_mismatch", ["sex"]).errors] == ["cbc.sex"]
    [consent] = refused_row(JSON, row, "consent_required", []).errors
    assert (consent.field, consent.type) == ("patient.external_id", "consent_required")


NUMERIC = [c for c in CSV_COLUMNS[2:] if c != "sex"]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 30), data=st.data())
def test_a_bad_cell_rejects_only_its_own_row(rows: int, data: st.DataObject) -> None:
    bad_row = data.draw(st.integers(1, rows))
    column = data.draw(st.sampled_from(NUMERIC))
    junk = data.draw(st.sampled_from(["", "n/a", "1.2.3", "nan", "-inf", "1e999"]))
    lines = [csv_line(f"P-{i}", **({column: junk} if i == bad_row else {})) for i in range(1, rows + 1)]
    checked = read_csv(csv_file(*lines), 100)
    assert [r.row for r in checked.rejected] == [bad_row]
    assert [p.field for p in checked.rejected[0].errors] == [column]
    assert [r.row for r in checked.accepted] == [i for i in range(1, rows + 1) if i != bad_row]
