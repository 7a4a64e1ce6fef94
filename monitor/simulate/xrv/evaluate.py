"""Replay real-metadata streams through the drift engine and say when, and where, it alarmed.

The real-metadata scenario of docs/simulate.md: two sites, one scanning dataset A throughout,
one switching from A to B mid-stream, fed to one :class:`~monitor.drift.engine.DriftEngine` in
event-time order.
``benchmarks/eval_xrv.py`` and ``tests/integration/test_xrv_evaluation.py`` both use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.events import InferenceEvent
from monitor.simulate.xrv.datasets import XrvDataset
from monitor.simulate.xrv.streams import (
    DEFAULT_START,
    shared_fields,
    stable_stream,
    switching_stream,
)

STABLE_SITE: Final = "site-stable"
SWITCHING_SITE: Final = "site-switch"


@dataclass(frozen=True, slots=True)
class SiteAlert:
    """An alert, placed by the position (0-based) of its triggering event in its site's stream."""

    site_id: str
    index: int
    detector: str
    features: tuple[str, ...]
    explanation: str


@dataclass
class Replay:
    """Alerts raised, and window checks scored / drifting, per (site, detector)."""

    alerts: list[SiteAlert] = field(default_factory=list)
    checks: Counter[tuple[str, str]] = field(default_factory=Counter)
    drifting: Counter[tuple[str, str]] = field(default_factory=Counter)

    def first_alerts(self, site_id: str, after: int = 0) -> dict[str, int]:
        """Detector -> index of its first alert at ``site_id`` at or after event ``after``."""
        first: dict[str, int] = {}
        for alert in self.alerts:
            if alert.site_id == site_id and alert.index >= after:
                first.setdefault(alert.detector, alert.index)
        return first

    def alerts_before(self, site_id: str, index: int | None = None) -> list[SiteAlert]:
        """Alerts at ``site_id`` raised by an event before ``index`` (all when None)."""
        return [
            a for a in self.alerts if a.site_id == site_id and (index is None or a.index < index)
        ]


def replay(events: Iterable[InferenceEvent], config: EngineConfig | None = None) -> Replay:
    """Feed ``events`` (already in event-time order) to a fresh engine; collect what it says."""
    engine = DriftEngine(config or EngineConfig())
    result = Replay()
    seen: Counter[str] = Counter()
    for event in events:
        index = seen[event.site_id]
        seen[event.site_id] += 1
        outcome = engine.process(event)
        for check in outcome.checks:
            if check.result is not None:
                result.checks[event.site_id, check.detector] += 1
                result.drifting[event.site_id, check.detector] += check.result.is_drift
        for alert in outcome.alerts:
            result.alerts.append(
                SiteAlert(event.site_id, index, alert.detector, alert.features, alert.explanation)
            )
    return result


def two_site_scenario(
    first: XrvDataset | str,
    second: XrvDataset | str,
    n_before: int,
    n_after: int,
    seed: int,
    wheel: Path,
    *,
    fields: Collection[str] | None = None,
) -> list[InferenceEvent]:
    """A stable site on ``first`` and a site switching from ``first`` to ``second``, merged.

    Both sites keep the same fields (by default those both datasets fill) and acquire a study
    every 30 minutes, the switching site 15 minutes after the stable one.
    """
    if fields is None:
        fields = shared_fields(first, second, wheel)
    stable = stable_stream(first, n_before + n_after, STABLE_SITE, seed, fields=fields, wheel=wheel)
    switching = switching_stream(
        first,
        second,
        n_before,
        n_after,
        SWITCHING_SITE,
        seed,
        fields=fields,
        start=DEFAULT_START + timedelta(minutes=15),
        wheel=wheel,
    )
    return sorted([*stable, *switching], key=lambda event: event.occurred_at)
