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
  its state. With ``AurocCusum.by_fields`` it also runs one CUSUM per value of those metadata
  fields (a scanner model, say), each alarming on its own: the read then also takes those
  fields of each case's event;
* every result goes to an ``AlarmState`` per rule, and per (field, value) for the AUROC
  CUSUM's values (``AlarmState.observe``, as for drift), and
  transitions become alerts (detector ``performance.<rule>``, deterministic ids) and alert
  updates, published like drift alerts. A new alert names the site's drift alerts that were
  active in the same period.

The state (alarm states, open alerts, both CUSUMs, watermark, label count at the last check) is
one JSON row in ``performance_alarms``, saved in the transaction that writes the alerts.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, bindparam, select, update

from monitor.drift.alarms import AlarmState
from monitor.drift.alerts import Alert, AlertUpdate, StreamKey, alert_id_for
from monitor.performance._cusum import CusumState
from monitor.performance.auroc_cusum import (
    AurocCusumState,
    start_auroc_cusum,
    update_auroc_cusums,
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
from monitor.service.db import as_utc, given_rows, matches, table_of
from monitor.service.drift.alerts import apply_updates, write_alerts
from monitor.service.models import AlertRow, PerformanceAlarmRow
from monitor.service.performance.labels_after import LabelledAfter, labels_after
from monitor.service.settings import PerformanceSettings

PERFORMANCE_REFERENCE = uuid.UUID("3b0b1f0e-2d55-4f0c-8d3e-6a1e2f9b7c44")


class AlarmDocument(BaseModel):
    """The persisted state of one (site, model version, finding)."""

    model_config = ConfigDict(extra="forbid")

    rules: dict[str, AlarmState] = {}
    """Per rule (``auroc_cusum[field=value]`` for a value's AUROC CUSUM: :func:`_alarm_name`)."""
    open_alerts: dict[str, uuid.UUID] = {}
    labelled_at_last_check: int | None = None
    cusum: CusumState | None = None
    auroc_cusum: AurocCusumState | None = None
    """With its frozen reference (sorted scores per class: about 40 KB of JSON at 2,000) and
    the counters of each value's CUSUM (``max_values`` per field at most)."""
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
    connection: Connection, settings: PerformanceSettings, facts: Sequence[WindowFacts]
) -> list[RuleOutcome]:
    """Check the rules of every given (site, model version, finding), one outcome each, in
    the caller's transaction: a few statements for all of them (their states read and locked
    in one, the labels after their watermarks in one, the changed states written in one or
    two), not three per stream."""
    if not facts:
        return []
    now = datetime.now(UTC)
    stored = _load(connection, facts)
    documents = [
        AlarmDocument() if state is None else AlarmDocument.model_validate(state)
        for state in stored
    ]
    outcomes = [
        RuleOutcome(results=_window_rules(settings, one, document))
        for one, document in zip(facts, documents, strict=True)
    ]
    for outcome, one, document, rows in zip(
        outcomes,
        facts,
        documents,
        _sequential_inputs(connection, settings, facts, documents),
        strict=True,
    ):
        outcome.results += _sequential(settings, one, document, rows)
        for result in outcome.results:
            _alarm(connection, settings, one, document, result, outcome)
    write_alerts(connection, [alert for outcome in outcomes for alert in outcome.alerts], now)
    apply_updates(connection, [update for outcome in outcomes for update in outcome.updates])
    _save(connection, facts, stored, documents, now)
    return outcomes


def _window_rules(
    settings: PerformanceSettings, facts: WindowFacts, document: AlarmDocument
) -> list[RuleResult]:
    last = document.labelled_at_last_check
    if last is not None and facts.labelled - last < settings.min_new_labels:
        return []
    document.labelled_at_last_check = facts.labelled
    return evaluate_rules(facts.rolling, facts.reference, settings.rules, finding=facts.finding)


def _sequential_inputs(
    connection: Connection,
    settings: PerformanceSettings,
    facts: Sequence[WindowFacts],
    documents: Sequence[AlarmDocument],
) -> Sequence[LabelledAfter | None]:
    """Per stream, the CUSUMs (re)started as needed and the labels after the watermark they
    read (None with both CUSUMs off)."""
    rules = settings.rules
    if rules.error_rate_cusum is None and rules.auroc_cusum is None:
        return [None for _ in facts]
    for one, document in zip(facts, documents, strict=True):
        _start_sequential(settings, one, document)
    fields = rules.auroc_cusum.by_fields if rules.auroc_cusum is not None else ()
    return labels_after(
        connection,
        [_stream_of(one) for one in facts],
        [document.watermark for document in documents],
        fields,
    )


def _sequential(
    settings: PerformanceSettings,
    facts: WindowFacts,
    document: AlarmDocument,
    after: LabelledAfter | None,
) -> list[RuleResult]:
    """The CUSUMs that are on, over the labels after the watermark: one read for both."""
    rules = settings.rules
    if after is None or after.last is None:
        return []
    labels, scores = after.labels, after.scores
    results = []
    if rules.error_rate_cusum is not None and document.cusum is not None:
        errors = case_errors(labels, scores, facts.threshold)
        document.cusum, result = update_cusum(
            document.cusum, errors, rules.error_rate_cusum, finding=facts.finding
        )
        results.append(result)
    if rules.auroc_cusum is not None and document.auroc_cusum is not None:
        document.auroc_cusum, auroc_results = update_auroc_cusums(
            document.auroc_cusum,
            labels,
            scores,
            rules.auroc_cusum,
            finding=facts.finding,
            groups=after.groups,
        )
        results += auroc_results
    document.watermark = after.last
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


def _alarm_name(result: RuleResult) -> str:
    """The key of a result's alarm state and open alert: the rule, with the (field, value) of a
    value's AUROC CUSUM."""
    if result.subgroup is None:
        return result.rule
    field_name, value = result.subgroup
    return f"{result.rule}[{field_name}={value}]"


def _alarm(
    connection: Connection,
    settings: PerformanceSettings,
    facts: WindowFacts,
    document: AlarmDocument,
    result: RuleResult,
    outcome: RuleOutcome,
) -> None:
    name = _alarm_name(result)
    alarm = document.rules.setdefault(name, AlarmState())
    transition = observe_rule(alarm, result, facts.window_start.timestamp(), settings.alarms)
    detector = f"performance.{result.rule}"
    if transition == "opened":
        alert = _alert(connection, facts, result, alarm, detector)
        document.open_alerts[name] = alert.alert_id
        outcome.alerts.append(alert)
    elif transition in ("continued", "ended") and name in document.open_alerts:
        alert_id = document.open_alerts[name]
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
            del document.open_alerts[name]


def _alert(
    connection: Connection, facts: WindowFacts, result: RuleResult, alarm: AlarmState, detector: str
) -> Alert:
    since = datetime.fromtimestamp(alarm.streak_started_at or facts.window_start.timestamp(), UTC)
    explanation = result.explanation.rstrip(".") + "." + _drift_links(connection, facts)
    subject = f"{detector}:{facts.finding}"
    if result.subgroup is not None:  # a value's CUSUM: alerts of its own
        subject += f":{result.subgroup[0]}={result.subgroup[1]}"
    return Alert(
        alert_id=alert_id_for(facts.key, subject, alarm.episodes),
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
    """The site's drift alerts active during the window, as a sentence (or nothing), oldest
    first: one order on every replica and run (the rows' own order moves as alerts update)."""
    rows = connection.execute(
        select(AlertRow.detector, AlertRow.since, AlertRow.alert_id)
        .where(
            AlertRow.site_id == facts.key.site_id,
            AlertRow.model_name == facts.key.model_name,
            ~AlertRow.detector.startswith("performance."),
            AlertRow.since <= facts.window_end,
            (AlertRow.ended_at.is_(None)) | (AlertRow.ended_at >= facts.window_start),
        )
        .order_by(AlertRow.since, AlertRow.detector, AlertRow.alert_id)
    ).all()
    if not rows:
        return ""
    links = "; ".join(
        f"{row.detector} since {as_utc(row.since):%Y-%m-%d %H:%M} (alert {str(row.alert_id)[:8]})"
        for row in rows
    )
    return f" Drift at this site in the same period: {links}."


_STREAM: Final = ("site_id", "model_name", "model_version", "finding")


def _stream_of(facts: WindowFacts) -> tuple[str, str, str, str]:
    key = facts.key
    return key.site_id, key.model_name, key.model_version, facts.finding


def _load(connection: Connection, facts: Sequence[WindowFacts]) -> list[Any]:
    """The stored state of each stream (None where there is none), its row locked until the
    transaction ends (in key order, as every refresh locks them)."""
    table = table_of(PerformanceAlarmRow)
    given = given_rows(table, _STREAM, [_stream_of(one) for one in facts])
    rows = connection.execute(
        select(*(table.c[name] for name in _STREAM), table.c.state)
        .join(given, matches(table, given, _STREAM))
        .order_by(*(table.c[name] for name in _STREAM))
        .with_for_update(of=table)
    )
    stored = {tuple(row[:4]): row.state for row in rows}
    return [stored.get(_stream_of(one)) for one in facts]


def _save(
    connection: Connection,
    facts: Sequence[WindowFacts],
    stored: Sequence[Any],
    documents: Sequence[AlarmDocument],
    now: datetime,
) -> None:
    """Write back the states that changed: a refresh without new labels leaves them as they
    were, and each holds the AUROC CUSUM's reference (tens of KB). Rows that existed are
    updated, the others inserted (a concurrent refresh that inserted one first makes this
    transaction fail, as it always did)."""
    table = table_of(PerformanceAlarmRow)
    updated: list[dict[str, Any]] = []
    created: list[dict[str, Any]] = []
    for one, before, document in zip(facts, stored, documents, strict=True):
        state = document.model_dump(mode="json")
        if state == before:
            continue
        key = dict(zip(_STREAM, _stream_of(one), strict=True))
        (created if before is None else updated).append({**key, "state": state})
    if updated:
        statement = (
            update(table)
            .where(*(table.c[name] == bindparam(f"key_{name}") for name in _STREAM))
            .values(state=bindparam("state"), updated_at=now)
        )
        connection.execute(
            statement,
            [
                {"state": row["state"], **{f"key_{name}": row[name] for name in _STREAM}}
                for row in updated
            ],
        )
    if created:
        connection.execute(table.insert(), [{**row, "updated_at": now} for row in created])
