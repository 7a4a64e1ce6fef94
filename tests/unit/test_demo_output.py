"""What the demo's console says between its stages: durations, and instructions on request."""

from __future__ import annotations

import io

import pytest

from monitor.service.demo.loop import LoopState, duration
from monitor.service.demo.run import reprint_on_enter


@pytest.mark.parametrize(
    ("seconds", "said"), [(0.4, "0 s"), (42.3, "42 s"), (59.6, "1 min 00 s"), (184, "3 min 04 s")]
)
def test_a_stage_time_reads_in_seconds_then_minutes(seconds: float, said: str) -> None:
    assert duration(seconds) == said


def test_enter_reprints_the_last_instructions_once_per_press(
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = LoopState()
    reprint_on_enter(state, io.StringIO("\n"))  # nothing to show yet: nothing shown
    assert capsys.readouterr().err == ""
    state.instructions = "Waiting for approval. Two demo ML-ops identities approve"
    reprint_on_enter(state, io.StringIO("\n\n"))
    assert capsys.readouterr().err.count("Waiting for approval.") == 2
