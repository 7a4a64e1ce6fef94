"""What the site drift page says, as values: the samples' periods, the alerts, each feature's
evidence and plot, and the page's headline (:mod:`monitor.service.drift.site_page` builds them
and renders them; tests read the same values)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from monitor.drift.alerts import StreamKey, to_datetime
from monitor.drift.features import RowBuffer
from monitor.drift.severity import Severity
from monitor.service.drift.charts import Chart

EQUIPMENT: Final = ("Modality", "Manufacturer", "ManufacturerModelName", "SoftwareVersions")
"""Features naming the equipment: when they drift, they are the likely cause, shown first."""


@dataclass(frozen=True, slots=True)
class Period:
    """A sample's size and the event times it spans (None for an empty sample)."""

    n_events: int
    first_at: datetime | None
    last_at: datetime | None

    @classmethod
    def of(cls, buffer: RowBuffer) -> Period:
        times = buffer.times
        if not len(times):
            return cls(0, None, None)
        return cls(len(times), to_datetime(float(times.min())), to_datetime(float(times.max())))


@dataclass(frozen=True, slots=True)
class AlertLine:
    """One alert of the stream as the page lists it."""

    alert_id: str
    detector: str
    severity: str
    status: str
    drift_active: bool
    since: datetime
    window_start: datetime
    window_end: datetime
    features: tuple[str, ...]
    explanation: str
    url: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """How sure: one detector's test of one feature, against its thresholds."""

    detector: str
    p_value: float | None
    p_threshold: float | None
    effect_size: float | None
    effect_name: str | None
    effect_threshold: float | None
    threshold_learned: bool
    sentence: str | None
    joint_p_value: float | None = None
    """For a multivariate test (MMD): the test's p-value over all its features together."""

    @property
    def ratio(self) -> float | None:
        """The effect in multiples of its threshold (None when either is unknown)."""
        if self.effect_size is None or not self.effect_threshold:
            return None
        return self.effect_size / self.effect_threshold

    def words(self) -> list[str]:
        """The evidence as sentences a site manager can read."""
        lines: list[str] = []
        p_value = self.p_value if self.p_value is not None else self.joint_p_value
        if p_value is not None:
            threshold = f"{self.p_threshold:.2g}" if self.p_threshold is not None else "none"
            verdict = "significant" if _at_most(p_value, self.p_threshold) else "not significant"
            how = (
                "adjusted for the features tested together"
                if self.p_value is not None
                else "one test of all the features of its group together"
            )
            lines.append(
                f"p-value {p_value:.2g} against a threshold of {threshold} ({verdict}; {how})."
            )
        if self.effect_size is not None and self.effect_name:
            source = (
                "learned from the reference, at least the configured floor"
                if self.threshold_learned
                else "the configured floor"
            )
            ratio = self.ratio
            against = (
                f", {ratio:.1f} times its threshold {self.effect_threshold:.3g} ({source})"
                if ratio is not None
                else ""
            )
            lines.append(f"Effect ({self.effect_name}) {self.effect_size:.3g}{against}.")
        return lines


@dataclass(frozen=True, slots=True)
class FeatureView:
    """One feature: what it is, whether and how it drifts, and its plot."""

    name: str
    title: str
    meaning: str
    group: str
    chart: Chart
    evidence: Evidence | None = None
    drifting: bool = False
    severity: Severity | None = None
    since: datetime | None = None
    alert_ids: tuple[str, ...] = ()

    @property
    def sort_key(self) -> tuple[int, bool, float]:
        """Most severe first; within a severity the equipment's identity (a new scanner
        explains the other changes), then the largest effect for its threshold."""
        rank = self.severity.rank if self.severity is not None else -1
        ratio = self.evidence.ratio if self.evidence is not None else None
        return (-rank, self.title not in EQUIPMENT, -(ratio or 0.0))


@dataclass(frozen=True, slots=True)
class SitePage:
    """Everything the page shows, as values (tests and the template read the same)."""

    key: StreamKey
    generated_at: datetime
    reference: Period
    reference_origin: str
    current: Period
    alerts: tuple[AlertLine, ...]
    drifting: tuple[FeatureView, ...]
    stable: tuple[FeatureView, ...]
    glossary: tuple[tuple[str, str], ...]
    appendix_url: str
    alerts_url: str
    checks: tuple[tuple[str, str], ...] = field(default=())
    """(detector label, what its latest check found) for each detector of the stream."""

    @property
    def likely_cause(self) -> tuple[str, ...]:
        """What the drifting equipment features say (a new scanner explains the rest)."""
        return tuple(
            f.evidence.sentence
            for f in self.drifting
            if f.title in EQUIPMENT and f.evidence is not None and f.evidence.sentence
        )

    @property
    def headline(self) -> str:
        """The page's first sentence: drift or not, how many features, the worst alert."""
        if not self.drifting:
            return (
                "No drift: the latest checks of every detector found no change beyond the "
                "thresholds, and no alert of this stream is drifting."
            )
        count = len(self.drifting)
        names = ", ".join(f.title for f in self.drifting[:4])
        more = f" and {count - 4} more" if count > 4 else ""
        active = [a.severity for a in self.alerts if a.drift_active]
        alerts = (
            f"{len(active)} drifting alert{'s' if len(active) != 1 else ''}, the worst "
            f"{_worst(active)}"
            if active
            else "no alert yet (an alarm needs the drift to persist)"
        )
        return (
            f"Drift: {count} feature{'s' if count != 1 else ''} changed ({names}{more}); {alerts}."
        )


def _worst(severities: Iterable[str]) -> str:
    return max((Severity(s) for s in severities), key=lambda s: s.rank).value


def _at_most(p_value: float, threshold: float | None) -> bool:
    return threshold is not None and p_value <= threshold
