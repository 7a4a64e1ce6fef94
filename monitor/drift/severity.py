"""How serious a drifting check is: ``info``, ``warning`` or ``critical``.

A site manager paged at night needs to know whether to act now, look tomorrow, or only note it.
The severity of a drifting check comes from two things:

* **How far the effect lies beyond its threshold**, as the ratio ``effect / threshold``. The
  threshold is the one learned from the reference (``monitor.drift.calibration``), else the
  detector's configured floor. For the online detector it is ``statistic / threshold``. A ratio
  below ``warning_ratio`` (1.5) is ``info``, below ``critical_ratio`` (3) ``warning``, and above
  that ``critical``.
* **How many window detectors agree**: when at least ``agreeing_to_raise`` (2) of them drift in
  the same window, the severity is raised one level. Independent evidence that the same studies
  changed is what separates a new scanner from one noisy feature.

Missingness is a data-quality finding: ``info``, unless a field the model depends on
(``required_fields``, by default the pixel statistics) newly goes missing in at least
``missing_share`` (half) of the window, which is ``warning``.

By default only ``warning`` and above notify (the alerts topic) or trigger retraining; ``info``
alerts are stored and shown on dashboards and in reports.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Final

from pydantic import Field

from monitor.drift.base import DetectorConfig, DriftResult
from monitor.drift.features import PIXEL_FIELD

ONLINE = "online_hotelling"
MISSINGNESS = "missingness"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, minimum: Severity) -> bool:
        return self.rank >= minimum.rank

    def raised(self) -> Severity:
        """One level up (``critical`` stays)."""
        return _BY_RANK[min(self.rank + 1, 2)]


_RANKS: Final = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_BY_RANK: Final = {rank: severity for severity, rank in _RANKS.items()}


def highest(*severities: Severity | None) -> Severity | None:
    """The most serious of ``severities`` (None when there is none)."""
    present = [s for s in severities if s is not None]
    return max(present, key=lambda s: s.rank) if present else None


def at_least(minimum: Severity) -> tuple[str, ...]:
    """The severity values at or above ``minimum`` (for a SQL ``IN``)."""
    return tuple(s.value for s in Severity if s.at_least(minimum))


class SeverityConfig(DetectorConfig):
    """The thresholds of :func:`of_check` (``EngineConfig.severity``)."""

    warning_ratio: float = Field(default=1.5, ge=1.0)
    critical_ratio: float = Field(default=3.0, ge=1.0)
    agreeing_to_raise: int = Field(default=2, ge=2)
    required_fields: tuple[str, ...] = (PIXEL_FIELD,)
    missing_share: float = Field(default=0.5, gt=0.0, le=1.0)
    notify_at_least: Severity = Severity.WARNING
    """Alerts below this are stored and shown, never published on the alerts topic."""


def ratio(detector: str, result: DriftResult, floor: float) -> float:
    """How many times its threshold the result's effect is (``inf`` against a zero floor)."""
    if detector == ONLINE:
        threshold, value = result.threshold or 0.0, result.statistic
    else:
        threshold = result.effect_threshold if result.effect_threshold is not None else floor
        value = result.effect_size
    return value / threshold if threshold > 0 else math.inf


def of_check(
    detector: str, result: DriftResult, floor: float, agreeing: int, config: SeverityConfig
) -> Severity | None:
    """The severity of a drifting result (None for a quiet one); ``agreeing`` counts the window
    detectors drifting in the same window, this one included (1 for the online detector)."""
    if not result.is_drift:
        return None
    if detector == MISSINGNESS:
        return Severity.WARNING if _model_field_gone(result, config) else Severity.INFO
    size = ratio(detector, result, floor)
    if size >= config.critical_ratio:
        level = Severity.CRITICAL
    elif size >= config.warning_ratio:
        level = Severity.WARNING
    else:
        level = Severity.INFO
    return level.raised() if agreeing >= config.agreeing_to_raise else level


def _model_field_gone(result: DriftResult, config: SeverityConfig) -> bool:
    """A model field significantly more often missing, by at least ``missing_share`` of the
    window (the attribution's statistic is the window's share minus the reference's)."""
    if result.threshold is None:
        return False
    return any(
        a.feature in config.required_fields
        and a.p_value is not None
        and a.p_value <= result.threshold
        and a.statistic >= config.missing_share
        for a in result.attributions
    )
