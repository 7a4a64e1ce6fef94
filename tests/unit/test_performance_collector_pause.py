"""The tracker's refresh pauses Python's cyclic garbage collector and restores it as it was,
after an error too."""

from __future__ import annotations

import gc

import pytest

from monitor.service.performance.store import _collector_paused


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_off_inside_and_as_it_was_after(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with _collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(RuntimeError), _collector_paused():
            raise RuntimeError("a failed refresh")
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
