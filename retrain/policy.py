"""When an alert should start a retraining job: the retraining policy (values in, decision out).

An alert triggers a retrain request for its model when:

1. its detector matches one of the policy's ``triggers`` (``fnmatch`` patterns such as
   ``"performance.*"`` or ``"chi2"``) and its effect size reaches that trigger's floor (the
   "severity" of a drift or performance alert is its effect size in the detector's own unit);
2. enough newly labelled cases exist to train on: at least ``min_new_labels`` for the model
   overall and ``min_new_labels_site`` from the alerting site, counted since the model's last
   retrain request;
3. the model's last request is at least ``cooldown_hours`` old.

The store makes a request unique per (model, alert), so a repeated or redelivered alert never
starts two jobs; this module only decides.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from monitor.drift.base import DetectorConfig
from monitor.drift.severity import Severity


class Trigger(BaseModel):
    """Alerts of detectors matching ``detector`` (a glob) with at least ``min_effect_size``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detector: str = Field(min_length=1)
    min_effect_size: float = Field(default=0.0, ge=0.0)


class RetrainPolicy(DetectorConfig):
    """The retraining policy (frozen, fingerprinted, stored with every request)."""

    triggers: tuple[Trigger, ...] = (
        Trigger(detector="performance.*"),
        Trigger(detector="mmd"),
        Trigger(detector="embedding_mmd"),
        Trigger(detector="chi2", min_effect_size=0.3),
        Trigger(detector="score_ks", min_effect_size=0.3),
    )
    """Default: any performance alert; pixel-statistic or embedding (image-content) drift; a
    large change of acquisition categories or of the score distribution. Metadata KS and
    missingness alone do not retrain."""
    min_severity: Severity = Severity.WARNING
    """Alerts below this severity (``info``: small effects, one detector, data quality) are
    kept for dashboards and reports and never start a job."""
    cooldown_hours: float = Field(default=24.0, ge=0.0)
    min_new_labels: int = Field(default=500, ge=0)
    min_new_labels_site: int = Field(default=100, ge=0)


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What the policy needs to know about one alert."""

    detector: str
    effect_size: float
    site_id: str
    model_name: str
    severity: Severity = Severity.WARNING


@dataclass(frozen=True, slots=True)
class LabelCounts:
    """Labelled cases of the model since its last retrain request: overall and at the site."""

    overall: int
    site: int


@dataclass(frozen=True, slots=True)
class Decision:
    trigger: bool
    reason: str


def decide(
    alert: AlertFacts,
    policy: RetrainPolicy,
    labels: LabelCounts,
    last_request_at: datetime | None,
    now: datetime,
) -> Decision:
    """Whether ``alert`` should start a retraining job now, and why (or why not)."""
    if not alert.severity.at_least(policy.min_severity):
        return Decision(
            False,
            f"{alert.severity} alerts do not trigger retraining (the policy needs "
            f"{policy.min_severity} or above)",
        )
    matching = [t for t in policy.triggers if fnmatch.fnmatchcase(alert.detector, t.detector)]
    if not matching:
        return Decision(False, f"{alert.detector} alerts do not trigger retraining")
    if not any(alert.effect_size >= t.min_effect_size for t in matching):
        floor = min(t.min_effect_size for t in matching)
        return Decision(
            False,
            f"{alert.detector} effect {alert.effect_size:.3g} is below the trigger's {floor:.3g}",
        )
    if last_request_at is not None and now - last_request_at < timedelta(
        hours=policy.cooldown_hours
    ):
        return Decision(
            False,
            f"cooling down: the last request for {alert.model_name} was at "
            f"{last_request_at:%Y-%m-%d %H:%M} UTC ({policy.cooldown_hours:g} h cooldown)",
        )
    if labels.overall < policy.min_new_labels or labels.site < policy.min_new_labels_site:
        return Decision(
            False,
            f"too few new labelled cases: {labels.overall} overall (need {policy.min_new_labels}), "
            f"{labels.site} from {alert.site_id} (need {policy.min_new_labels_site})",
        )
    return Decision(
        True,
        f"{alert.detector} alert at {alert.site_id} (effect {alert.effect_size:.3g}); "
        f"{labels.overall} new labelled cases, {labels.site} from the site",
    )
