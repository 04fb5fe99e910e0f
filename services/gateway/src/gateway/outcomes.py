"""Requests waiting for their screening to be recorded, keyed by screening id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any


class Outcomes:
    """Futures resolved by the recorded-events subscriber; several requests may wait for one screening
    (a retried request with the same ``Idempotency-Key`` waits for the first one's outcome)."""

    def __init__(self) -> None:
        self._waiting: dict[uuid.UUID, list[asyncio.Future[Any]]] = {}
        #: Called when a request starts waiting: the recorded-events consumer polls briskly from then on
        #: (``shared.kafka.Tempo``), so an answer after a quiet spell does not wait for a resting poll.
        self.heads_up: Callable[[], None] = lambda: None

    def expect(self, screening_id: uuid.UUID) -> asyncio.Future[Any]:
        self.heads_up()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(screening_id, []).append(future)
        return future

    def forget(self, screening_id: uuid.UUID, future: asyncio.Future[Any] | None = None) -> None:
        """Stop waiting: one future (when given), else every waiter of the screening."""
        if future is None:
            self._waiting.pop(screening_id, None)
            return
        waiters = self._waiting.get(screening_id)
        if waiters is not None:
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                del self._waiting[screening_id]

    def waiting(self, screening_id: uuid.UUID) -> bool:
        """Whether a request waits for the screening (so its recorded event is worth parsing)."""
        return screening_id in self._waiting

    def resolve(self, screening_id: uuid.UUID, outcome: Any) -> None:
        for future in self._waiting.pop(screening_id, []):
            if not future.done():
                future.set_result(outcome)
