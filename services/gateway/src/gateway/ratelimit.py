"""Per-endpoint rate limits (the `limits` library): in-process, or shared by all replicas through Redis.

Rules are named (``login``, ``login_account``, ``refresh``, ``mfa``, ``classify``, ``export``, ``default``) and configured by
``RATE_LIMIT_<NAME>`` in the `limits` notation (``30/minute``, ``5/second;100/hour``). With ``REDIS_URL``
every gateway replica counts in the same Redis keys, so a client cannot multiply its allowance by spreading
requests over replicas. Should Redis fail, each replica falls back to counting in-process (and logs it)
rather than refusing or waving through all traffic.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RULES = ("login", "login_account", "refresh", "mfa", "classify", "export", "default")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_seconds: int


class RateLimits:
    def __init__(self, rules: dict[str, str], redis_url: str | None, namespace: str = "clinomic") -> None:
        self._memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._shared = SlidingWindowCounterRateLimiter(_redis(redis_url)) if redis_url else None
        self._rules: dict[str, list[RateLimitItem]] = {name: parse_many(rule) for name, rule in rules.items()}
        self._namespace = namespace
        self._configured = False
        self._shared_failing_since: float | None = None

    @property
    def shared(self) -> bool:
        return self._shared is not None

    def configure(self, settings: Any) -> None:
        """Take every rule and the key namespace from the gateway's settings (once)."""
        if self._configured:
            return
        for name in RULES:
            spec = getattr(settings, f"rate_limit_{name}", None)
            if spec:
                self._rules[name] = parse_many(spec)
        self._namespace = getattr(settings, "rate_limit_namespace", self._namespace) or self._namespace
        self._configured = True

    async def hit(self, rule: str, who: str) -> Verdict:
        items = self._rules.get(rule) or self._rules["default"]
        identifiers = (self._namespace, rule, who)
        retry_shared = self._shared_failing_since is None or time.monotonic() - self._shared_failing_since > 5.0
        if self._shared is not None and retry_shared:
            try:
                verdict = await _hit(self._shared, items, identifiers)
                if self._shared_failing_since is not None:
                    log.warning("shared rate limits are back (Redis reachable again)")
                    self._shared_failing_since = None
                return verdict
            except (RedisError, StorageError, OSError, TimeoutError):  # retry Redis in 5 s; count here meanwhile
                if self._shared_failing_since is None:
                    log.warning("shared rate limits unavailable (Redis); counting in this replica meanwhile")
                self._shared_failing_since = time.monotonic()
        return await _hit(self._memory, items, identifiers)


def _redis(url: str) -> RedisStorage:
    """Redis through redis-py's asyncio client (``redis://`` and ``rediss://``), with short timeouts so that a
    Redis outage costs a request a second at most before the in-process fallback answers."""
    uri = url if url.startswith("async+") else f"async+{url}"
    return RedisStorage(uri, implementation="redispy", socket_timeout=1.0, socket_connect_timeout=1.0)


async def _hit(limiter: SlidingWindowCounterRateLimiter, items: list[RateLimitItem],
               identifiers: tuple[str, ...]) -> Verdict:
    for item in items:
        if not await limiter.hit(item, *identifiers):
            stats = await limiter.get_window_stats(item, *identifiers)
            return Verdict(False, max(1, math.ceil(stats.reset_time - time.time())))
    return Verdict(True, 0)
