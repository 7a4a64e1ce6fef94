"""Delayed ground truth joined to predictions.

Label events join inference events on (site_id, model_name, study_key), per finding. Labels may
come before or long after the prediction, twice, or corrected:

* the label **in force** per (site, model, study, finding) is kept in ``labels_current``, updated
  in the transaction that stores the label event (``apply_labels``, called by
  ``ingest.store.store_batch``), so a redelivered event changes nothing (the inbox drops it first);
* the **later label wins** (by event time; at equal times, the one stored later); a label event
  older than the one in force is counted in ``revisions`` but changes nothing;
* every **change of value** is recorded in ``label_changes`` (old and new value, both event ids);
* a label whose prediction has not arrived within the horizon **expires**
  (``expire_unmatched``): it is counted, and no longer joined even if the prediction turns up.

The joined sample of a window is read with ``joined_sample``; label completeness and the delay
between prediction and label with ``label_completeness``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    and_,
    exists,
    func,
    literal,
    null,
    select,
    update,
)

from monitor.events import LabelEvent
from monitor.service.db import as_utc, given_rows, matches
from monitor.service.models import (
    CurrentLabelRow,
    InferenceEventRow,
    LabelChangeRow,
)

_KEY = ("site_id", "model_name", "study_key", "finding")
_UPDATED = ("label", "label_event_id", "source", "labelled_at", "revisions")


@dataclass(frozen=True, slots=True)
class LabelTransition:
    """The label in force of one (site, model, study, finding) before and after a batch."""

    site_id: str
    model_name: str
    study_key: str
    finding: str
    label: int
    labelled_at: datetime
    old_label: int | None
    old_labelled_at: datetime | None


@dataclass(frozen=True, slots=True)
class LabelOutcome:
    new: int
    """Labels seen for the first time (per finding)."""
    changed: int
    """Corrections: a later label with another value."""
    unchanged: int
    """Repeats and late arrivals of older labels."""
    transitions: list[LabelTransition] = field(default_factory=list)
    """Labels in force that are new or changed value or event time, not expired: the cases
    ``summaries.join_batch`` moves."""


@dataclass(frozen=True, slots=True)
class JoinedSample:
    """Predictions of one finding that have a label in force, in prediction-time order."""

    scores: NDArray[np.float64]
    labels: NDArray[np.int_]
    thresholds: NDArray[np.float64]
    """The model's operating threshold per prediction (NaN when the event had none)."""
    predicted_at: list[datetime]
    delays_h: NDArray[np.float64]
    """Label event time minus prediction event time, hours (negative: label came first)."""
    metadata: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True, slots=True)
class LabelCompleteness:
    predicted: int
    labelled: int
    expired: int
    """Labels of the site and model that expired without a prediction (all time)."""
    delay_hours: dict[str, float] | None
    """p50, p90 and max of the label delay; None without labels."""

    @property
    def share(self) -> float | None:
        return self.labelled / self.predicted if self.predicted else None


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


def apply_labels(
    connection: Connection, events: Sequence[LabelEvent], now: datetime
) -> LabelOutcome:
    """Bring ``labels_current`` up to date with newly stored label events (same transaction)."""
    incoming: dict[tuple[str, str, str, str], list[LabelEvent]] = {}
    for event in sorted(events, key=lambda e: e.occurred_at):  # stable: ties keep batch order
        for finding in event.labels:
            key = (event.site_id, event.model_name, event.study_key, finding)
            incoming.setdefault(key, []).append(event)
    if not incoming:
        return LabelOutcome(0, 0, 0)
    current = _current(connection, list(incoming))
    before = {key: (row["label"], as_utc(row["labelled_at"])) for key, row in current.items()}
    new = changed = unchanged = 0
    created: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    changes: list[dict[str, Any]] = []
    for key, updates in incoming.items():
        row = current.get(key)
        for event in updates:
            label = event.labels[key[3]]
            if row is None:
                row = current[key] = created[key] = _new_row(key, event, label)
                new += 1
                continue
            row["revisions"] += 1
            wins = event.occurred_at >= as_utc(row["labelled_at"])
            if wins and label != row["label"]:
                changes.append(_change(key, row, event, label, now))
                changed += 1
            else:
                unchanged += 1
            if wins:
                row |= {
                    "label": label,
                    "label_event_id": event.event_id,
                    "source": event.source.value,
                    "labelled_at": event.occurred_at,
                }
    # One statement per kind of write, each with all its rows.
    table = _table(CurrentLabelRow)
    if created:
        _insert_created(connection, table, list(created.values()))
    updated = [
        (*key, *(row[name] for name in _UPDATED))
        for key, row in current.items()
        if key in incoming and key not in created
    ]
    if updated:
        given = given_rows(table, (*_KEY, *_UPDATED), updated)
        connection.execute(
            update(table)
            .where(matches(table, given, _KEY))
            .values({name: given.c[name] for name in _UPDATED})
        )
    if changes:
        connection.execute(_table(LabelChangeRow).insert(), changes)
    transitions = [
        LabelTransition(
            *key,
            label=row["label"],
            labelled_at=row["labelled_at"],
            old_label=old[0] if old else None,
            old_labelled_at=old[1] if old else None,
        )
        for key, row in current.items()
        if key in incoming
        and row.get("expired_at") is None
        and (old := before.get(key)) != (row["label"], as_utc(row["labelled_at"]))
    ]
    return LabelOutcome(new, changed, unchanged, transitions)


_CREATED = (*_KEY, *_UPDATED, "first_labelled_at")


def _insert_created(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert labels seen for the first time, ``matched`` already when a prediction of the
    study is stored (this batch's predictions are written before its labels are applied).

    Marking them in the same statement spares an ``UPDATE`` of the rows just written, which
    cost more than the rest of the label join: PostgreSQL's estimate for ``NOT matched`` is
    one row (nearly every label is matched when the table is analysed), so it joined the
    batch's studies to every unmatched label by a nested loop (docs/benchmarks.md, "Labelled
    replay: vectorised statistics")."""
    given = given_rows(table, _CREATED, [tuple(row[name] for name in _CREATED) for row in rows])
    events = _table(InferenceEventRow)
    stored = (
        exists()
        .where(
            events.c.site_id == given.c.site_id,
            events.c.model_name == given.c.model_name,
            events.c.study_key == given.c.study_key,
        )
        .label("matched")
    )
    connection.execute(
        table.insert().from_select(
            [*_CREATED, "expired_at", "matched"],
            select(
                *(given.c[name] for name in _CREATED),
                null().label("expired_at"),
                stored,
            ),
        )
    )


def _current(
    connection: Connection, keys: list[tuple[str, str, str, str]]
) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    table = _table(CurrentLabelRow)
    given = given_rows(table, _KEY, keys)
    statement = select(table).join(given, matches(table, given, _KEY))
    return {
        (row.site_id, row.model_name, row.study_key, row.finding): dict(row._mapping)
        for row in connection.execute(statement)
    }


def _new_row(key: tuple[str, str, str, str], event: LabelEvent, label: int) -> dict[str, Any]:
    site_id, model_name, study_key, finding = key
    return {
        "site_id": site_id,
        "model_name": model_name,
        "study_key": study_key,
        "finding": finding,
        "label": label,
        "label_event_id": event.event_id,
        "source": event.source.value,
        "labelled_at": event.occurred_at,
        "first_labelled_at": event.occurred_at,
        "revisions": 0,
        "expired_at": None,
    }


def _change(
    key: tuple[str, str, str, str],
    row: dict[str, Any],
    event: LabelEvent,
    label: int,
    now: datetime,
) -> dict[str, Any]:
    site_id, model_name, study_key, finding = key
    return {
        "site_id": site_id,
        "model_name": model_name,
        "study_key": study_key,
        "finding": finding,
        "old_label": row["label"],
        "new_label": label,
        "old_event_id": row["label_event_id"],
        "new_event_id": event.event_id,
        "changed_at": event.occurred_at,
        "recorded_at": now,
    }


def _has_prediction() -> Any:
    labels, predictions = _table(CurrentLabelRow), _table(InferenceEventRow)
    return exists().where(
        predictions.c.site_id == labels.c.site_id,
        predictions.c.model_name == labels.c.model_name,
        predictions.c.study_key == labels.c.study_key,
    )


def expire_unmatched(engine: Engine, horizon: timedelta, now: datetime | None = None) -> int:
    """Expire labels still without a prediction ``horizon`` after their event time; how many.

    Reads only the labels still waiting (``ix_labels_current_pending``: not matched, not
    expired), not the table. ``matched`` is set in the batch that brings the prediction, under
    the row lock that batch holds, so a label cannot be counted and expired at once; the
    ``EXISTS`` is a second guard for rows written before ``matched`` existed.
    """
    now = now or datetime.now(UTC)
    table = _table(CurrentLabelRow)
    statement = (
        update(table)
        .where(
            ~table.c.matched,
            table.c.expired_at.is_(None),
            table.c.labelled_at < now - horizon,
            ~_has_prediction(),
        )
        .values(expired_at=now)
    )
    with engine.begin() as connection:
        return connection.execute(statement).rowcount


def labelled_predictions(finding: str, *columns: Any) -> Select[Any]:
    """``SELECT columns`` over predictions joined to their label in force for ``finding``
    (expired labels left out): the one join every reader of labelled predictions uses."""
    events, labels = InferenceEventRow, CurrentLabelRow
    return (
        select(*columns)
        .select_from(events)
        .join(
            labels,
            and_(
                labels.site_id == events.site_id,
                labels.model_name == events.model_name,
                labels.study_key == events.study_key,
            ),
        )
        .where(labels.finding == finding, labels.expired_at.is_(None))
    )


def _connected(bind: Engine | Connection) -> AbstractContextManager[Connection]:
    """A connection of ``bind``: the given one (left open), or a new one of the engine."""
    return nullcontext(bind) if isinstance(bind, Connection) else bind.connect()


def joined_sample(
    engine: Engine | Connection,
    site_id: str,
    model_name: str,
    finding: str,
    *,
    model_version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    earliest: bool = False,
    with_metadata: bool = True,
) -> JoinedSample:
    """Labelled predictions of ``finding`` with prediction time in [since, until); with ``limit``,
    the latest ``limit`` of them (a rolling window; with ``earliest``, the first ``limit``: a
    reference), else all (cumulative). Always returned in prediction-time order.

    The exact path: the tracker reads windows from sufficient statistics instead
    (``summaries``); this serves bounded reads, verification and the tests. Without
    ``with_metadata`` the DICOM metadata is not read (``metadata`` holds empty dicts). Given a
    connection, it reads in that connection's transaction (the verification compares in one
    snapshot).
    """
    events, labels = InferenceEventRow, CurrentLabelRow
    metadata_column = events.dicom_metadata if with_metadata else literal(None)
    query = (
        labelled_predictions(
            finding,
            events.occurred_at,
            events.scores,
            events.threshold,
            metadata_column.label("metadata"),
            labels.label,
            labels.labelled_at,
        )
        .where(*_window(site_id, model_name, model_version, since, until))
        .order_by(
            *(
                (events.occurred_at, events.event_id)
                if earliest
                else (events.occurred_at.desc(), events.event_id.desc())
            )
        )
    )
    if limit is not None:
        query = query.limit(limit)
    with _connected(engine) as connection:
        rows = [row for row in connection.execute(query) if finding in row.scores]
    if not earliest:
        rows.reverse()
    predicted_at = [as_utc(row.occurred_at) for row in rows]
    delays = [
        (as_utc(row.labelled_at) - at).total_seconds() / 3600
        for row, at in zip(rows, predicted_at, strict=True)
    ]
    return JoinedSample(
        scores=np.array([row.scores[finding] for row in rows], dtype=np.float64),
        labels=np.array([row.label for row in rows], dtype=np.int_),
        thresholds=np.array(
            [np.nan if row.threshold is None else row.threshold for row in rows], dtype=np.float64
        ),
        predicted_at=predicted_at,
        delays_h=np.array(delays, dtype=np.float64),
        metadata=[dict(row.metadata or {}) for row in rows],
    )


def recent_predictions(
    engine: Engine,
    site_id: str,
    model_name: str,
    finding: str,
    *,
    model_version: str | None,
    limit: int,
) -> tuple[NDArray[np.float64], datetime | None]:
    """Scores of ``finding`` in the latest ``limit`` predictions, labelled or not, and the
    prediction time of the oldest of them (None when there are none)."""
    events = InferenceEventRow
    query = (
        select(events.occurred_at, events.scores)
        .where(*_window(site_id, model_name, model_version, None, None))
        .order_by(events.occurred_at.desc(), events.event_id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        rows = [row for row in connection.execute(query) if finding in row.scores]
    scores = np.array([row.scores[finding] for row in rows], dtype=np.float64)
    return scores, (as_utc(rows[-1].occurred_at) if rows else None)


def label_completeness(
    engine: Engine,
    site_id: str,
    model_name: str,
    finding: str,
    *,
    model_version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sample: JoinedSample | None = None,
) -> LabelCompleteness:
    """Predictions in the window, how many have a label in force, label delays, expiries.

    ``sample``: the window's ``joined_sample`` (same arguments) when the caller already has it.
    """
    window = _window(site_id, model_name, model_version, since, until)
    labels = _table(CurrentLabelRow)
    with engine.connect() as connection:
        predicted = (
            connection.scalar(select(func.count()).select_from(InferenceEventRow).where(*window))
            or 0
        )
        expired = (
            connection.scalar(
                select(func.count())
                .select_from(labels)
                .where(
                    labels.c.site_id == site_id,
                    labels.c.model_name == model_name,
                    labels.c.expired_at.is_not(None),
                )
            )
            or 0
        )
    if sample is None:
        sample = joined_sample(
            engine,
            site_id,
            model_name,
            finding,
            model_version=model_version,
            since=since,
            until=until,
        )
    delays = None
    if len(sample):
        p50, p90 = np.quantile(sample.delays_h, [0.5, 0.9])
        delays = {"p50": float(p50), "p90": float(p90), "max": float(sample.delays_h.max())}
    return LabelCompleteness(predicted, len(sample), expired, delays)


def _window(
    site_id: str,
    model_name: str,
    model_version: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[Any]:
    events = InferenceEventRow
    conditions: list[Any] = [events.site_id == site_id, events.model_name == model_name]
    if model_version is not None:
        conditions.append(events.model_version == model_version)
    if since is not None:
        conditions.append(events.occurred_at >= since)
    if until is not None:
        conditions.append(events.occurred_at < until)
    return conditions
