"""The drift engine, default configuration, on real chest X-ray metadata.

Two sites feed one engine in event-time order: one scans dataset A throughout, the other switches
from A to B in the middle of a window. The engine must stay silent at the stable site and before
the switch, and alert soon after it.

The delay bound follows from the configuration, so it holds whatever the default window: the
window that contains the switch may still look like the reference; the next ``open_after``
windows hold only B and each drifts (their effects are far above the floors, see
docs/benchmarks.md), so the alert comes at most ``window - 1 + open_after * window`` events after
the switch, below ``(open_after + 1) * window``. Measured with the defaults of 2026-11-29
(window 250, open_after 2): 400-650 events (docs/benchmarks.md, "Drift engine on real
metadata"). Since issue 20 the default reference spans 13 weeks (4,369 studies at one every
30 minutes) and the thresholds are learned from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.drift.config import EngineConfig
from monitor.simulate.xrv import XrvDataset, locate_wheel
from monitor.simulate.xrv.evaluate import STABLE_SITE, SWITCHING_SITE, replay, two_site_scenario
from monitor.simulate.xrv.streams import STUDY_INTERVAL


@pytest.fixture(scope="session")
def xrv_wheel() -> Path:
    return locate_wheel()


@pytest.mark.parametrize(
    ("first", "second"),
    [(XrvDataset.NIH, XrvDataset.CHEXPERT), (XrvDataset.NIH, XrvDataset.OPENI)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_alert_soon_after_a_switch_and_never_without_one(
    xrv_wheel: Path, first: XrvDataset, second: XrvDataset, seed: int
) -> None:
    config = EngineConfig()
    window = config.window.size
    assert window is not None, "this scenario is written for count-based windows"
    # The switch falls 40% into a window, after four windows that hold only A.
    reference = config.reference_events(STUDY_INTERVAL.total_seconds())
    n_before = reference + 4 * window + 2 * window // 5
    n_after = (config.alarms.open_after + 2) * window
    bound = (config.alarms.open_after + 1) * window

    events = two_site_scenario(first, second, n_before, n_after, seed, xrv_wheel)
    result = replay(events, config)

    assert result.alerts_before(STABLE_SITE) == []
    assert result.alerts_before(SWITCHING_SITE, n_before) == []
    first_alerts = result.first_alerts(SWITCHING_SITE, after=n_before)
    assert first_alerts, f"no alert in {n_after} events after the switch"
    delay = min(first_alerts.values()) - n_before + 1
    assert delay < bound, f"first alert {delay} events after the switch ({first_alerts})"
    # The alert names what changed: a field both datasets fill, or the model's score.
    alerted = {f for a in result.alerts if a.site_id == SWITCHING_SITE for f in a.features}
    assert alerted & {"ViewPosition", "PatientAgeBand", "PixelSpacing", "Rows", "abnormal"}
