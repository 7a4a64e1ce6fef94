"""GracefulStop: a stop drains within its bound, else the children stop and the process exits 1.

Each case runs a small Python process that holds a GracefulStop and "drains" for a set time
once asked to stop; the commands' own stops are tested on the real commands
(tests/integration/test_lifecycle.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.service.lifecycle import EXIT_NOT_DRAINED

WORKER = """
import sys, time
from pathlib import Path
from monitor.service.lifecycle import GracefulStop

bound_s, drain_s, marker = float(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
with GracefulStop("test", bound_s=bound_s) as stopping:
    stopping.on_abandon(lambda: marker.write_text("children stopped"))
    print("ready", flush=True)
    stopping.requested.wait()
    time.sleep(drain_s)
print("drained", flush=True)
"""


def _stop_worker(
    tmp_path: Path, bound_s: float, drain_s: float, signals: list[signal.Signals]
) -> tuple[int, float, str]:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(bound_s), str(drain_s), str(tmp_path / "marker")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "ready"
    started = time.monotonic()
    for sig in signals:
        worker.send_signal(sig)
        time.sleep(0.2)
    code = worker.wait(60)
    return code, time.monotonic() - started, worker.stdout.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_drain_within_the_bound_ends_normally(tmp_path: Path, sig: signal.Signals) -> None:
    code, _, output = _stop_worker(tmp_path, bound_s=20, drain_s=0.5, signals=[sig])
    assert code == 0 and "drained" in output
    assert not (tmp_path / "marker").exists()


def test_a_drain_past_the_bound_stops_the_children_and_exits_1(tmp_path: Path) -> None:
    code, seconds, output = _stop_worker(tmp_path, bound_s=1, drain_s=60, signals=[signal.SIGTERM])
    assert code == EXIT_NOT_DRAINED and seconds < 10
    assert "drained" not in output and "stopping without draining" in output
    assert (tmp_path / "marker").read_text() == "children stopped"


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    signals = [signal.SIGINT, signal.SIGINT]  # a second Ctrl-C
    code, seconds, _ = _stop_worker(tmp_path, bound_s=60, drain_s=60, signals=signals)
    assert code == EXIT_NOT_DRAINED and seconds < 10
    assert (tmp_path / "marker").read_text() == "children stopped"
