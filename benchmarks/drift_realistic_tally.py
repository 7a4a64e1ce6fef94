"""What benchmarks/drift_realistic.py measures in each engine run, and the tables it prints.

Kept apart from the runs so that what a number means (a delay counts the alerting study; time in
alarm counts studies after the reference inside an open episode) is defined in one place, next
to the table that shows it.
"""

from __future__ import annotations

import statistics
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from scipy.stats import binomtest

from monitor.drift.config import EMBEDDING_DETECTOR, ONLINE_DETECTOR, EngineConfig
from monitor.drift.engine import Outcome
from monitor.drift.severity import Severity
from monitor.simulate.realistic import ChangeKind, SiteTemplate

DETECTORS: Final = ("ks", "chi2", "missingness", "score_ks", "mmd", ONLINE_DETECTOR)
GOAL_DELAY: Final = 250
"""Issue 20: each injected change detected within 250 studies..."""
GOAL_ALERTS_PER_YEAR: Final = 1.0
"""... and at most one alert per detector per stable year per site."""
Background = Literal["wandering", "exchangeable"]


@dataclass
class Recorder:
    """What one engine run said, study by study (indices are positions in the site's stream)."""

    batch: frozenset[str]
    open: dict[uuid.UUID, str] = field(default_factory=dict)
    reference_at: int | None = None
    alerts: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)
    notified: list[tuple[int, str]] = field(default_factory=list)
    """(study, detector) where an alert first reached ``warning``: opened at it or raised to it
    by a later check. What pages people (``severity.notify_at_least``); ``info`` does not."""
    severity: dict[uuid.UUID, Severity] = field(default_factory=dict)
    checks: Counter[str] = field(default_factory=Counter)
    drifting: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    drifting_windows: int = 0
    studies: int = 0
    """Studies after the reference was frozen."""
    in_alarm: Counter[str] = field(default_factory=Counter)
    """Of those, studies inside an open episode, per detector and "any"."""

    def record(self, index: int, outcome: Outcome) -> None:
        if outcome.reference_frozen is not None:
            self.reference_at = index
        scored = [c for c in outcome.checks if c.result is not None]
        for check in scored:
            self.checks[check.detector] += 1
            self.drifting[check.detector] += bool(check.result and check.result.is_drift)
        window = [c for c in scored if c.detector in self.batch]
        if window:
            self.windows += 1
            self.drifting_windows += any(c.result and c.result.is_drift for c in window)
        for alert in outcome.alerts:
            self.alerts.append((index, alert.detector, alert.features))
            self.open[alert.alert_id] = alert.detector
            self._raise(index, alert.alert_id, alert.detector, alert.severity)
        for update in outcome.updates:
            if update.kind == "ended":
                self.open.pop(update.alert_id, None)
            elif update.severity is not None and update.alert_id in self.open:
                detector = self.open[update.alert_id]
                self._raise(index, update.alert_id, detector, update.severity)
        if self.reference_at is not None and index > self.reference_at:
            self.studies += 1
            self.in_alarm.update(set(self.open.values()) | ({"any"} if self.open else set()))

    def _raise(self, index: int, alert_id: uuid.UUID, detector: str, level: Severity) -> None:
        before = self.severity.get(alert_id)
        if before is None or level.rank > before.rank:
            self.severity[alert_id] = level
            if level.at_least(Severity.WARNING) and not (
                before is not None and before.at_least(Severity.WARNING)
            ):
                self.notified.append((index, detector))

    def first_alerts(self, start: int, stop: int, notified: bool = False) -> dict[str, int]:
        """Detector (and "any") -> delay of its first alert in [start, stop): studies from
        ``start`` up to and including the alerting one; with ``notified``, of the first alert
        reaching ``warning`` (the first page)."""
        first: dict[str, int] = {}
        raised = self.notified if notified else [(i, d) for i, d, _ in self.alerts]
        for index, detector in raised:
            if start <= index < stop:
                first.setdefault(detector, index - start + 1)
        if first:
            first["any"] = min(first.values())
        return first


@dataclass
class Trial:
    """One change at one onset: delays with it, and the unchanged run's alerts in that span."""

    onset: int
    delays: dict[str, int]
    background: dict[str, int]
    open_at_onset: bool
    notified: dict[str, int] = field(default_factory=dict)
    """Like ``delays``, for the first alert reaching ``warning``."""


@dataclass
class Cell:
    """Everything measured for one (config, template), summed over its sites."""

    stable: list[Recorder] = field(default_factory=list)
    months: float = 0.0
    trials: dict[tuple[Background, ChangeKind], list[Trial]] = field(default_factory=dict)
    exchangeable: list[Recorder] = field(default_factory=list)
    events: int = 0


Cells = dict[tuple[str, SiteTemplate], Cell]


def report(cells: Cells, configs: Sequence[tuple[str, EngineConfig]], heading: str) -> None:
    """Print every table: stable stretches, changes on both backgrounds, nominal level, goal."""
    print(f"\n## Stable stretches: {heading}\n")
    _alerts_per_month(cells)
    _time_in_alarm(cells)
    _features(cells)
    for background in ("wandering", "exchangeable"):
        _changes(cells, background)
    _exchangeable(cells, configs)
    _goal(cells)


def _alerts_per_month(cells: Cells) -> None:
    print("Alerts per stable month and site, by detector:\n")
    print("(in brackets: those reaching warning, which notify; info alerts are only shown)\n")
    print(
        f"| config | template | site-months | {' | '.join(DETECTORS)} | all | per site-year | "
        "notifying per site-year |"
    )
    print("|---|---|---:|" + "---:|" * (len(DETECTORS) + 3))
    for (label, template), cell in cells.items():
        alerts = Counter(d for r in cell.stable for _, d, _ in r.alerts)
        notified = Counter(d for r in cell.stable for _, d in r.notified)
        rates = " | ".join(
            f"{alerts[d] / cell.months:.2f} ({notified[d] / cell.months:.2f})" for d in DETECTORS
        )
        total = alerts.total() / cell.months
        print(
            f"| {label} | {template.value} | {cell.months:.1f} | {rates} | {total:.2f} | "
            f"{12 * total:.1f} | {12 * notified.total() / cell.months:.1f} |"
        )


def _time_in_alarm(cells: Cells) -> None:
    print("\nTime in alarm (share of studies after the reference inside an open episode) and, in")
    print("brackets, the share of that detector's checks that drifted:\n")
    print(f"| config | template | {' | '.join(DETECTORS)} | any |")
    print("|---|---|" + "---:|" * (len(DETECTORS) + 1))
    for (label, template), cell in cells.items():
        studies = sum(r.studies for r in cell.stable)
        shares = " | ".join(
            f"{_ratio(sum(r.in_alarm[d] for r in cell.stable), studies)} "
            f"({_ratio(*_drifting(cell.stable, d))})"
            for d in DETECTORS
        )
        any_alarm = _ratio(sum(r.in_alarm["any"] for r in cell.stable), studies)
        print(f"| {label} | {template.value} | {shares} | {any_alarm} |")


def _features(cells: Cells) -> None:
    print("\nFeatures named by the stable stretches' alerts (alerts naming each):\n")
    for (label, template), cell in cells.items():
        named = Counter(
            f"{detector}:{feature}"
            for recorder in cell.stable
            for _, detector, features in recorder.alerts
            for feature in features
        )
        shown = ", ".join(f"{name} {count}" for name, count in named.most_common(8)) or "none"
        print(f"- {label}, {template.value}: {shown}")


def _changes(cells: Cells, background: Background) -> None:
    where = {
        "wandering": "the wandering stable stream (what a site would see)",
        "exchangeable": "the exchangeable stream (no wander: what the detectors can see)",
    }[background]
    print(f"\n## Changes on {where}\n")
    print("Delay in studies from the onset to the first alert: median [min-max] (trials with an")
    print("alert / trials). background: trials whose unchanged stream alerted in the same span;")
    print("open: trials with an episode already open at the onset.\n")
    detectors = " | ".join(DETECTORS[:4])
    print(
        f"| config | template | change | any | ≤ {GOAL_DELAY} | first warning | "
        f"≤ {GOAL_DELAY} | {detectors} | background | open |"
    )
    print("|---|---|---|---|---:|---|---:|" + "---|" * 4 + "---:|---:|")
    for (label, template), cell in cells.items():
        for (kind_background, kind), trials in cell.trials.items():
            if kind_background != background:
                continue
            delays = [
                _delay_cell([t.delays[d] for t in trials if d in t.delays], len(trials))
                for d in ("any", *DETECTORS[:4])
            ]
            within = sum(t.delays.get("any", GOAL_DELAY + 1) <= GOAL_DELAY for t in trials)
            warned = _delay_cell([t.notified["any"] for t in trials if t.notified], len(trials))
            warned_within = sum(t.notified.get("any", GOAL_DELAY + 1) <= GOAL_DELAY for t in trials)
            alerted = sum("any" in t.background for t in trials)
            opened = sum(t.open_at_onset for t in trials)
            n = len(trials)
            print(
                f"| {label} | {template.value} | {kind.value} | {delays[0]} | {within}/{n} | "
                f"{warned} | {warned_within}/{n} | "
                f"{' | '.join(delays[1:])} | {alerted}/{n} | {opened}/{n} |"
            )


def _delay_cell(delays: list[int], trials: int) -> str:
    if not delays:
        return f"— (0/{trials})"
    return f"{statistics.median(delays):g} [{min(delays)}–{max(delays)}] ({len(delays)}/{trials})"


def _exchangeable(cells: Cells, configs: Sequence[tuple[str, EngineConfig]]) -> None:
    print("\n## Exchangeable streams without a change: false alarms against the nominal level\n")
    print("Drifting checks / checks (rate, 95% Clopper-Pearson interval) against the level each")
    print("window detector tests at; online: exceedances per 10,000 events against 10,000 / ERT;")
    print("alerts against the bound family_alpha ** open_after per window (docs/drift.md).\n")
    for label, config in configs:
        recorders = [
            r for (name, _), cell in cells.items() if name == label for r in cell.exchangeable
        ]
        levels = {
            name: float(getattr(detector, "p_value_threshold", float("nan")))
            # v1 streams: the embedding detector neither runs nor counts in k.
            for name, detector in config.batch_detectors(without=(EMBEDDING_DETECTOR,)).items()
        }
        print(f"| {label} | drifting / checks | rate | 95% interval | nominal |")
        print("|---|---:|---:|---|---:|")
        for detector in DETECTORS:
            if detector == ONLINE_DETECTOR:
                _online_row(recorders, config)
                continue
            drifting, checks = _drifting(recorders, detector)
            if checks:
                print(f"| {detector} | {_rate_cells(drifting, checks)} | {levels[detector]:.2%} |")
        windows = sum(r.windows for r in recorders)
        drifting_windows = sum(r.drifting_windows for r in recorders)
        alpha = config.family_alpha or float("nan")
        if windows:
            cells_text = _rate_cells(drifting_windows, windows)
            print(f"| any window detector | {cells_text} | ≤ {alpha:.2%} |")
        alerts = Counter(d for r in recorders for _, d, _ in r.alerts)
        named = ", ".join(f"{d} {n}" for d, n in sorted(alerts.items())) or "none"
        bound = alpha**config.alarms.open_after * windows
        print(f"| alerts | {alerts.total()} in {windows} windows ({named}) | | | ≤ {bound:.1f} |")
        print()


def _rate_cells(hits: int, trials: int) -> str:
    low, high = binomtest(hits, trials).proportion_ci()
    return f"{hits}/{trials} | {hits / trials:.2%} | {low:.2%}–{high:.2%}"


def _online_row(recorders: Sequence[Recorder], config: EngineConfig) -> None:
    online = config.detectors.online
    exceedances = sum(r.drifting[ONLINE_DETECTOR] for r in recorders)
    events = sum(r.studies for r in recorders)
    if online is None or not events:
        return
    low, high = binomtest(exceedances, events).proportion_ci()
    per = 10_000
    print(
        f"| {ONLINE_DETECTOR} | {exceedances} in {events:,} events | "
        f"{exceedances / events * per:.2f} | {low * per:.2f}–{high * per:.2f} | "
        f"{per / online.detector.ert:.2f} |"
    )


def _goal(cells: Cells) -> None:
    print(
        f"\n## Against the goal: ≤ {GOAL_ALERTS_PER_YEAR:g} alert per detector per stable "
        f"site-year, every change detected within {GOAL_DELAY} studies\n"
    )
    for (label, template), cell in cells.items():
        alerts = Counter(d for r in cell.stable for _, d, _ in r.alerts)
        notified = Counter(d for r in cell.stable for _, d in r.notified)
        worst = max(DETECTORS, key=lambda d: alerts[d])
        per_year = alerts[worst] / cell.months * 12
        worst_notified = max(DETECTORS, key=lambda d: notified[d])
        notified_per_year = notified[worst_notified] / cell.months * 12
        in_alarm = _ratio(
            sum(r.in_alarm["any"] for r in cell.stable), sum(r.studies for r in cell.stable)
        )
        counts = []
        for background in ("wandering", "exchangeable"):
            trials = [t for (b, _), ts in cell.trials.items() if b == background for t in ts]
            within = sum(t.delays.get("any", GOAL_DELAY + 1) <= GOAL_DELAY for t in trials)
            warned = sum(t.notified.get("any", GOAL_DELAY + 1) <= GOAL_DELAY for t in trials)
            counts.append(f"{within} ({warned} warning)/{len(trials)} on the {background} stream")
        print(
            f"- {label}, {template.value}: worst detector {worst}, {per_year:.1f} alerts per "
            f"site-year (notifying: {worst_notified}, {notified_per_year:.1f}); in alarm "
            f"{in_alarm} of the time; changes alerted (warning) within {GOAL_DELAY} studies: "
            f"{', '.join(counts)}"
        )


def _drifting(recorders: Sequence[Recorder], detector: str) -> tuple[int, int]:
    """(drifting checks, checks) of ``detector`` over ``recorders``."""
    drifting = sum(r.drifting[detector] for r in recorders)
    return drifting, sum(r.checks[detector] for r in recorders)


def _ratio(numerator: int, denominator: int) -> str:
    return f"{numerator / denominator:.0%}" if denominator else "—"
