"""Performance alerts: the rules of ``monitor.performance.rules`` on the tracker's
windows, through the drift alarm machinery and into the same ``alerts`` table.

Per (site, model version, finding), at each refresh:

* the window rules (sensitivity floor, AUROC drop, calibration limit) check the rolling window
  once at least ``min_new_labels`` labelled predictions have joined since their last check, so
  successive checks do not re-judge the same cases;
* the sequential rules, the error-rate CUSUM and the AUROC CUSUM, read each label exactly once:
  one read per refresh of the rows after a saved watermark, in (label time, study) order, fed
  to both; a label corrected after it was counted is not counted again. The AUROC CUSUM's
  reference is the first labelled cases it reads (``AurocCusum.reference_cases``), frozen in
  its state;
* every result goes to an ``AlarmState`` per rule (``AlarmState.observe``, as for drift), and
  transitions become alerts (detector ``performance.<rule>``, deterministic ids) and alert
  updates, published like drift alerts. A new alert names the site's drift alerts that were
  active in the same period.

The state (alarm states, open alerts, both CUSUMs, watermark, label count at the last check) is
one JSON row in ``performance_alarms``, saved in the transaction that writes the alerts.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, select, update

from monitor.drift.alarms import AlarmState
from monitor.drift.alerts import Alert, AlertUpdate, StreamKey, alert_id_for
from monitor.performance._cusum import CusumState
from monitor.performance.auroc_cusum import (
    AurocCusumState,
    start_auroc_cusum,
    update_auroc_cusum,
)
from monitor.performance.metrics import BinaryMetrics
from monitor.performance.rules import (
    RuleResult,
    case_errors,
    evaluate_rules,
    observe_rule,
    start_cusum,
    update_cusum,
)
from monitor.service.db import as_utc
from monitor.service.drift.alerts import apply_updates, write_alerts
from monitor.service.models import AlertRow, CurrentLabelRow, InferenceEventRow, PerformanceAlarmRow
from monitor.service.performance.labels import labelled_predictions
from monitor.service.settings import PerformanceSettings

PERFORMANCE_REFERENCE = uuid.UUID("3b0b1f0e-2d55-4f0c-8d3e-6a1e2f9b7c44")


class AlarmDocument(BaseModel):
    """The persisted state of one (site, model version, finding)."""

    model_config = ConfigDict(extra="forbid")

    rules: dict[str, AlarmState] = {}
    open_alerts: dict[str, uuid.UUID] = {}
    labelled_at_last_check: int | None = None
    cusum: CusumState | None = None
    auroc_cusum: AurocCusumState | None = None
    """With its frozen reference (sorted scores per class: about 40 KB of JSON at 2,000)."""
    watermark: tuple[datetime, str] | None = None


@dataclass
class WindowFacts:
    """What the tracker knows of one (site, model version, finding) at this refresh."""

    key: StreamKey
    finding: str
    rolling: BinaryMetrics
    reference_metrics: Callable[[], BinaryMetrics | None]
    """Computes the reference's metrics (None without a reference), called only when a rule
    needs them (:attr:`reference`): a logistic fit most refreshes can skip."""
    threshold: float
    labelled: int
    """Labelled predictions of the version so far: the window rules re-check after
    ``min_new_labels`` more."""
    window_start: datetime
    window_end: datetime

    @functools.cached_property
    def reference(self) -> BinaryMetrics | None:
        """The version's reference window's metrics: what the window rules compare with and
        the error-rate CUSUM starts from."""
        return self.reference_metrics()


@dataclass
class RuleOutcome:
    results: list[RuleResult] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    updates: list[AlertUpdate] = field(default_factory=list)


def evaluate(
    connection: Connection, settings: PerformanceSettings, facts: WindowFacts
) -> RuleOutcome:
    """Check the rules for one (site, model version, finding); store alerts and state, in the
    caller's transaction (the state row is locked until it ends)."""
    now = datetime.now(UTC)
    stored, document = _load(connection, facts)
    outcome = RuleOutcome(results=_window_rules(settings, facts, document))
    outcome.results += _sequential(connection, settings, facts, document)
    for result in outcome.results:
        _alarm(connection, settings, facts, document, result, outcome)
    write_alerts(connection, outcome.alerts, now)
    apply_updates(connection, outcome.updates)
    _save(connection, facts, stored, document, now)
    return outcome


def _window_rules(
    settings: PerformanceSettings, facts: WindowFacts, document: AlarmDocument
) -> list[RuleResult]:
    last = document.labelled_at_last_check
    if last is not None and facts.labelled - last < settings.min_new_labels:
        return []
    document.labelled_at_last_check = facts.labelled
    return evaluate_rules(facts.rolling, facts.reference, settings.rules, finding=facts.finding)


def _sequential(
    connection: Connection,
    settings: PerformanceSettings,
    facts: WindowFacts,
    document: AlarmDocument,
) -> list[RuleResult]:
    """The CUSUMs that are on, over the labels after the watermark: one read for both."""
    rules = settings.rules
    if rules.error_rate_cusum is None and rules.auroc_cusum is None:
        return []
    _start_sequential(settings, facts, document)
    rows = _labels_after(connection, facts, document.watermark)
    if not rows:
        return []
    labels = [row.label for row in rows]
    scores = [row.scores[facts.finding] for row in rows]
    results = []
    if rules.error_rate_cusum is not None and document.cusum is not None:
        errors = case_errors(labels, scores, facts.threshold)
        document.cusum, result = update_cusum(
            document.cusum, errors, rules.error_rate_cusum, finding=facts.finding
        )
        results.append(result)
    if rules.auroc_cusum is not None and document.auroc_cusum is not None:
        document.auroc_cusum, result = update_auroc_cusum(
            document.auroc_cusum, labels, scores, rules.auroc_cusum, finding=facts.finding
        )
        results.append(result)
    document.watermark = (as_utc(rows[-1].labelled_at), rows[-1].study_key)
    return results


def _start_sequential(
    settings: PerformanceSettings, facts: WindowFacts, document: AlarmDocument
) -> None:
    """(Re)start a CUSUM that has no state, one under another config, and the error-rate CUSUM
    while it is not ready (its reference, ``facts.reference``, may have grown since). The AUROC
    CUSUM keeps its reference scores across a restart and grows them itself."""
    error_rate, auroc = settings.rules.error_rate_cusum, settings.rules.auroc_cusum
    if error_rate is not None and (
        document.cusum is None
        or document.cusum.not_ready is not None
        or document.cusum.config_fingerprint != error_rate.fingerprint()
    ):
        document.cusum = start_cusum(facts.reference, error_rate)
    if auroc is not None and (
        document.auroc_cusum is None
        or document.auroc_cusum.config_fingerprint != auroc.fingerprint()
    ):
        document.auroc_cusum = start_auroc_cusum(auroc, previous=document.auroc_cusum)


def _labels_after(
    connection: Connection, facts: WindowFacts, watermark: tuple[datetime, str] | None
) -> list[Any]:
    events, labels = InferenceEventRow, CurrentLabelRow
    query = (
        labelled_predictions(
            facts.finding, events.scores, labels.label, labels.labelled_at, labels.study_key
        )
        .where(
            events.site_id == facts.key.site_id,
            events.model_name == facts.key.model_name,
            events.model_version == facts.key.model_version,
        )
        .order_by(labels.labelled_at, labels.study_key)
    )
    if watermark is not None:
        at, study_key = watermark
        query = query.where(
            (labels.labelled_at > at)
            | ((labels.labelled_at == at) & (labels.study_key > study_key))
        )
    return [row for row in connection.execute(query) if facts.finding in row.scores]


def _alarm(
    connection: Connection,
    settings: PerformanceSettings,
    facts: WindowFacts,
    document: AlarmDocument,
    result: RuleResult,
    outcome: RuleOutcome,
) -> None:
    alarm = document.rules.setdefault(result.rule, AlarmState())
    transition = observe_rule(alarm, result, facts.window_start.timestamp(), settings.alarms)
    detector = f"performance.{result.rule}"
    if transition == "opened":
        alert = _alert(connection, facts, result, alarm, detector)
        document.open_alerts[result.rule] = alert.alert_id
        outcome.alerts.append(alert)
    elif transition in ("continued", "ended") and result.rule in document.open_alerts:
        alert_id = document.open_alerts[result.rule]
        ended = transition == "ended"
        outcome.updates.append(
            AlertUpdate(
                alert_id=alert_id,
                kind="ended" if ended else "continued",
                at=facts.window_end,
                effect_size=result.statistic,
                reason="the rule holds again in recent checks" if ended else None,
            )
        )
        if ended:
            del document.open_alerts[result.rule]


def _alert(
    connection: Connection, facts: WindowFacts, result: RuleResult, alarm: AlarmState, detector: str
) -> Alert:
    since = datetime.fromtimestamp(alarm.streak_started_at or facts.window_start.timestamp(), UTC)
    explanation = result.explanation.rstrip(".") + "." + _drift_links(connection, facts)
    return Alert(
        alert_id=alert_id_for(facts.key, f"{detector}:{facts.finding}", alarm.episodes),
        key=facts.key,
        detector=detector,
        features=(facts.finding,),
        occurred_at=facts.window_end,
        since=since,
        window_start=facts.window_start,
        window_end=facts.window_end,
        statistic=result.statistic if result.statistic is not None else float("nan"),
        p_value=None,
        effect_size=result.statistic if result.statistic is not None else float("nan"),
        effect_size_name=result.rule,
        explanation=explanation,
        config_fingerprint=result.config_fingerprint,
        reference_id=uuid.uuid5(PERFORMANCE_REFERENCE, f"{facts.key}|{facts.finding}"),
    )


def _drift_links(connection: Connection, facts: WindowFacts) -> str:
    """The site's drift alerts active during the window, as a sentence (or nothing)."""
    rows = connection.execute(
        select(AlertRow.detector, AlertRow.since, AlertRow.alert_id).where(
            AlertRow.site_id == facts.key.site_id,
            AlertRow.model_name == facts.key.model_name,
            ~AlertRow.detector.startswith("performance."),
            AlertRow.since <= facts.window_end,
            (AlertRow.ended_at.is_(None)) | (AlertRow.ended_at >= facts.window_start),
        )
    ).all()
    if not rows:
        return ""
    links = "; ".join(
        f"{row.detector} since {as_utc(row.since):%Y-%m-%d %H:%M} (alert {str(row.alert_id)[:8]})"
        for row in rows
    )
    return f" Drift at this site in the same period: {links}."


def _load(connection: Connection, facts: WindowFacts) -> tuple[Any, AlarmDocument]:
    """The stored state (None if there is none) and the document it holds."""
    statement = select(PerformanceAlarmRow.state).where(*_match(facts)).with_for_update()
    state = connection.execute(statement).scalar_one_or_none()
    return state, AlarmDocument() if state is None else AlarmDocument.model_validate(state)


def _save(
    connection: Connection,
    facts: WindowFacts,
    stored: Any,
    document: AlarmDocument,
    now: datetime,
) -> None:
    """Write the state back, unless it is what was stored: a refresh without new labels
    leaves it as it was, and it holds the AUROC CUSUM's reference (tens of KB)."""
    state = document.model_dump(mode="json")
    if state == stored:
        return
    table = PerformanceAlarmRow.__table__
    changed = connection.execute(
        update(table).where(*_match(facts)).values(state=state, updated_at=now)  # type: ignore[arg-type]
    ).rowcount
    if changed == 0:
        connection.execute(
            table.insert().values(  # type: ignore[attr-defined]
                site_id=facts.key.site_id,
                model_name=facts.key.model_name,
                model_version=facts.key.model_version,
                finding=facts.finding,
                state=state,
                updated_at=now,
            )
        )


def _match(facts: WindowFacts) -> list[Any]:
    row = PerformanceAlarmRow
    return [
        row.site_id == facts.key.site_id,
        row.model_name == facts.key.model_name,
        row.model_version == facts.key.model_version,
        row.finding == facts.finding,
    ]
