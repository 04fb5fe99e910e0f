"""Requests waiting for their screening to be recorded, keyed by screening id."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any


class Outcomes:
    """Futures resolved by the recorded-events subscriber; one per classify request still waiting."""

    def __init__(self) -> None:
        self._waiting: dict[uuid.UUID, asyncio.Future[Any]] = {}

    def expect(self, screening_id: uuid.UUID) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[screening_id] = future
        return future

    def forget(self, screening_id: uuid.UUID) -> None:
        self._waiting.pop(screening_id, None)

    def resolve(self, screening_id: uuid.UUID, outcome: Any) -> None:
        future = self._waiting.pop(screening_id, None)
        if future is not None and not future.done():
            future.set_result(outcome)
