"""A batch subscriber that found nothing waits one period in all before it looks again: a record that reaches
its consumer meanwhile is taken at once, and a loop whose wait ended early still does not spin
(``shared.kafka``, docs/throughput.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faststream.kafka import KafkaBroker
from hypothesis import given
from hypothesis import strategies as st

from shared.kafka import rest_after_empty_look

PERIOD_MS = 300


class Consumer:
    """Answers ``getmany`` with nothing, after waiting its whole timeout (as aiokafka does) or at once."""

    def __init__(self, *, waits: bool) -> None:
        self.waits = waits

    async def getmany(self, *, timeout_ms: int, max_records: int | None) -> dict[Any, Any]:
        if self.waits:
            await asyncio.sleep(timeout_ms / 1000)
        return {}


def batch_loop() -> Any:
    return KafkaBroker().subscriber("t", batch=True, batch_timeout_ms=PERIOD_MS)


async def seconds_of_one_empty_look(consumer: Consumer) -> float:
    started = time.monotonic()
    assert await batch_loop().get_msg(consumer) == ()
    return time.monotonic() - started


async def test_an_empty_look_that_waited_its_period_looks_again_without_resting() -> None:
    assert await seconds_of_one_empty_look(Consumer(waits=True)) < 1.5 * PERIOD_MS / 1000


async def test_an_empty_look_that_ended_early_rests_out_the_period() -> None:
    assert await seconds_of_one_empty_look(Consumer(waits=False)) >= 0.9 * PERIOD_MS / 1000


@given(period=st.integers(1, 10_000), waited=st.floats(0, 100))
def test_the_rest_is_what_the_wait_left_of_the_period(period: int, waited: float) -> None:
    rest = rest_after_empty_look(period, waited)
    assert rest >= 0
    assert rest == 0 or abs(rest + waited - period / 1000) < 1e-9
