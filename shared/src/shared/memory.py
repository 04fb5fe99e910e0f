"""Bulk work and the cyclic garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Without the cyclic collector while bulk work builds its results: tens of thousands of new container
    objects set it off again and again over the ones already built (more than half of the building time of
    20,000 assessments in inference), and none of them is garbage. Hold it around synchronous code only, not
    across an ``await``. Safe across threads: the collector is re-enabled by the call that found it
    enabled."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
