"""Fault injection on the session's platform: the subset of ``clinomic chaos`` fast enough for every CI run.

Each case breaks one part of the platform under classify load and a bulk batch, heals it, and checks what the
full command checks (devstack.chaos): every accepted screening recorded exactly once and audited exactly once,
the organisation's chain verifying, no 5xx but a 503 with Retry-After, classify as fast as before. The row of
the fault table is printed (``pytest -s``). The rest of the faults run with ``clinomic chaos``; the broker
restart has its own test (tests/integration/test_delivery_guarantees.py).
"""

from __future__ import annotations

import pytest

from devstack import chaos
from devstack.stack import Platform

pytestmark = pytest.mark.disruptive


@pytest.mark.parametrize("fault", [chaos.kill_9("audit"), chaos.kill_9("screening"), chaos.kill_9("gateway"),
                                   chaos.intake_fills(lasting=8.0), chaos.database_refuses()],
                         ids=lambda f: f.name)
async def test_after_the_fault_every_accepted_screening_is_recorded_and_audited_exactly_once(
    fault: chaos.Fault, platform: Platform
) -> None:
    outcome = await chaos.exercise(platform, fault, batch_rows=100)
    print("\n" + chaos.table([outcome]))
    assert outcome.accepted > 0, "the load was accepted before the fault"
    assert outcome.problems == []
