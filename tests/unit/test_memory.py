"""``shared.memory.gc_paused``: the cyclic collector is off inside and left as it was found."""

from __future__ import annotations

import gc

import pytest

from shared.memory import gc_paused


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_off_inside_and_left_as_it_was_found(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_the_collector_is_back_after_an_exception_inside() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError
    assert gc.isenabled()
