"""Per-endpoint rate limits (the `limits` library): in-process, or shared by all replicas through Redis."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_seconds: int


class RateLimits:
    def __init__(self, rules: dict[str, str], redis_url: str | None) -> None:
        storage: Storage = RedisStorage(redis_url.replace("redis://", "async+redis://", 1)) if redis_url \
            else MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._rules: dict[str, RateLimitItem] = {name: parse(rule) for name, rule in rules.items()}

    async def hit(self, rule: str, who: str) -> Verdict:
        item = self._rules[rule]
        if await self._limiter.hit(item, rule, who):
            return Verdict(True, 0)
        stats = await self._limiter.get_window_stats(item, rule, who)
        return Verdict(False, max(1, math.ceil(stats.reset_time - time.time())))
