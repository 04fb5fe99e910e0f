"""The scale-out benchmark's rules without a platform: its shapes, partition reading, CPU shares and verdicts."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from devstack import chaos
from devstack.scaleout import (
    Phase,
    busy_cores,
    compact,
    cores,
    held_partitions,
    quantile,
    shape_problem,
    sharing,
)


def line(message: str) -> str:
    return json.dumps({"time": "2026-12-06T14:00:00+00:00", "message": message})


def assigned(group: str, *partitions: str) -> str:
    return line(f"consumer group {group} assigned {json.dumps(sorted(partitions))}")


def counted(accepted: set[str], rows: dict[str, int], trails: dict[str, int] | None = None) -> chaos.Outcome:
    trails = {i: len(chaos.CLASSIFY_EVENTS) for i in accepted} if trails is None else trails
    return chaos.outcome("", chaos.Observed(accepted=accepted, rows=rows, trails=trails))


def test_one_replica_is_refused_as_nothing_to_compare() -> None:
    assert shape_problem(1, 4) is not None


def test_fewer_partitions_than_replicas_is_refused() -> None:
    assert "at least --replicas" in (shape_problem(3, 2) or "")


def test_as_many_partitions_as_replicas_is_a_valid_shape() -> None:
    assert shape_problem(2, 2) is None


@given(st.lists(st.floats(0, 1e4), min_size=1), st.floats(0, 1))
def test_a_quantile_is_one_of_the_measured_values(values: list[float], p: float) -> None:
    assert quantile(values, p) in values


def test_no_latencies_have_no_quantile() -> None:
    assert quantile([], 0.5) is None


def test_machine_busy_is_the_non_idle_share_of_all_cores() -> None:
    # user, nice, system, idle, iowait: 300 of 400 jiffies busy on 2 cores
    assert busy_cores([0, 0, 0, 0, 0], [200, 0, 100, 80, 20], cpus=2) == 1.5


def test_process_cores_are_run_and_wait_time_per_second() -> None:
    assert cores({"gateway": (0, 0)}, {"gateway": (5 * 10**9, 10**10)}, 10.0) == {"gateway": (0.5, 1.0)}


def test_a_process_gone_before_the_second_reading_is_left_out() -> None:
    assert cores({"gateway": (0, 0), "inference": (0, 0)}, {"gateway": (0, 0)}, 1.0) == {"gateway": (0.0, 0.0)}


def test_the_latest_assignment_of_a_group_is_what_it_holds() -> None:
    lines = [assigned("inference", "clinomic.screening.requested:0", "clinomic.screening.requested:1"),
             assigned("inference", "clinomic.screening.requested:1")]
    assert held_partitions(lines) == {"inference": ["clinomic.screening.requested:1"]}


def test_assignments_of_an_earlier_process_are_forgotten_at_a_restart() -> None:
    lines = [assigned("inference", "clinomic.screening.requested:0"),
             line("Started server process [42]"),
             assigned("inference-batch", "clinomic.screening.batch-requested:0")]
    assert set(held_partitions(lines)) == {"inference-batch"}


def test_lines_that_are_not_json_log_records_are_skipped() -> None:
    assert held_partitions(["Traceback (most recent call last):", "[]", assigned("g", "t:0")]) == {"g": ["t:0"]}


def test_per_process_groups_are_shared_under_one_label() -> None:
    held = {"gateway": {f"gateway-{'a' * 32}": ["t:0", "t:1"]}, "gateway-2": {f"gateway-{'b' * 32}": ["t:0", "t:1"]}}
    assert sharing(held) == {"gateway-<process>": {"gateway": ["t:0", "t:1"], "gateway-2": ["t:0", "t:1"]}}


def test_partitions_are_shown_per_topic_without_the_platform_prefix() -> None:
    assert compact(["clinomic.b:1", "clinomic.a:2", "clinomic.a:0"]) == "a[0,2] b[1]"


def test_a_phase_whose_screenings_were_each_recorded_and_audited_once_broke_nothing() -> None:
    phase = Phase("b", ["gateway", "gateway-2"], 10.0,
                  answers=Counter({("gateway", "200"): 3, ("gateway-2", "200"): 1}),
                  tally=counted({"x", "y"}, {"x": 1, "y": 1}))
    assert phase.problems() == []


def test_an_accepted_screening_never_recorded_is_a_loss() -> None:
    phase = Phase("b", ["gateway"], 10.0, answers=Counter({("gateway", "200"): 1}),
                  tally=counted({"x", "y"}, {"x": 1}))
    assert phase.problems() == ["1 accepted screening(s) never recorded"]


def test_a_screening_recorded_twice_is_a_duplicate() -> None:
    phase = Phase("b", ["gateway"], 10.0, answers=Counter({("gateway", "200"): 1}), tally=counted({"x"}, {"x": 2}))
    assert phase.problems() == ["1 duplicate record(s) or ledger entr(ies)"]


def test_a_recorded_screening_missing_from_the_ledger_is_not_fully_audited() -> None:
    phase = Phase("b", ["gateway"], 10.0, answers=Counter({("gateway", "200"): 1}),
                  tally=counted({"x"}, {"x": 1}, trails={"x": 2}))
    assert phase.problems() == ["1 accepted screening(s) not fully audited"]


def test_a_gateway_replica_that_only_answered_202_breaks_the_synchronous_promise() -> None:
    phase = Phase("b", ["gateway", "gateway-2"], 10.0,
                  answers=Counter({("gateway", "200"): 5, ("gateway-2", "202"): 5}), tally=counted(set(), {}))
    assert phase.problems() == ["gateway-2 answered no classify synchronously"]


def test_answers_are_summed_over_gateway_replicas_by_status() -> None:
    phase = Phase("b", ["gateway", "gateway-2"], 10.0,
                  answers=Counter({("gateway", "200"): 5, ("gateway-2", "200"): 4, ("gateway-2", "202"): 1}))
    assert phase.by_status() == Counter({"200": 9, "202": 1})
