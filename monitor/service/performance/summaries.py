"""Sufficient statistics of labelled predictions, per day, kept in the batch that joins them.

A prediction and the label in force for its study and finding form a *labelled case*. Each case
is counted, in the transaction of the batch that forms or changes it, in
``performance_buckets`` rows (:class:`monitor.performance.sufficient.PerformanceSummary` plus a
:class:`monitor.performance.delays.DelaySketch` of label delays):

* one row per UTC day of prediction time and one ``total`` row (every day), so the cumulative
  window is one row and a rolling window the latest few;
* per subgroup value of each configured metadata field (``PerformanceSettings.subgroup_fields``)
  as well as for all cases; per operating threshold the events carried.

A case forms when a label arrives for a stored prediction or a prediction for a stored label (not
expired); a correction (a later label event) moves the case: its old label and delay out, the new
ones in. Redelivered events change nothing (the inbox drops them before this runs). Predictions
are counted per day in ``prediction_counts`` in the same transaction: the denominator of label
completeness. Labels with a prediction are marked ``matched``, so expiry reads only the labels
still waiting.

The tracker (``performance.store``) reads windows with ``windows.read_window``: merges of these
rows, never the predictions. The raw path (``labels.joined_sample``) stays for the PCCP gate's
exact numbers and for ``maintenance.verify``, which recomputes a window from the raw rows and
compares; :func:`rebuild` counts everything anew from the raw rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import numpy as np
import orjson
from numpy.typing import NDArray
from sqlalchemy import (
    Connection,
    Table,
    Text,
    and_,
    cast,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from monitor.events import InferenceEvent
from monitor.performance.delays import DelaySketch
from monitor.performance.sufficient import (
    PerformanceSummary,
    SummaryKey,
    SummaryLayout,
    stacked_counts,
    stacked_deltas,
    stacked_from_bytes,
    stacked_subtract,
    stacked_to_bytes,
)
from monitor.service.db import as_utc, given_rows, matches, table_of
from monitor.service.models import (
    CurrentLabelRow,
    InferenceEventRow,
    PerformanceBucketRow,
    PredictionCountRow,
)
from monitor.service.performance.labels import LabelTransition

TOTAL: Final = "total"
"""The bucket that holds every day's cases."""
NO_THRESHOLD: Final = -1.0
"""Stored threshold of events that carried none; they are scored at :data:`DEFAULT_THRESHOLD`."""
DEFAULT_THRESHOLD: Final = 0.5
ALL_CASES: Final = ""
"""``subgroup_field`` of the rows that hold every case."""
_STUDY: Final = ("site_id", "model_name", "study_key")


class BucketKey(NamedTuple):
    """Primary key of a ``performance_buckets`` row, in column order."""

    site_id: str
    model_name: str
    model_version: str
    finding: str
    subgroup_field: str
    subgroup_value: str
    bucket: str
    threshold: float


_KEY_COLUMNS: Final = BucketKey._fields


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled case's change: ``old_label`` None for a case that forms now."""

    site_id: str
    model_name: str
    model_version: str
    finding: str
    threshold: float
    predicted_at: datetime
    score: float
    groups: tuple[tuple[str, str], ...]
    """(field, value) per subgroup field; value empty when the event lacks it."""
    label: int
    delay_h: float
    old_label: int | None = None
    old_delay_h: float | None = None

    def bucket_keys(self) -> Iterator[BucketKey]:
        day = as_utc(self.predicted_at).date().isoformat()
        stream = (self.site_id, self.model_name, self.model_version, self.finding)
        for bucket in (day, TOTAL):
            yield BucketKey(*stream, ALL_CASES, "", bucket, self.threshold)
            for name, value in self.groups:
                yield BucketKey(*stream, name, value, bucket, self.threshold)


def summary_key(key: BucketKey) -> SummaryKey:
    grouped = key.subgroup_field != ALL_CASES
    return SummaryKey(
        model_name=key.model_name,
        model_version=key.model_version,
        finding=key.finding,
        site_id=key.site_id,
        subgroup_field=key.subgroup_field if grouped else None,
        subgroup_value=(key.subgroup_value or None) if grouped else None,
    )


@functools.lru_cache(maxsize=1024)
def layout_for(threshold: float) -> SummaryLayout:
    """The layout of a row stored at ``threshold`` (cached: layouts are immutable, and a full
    refresh asks for one per row)."""
    return SummaryLayout(threshold=DEFAULT_THRESHOLD if threshold == NO_THRESHOLD else threshold)


def subgroup_value(metadata: Mapping[str, Any], name: str) -> str:
    """A metadata field as the subgroup rows key it: a list joined by backslashes, missing
    as the empty string (the tracker reports it as the missing-value subgroup)."""
    value = metadata.get(name)
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


# --- writing: in the batch transaction -------------------------------------------------------


def join_batch(
    connection: Connection,
    predictions: Sequence[InferenceEvent],
    transitions: Sequence[LabelTransition],
    subgroup_fields: Sequence[str],
    now: datetime,
) -> int:
    """Count the cases this batch forms or changes; returns how many. Runs after the batch's
    events are written and ``labels_current`` is brought up to date (``apply_labels``)."""
    cases = [
        *_cases_of_new_predictions(connection, predictions, subgroup_fields),
        *_cases_of_new_labels(connection, predictions, transitions, subgroup_fields),
    ]
    count_predictions(connection, predictions)
    record(connection, cases, now)
    return len(cases)


def _cases_of_new_predictions(
    connection: Connection, predictions: Sequence[InferenceEvent], subgroup_fields: Sequence[str]
) -> list[Case]:
    """Predictions of this batch joined to the labels in force for their studies (locked, so
    that expiry, which skips matched labels, cannot expire one this batch counts)."""
    if not predictions:
        return []
    labels = table_of(CurrentLabelRow)
    studies = sorted({(e.site_id, e.model_name, e.study_key) for e in predictions})
    given = given_rows(labels, _STUDY, studies)
    statement = (
        select(
            labels.c.site_id,
            labels.c.model_name,
            labels.c.study_key,
            labels.c.finding,
            labels.c.label,
            labels.c.labelled_at,
            labels.c.expired_at,
            labels.c.matched,
        )
        .join(given, matches(labels, given, _STUDY))
        .order_by(*(labels.c[name] for name in (*_STUDY, "finding")))  # one lock order
        .with_for_update(of=labels)
    )
    found: dict[tuple[str, str, str], list[Any]] = {}
    for row in connection.execute(statement):
        found.setdefault((row.site_id, row.model_name, row.study_key), []).append(row)
    cases = []
    for event in predictions:
        rows = found.get((event.site_id, event.model_name, event.study_key), [])
        metadata = event.metadata.model_dump(exclude_none=True)
        for row in rows:
            score = event.prediction.scores.get(row.finding)
            if row.expired_at is not None or score is None:
                continue
            cases.append(
                _case(
                    event.site_id,
                    event.model_name,
                    event.model_version,
                    row.finding,
                    event.prediction.threshold,
                    event.occurred_at,
                    score,
                    metadata,
                    subgroup_fields,
                    label=row.label,
                    labelled_at=row.labelled_at,
                )
            )
    waiting = {study for study, rows in found.items() if not all(row.matched for row in rows)}
    _mark_matched(connection, sorted(waiting))
    return cases


def _cases_of_new_labels(
    connection: Connection,
    predictions: Sequence[InferenceEvent],
    transitions: Sequence[LabelTransition],
    subgroup_fields: Sequence[str],
) -> list[Case]:
    """Label transitions applied to the predictions stored before this batch (this batch's
    own predictions took the final label above)."""
    if not transitions:
        return []
    events = table_of(InferenceEventRow)
    in_batch = {e.event_id for e in predictions}
    studies = sorted({(t.site_id, t.model_name, t.study_key) for t in transitions})
    given = given_rows(events, _STUDY, studies)
    statement = select(
        events.c.event_id,
        events.c.site_id,
        events.c.model_name,
        events.c.model_version,
        events.c.study_key,
        events.c.occurred_at,
        events.c.scores,
        events.c.threshold,
        events.c.metadata,
    ).join(given, matches(events, given, _STUDY))
    stored: dict[tuple[str, str, str], list[Any]] = {}
    for row in connection.execute(statement):
        if row.event_id not in in_batch:
            stored.setdefault((row.site_id, row.model_name, row.study_key), []).append(row)
    cases = []
    for change in transitions:
        for row in stored.get((change.site_id, change.model_name, change.study_key), []):
            score = row.scores.get(change.finding)
            if score is None:
                continue
            old_delay = (
                None
                if change.old_labelled_at is None
                else _hours(change.old_labelled_at, row.occurred_at)
            )
            cases.append(
                _case(
                    row.site_id,
                    row.model_name,
                    row.model_version,
                    change.finding,
                    row.threshold,
                    row.occurred_at,
                    score,
                    row.metadata,
                    subgroup_fields,
                    label=change.label,
                    labelled_at=change.labelled_at,
                    old_label=change.old_label,
                    old_delay_h=old_delay,
                )
            )
    # Labels in force before this batch whose prediction was stored were matched then, and
    # the labels new in this batch were inserted matched when it was (``apply_labels``).
    return cases


def _case(
    site_id: str,
    model_name: str,
    model_version: str,
    finding: str,
    threshold: float | None,
    predicted_at: datetime,
    score: float,
    metadata: Mapping[str, Any],
    subgroup_fields: Sequence[str],
    *,
    label: int,
    labelled_at: datetime,
    old_label: int | None = None,
    old_delay_h: float | None = None,
) -> Case:
    return Case(
        site_id=site_id,
        model_name=model_name,
        model_version=model_version,
        finding=finding,
        threshold=NO_THRESHOLD if threshold is None else float(threshold),
        predicted_at=predicted_at,
        score=float(score),
        groups=tuple((name, subgroup_value(metadata, name)) for name in subgroup_fields),
        label=int(label),
        delay_h=_hours(labelled_at, predicted_at),
        old_label=old_label,
        old_delay_h=old_delay_h,
    )


def _hours(later: datetime, earlier: datetime) -> float:
    return (as_utc(later) - as_utc(earlier)).total_seconds() / 3600


def _mark_matched(connection: Connection, studies: list[tuple[str, str, str]]) -> None:
    if not studies:
        return
    labels = table_of(CurrentLabelRow)
    given = given_rows(labels, _STUDY, studies)
    connection.execute(
        update(labels).where(matches(labels, given, _STUDY), ~labels.c.matched).values(matched=True)
    )


def count_predictions(connection: Connection, predictions: Sequence[InferenceEvent]) -> None:
    """Add this batch's predictions to their day's and the total count."""
    counts: dict[tuple[str, str, str, str], int] = {}
    for event in predictions:
        stream = (event.site_id, event.model_name, event.model_version)
        for bucket in (as_utc(event.occurred_at).date().isoformat(), TOTAL):
            counts[(*stream, bucket)] = counts.get((*stream, bucket), 0) + 1
    if not counts:
        return
    table = table_of(PredictionCountRow)
    statement = pg_insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=["site_id", "model_name", "model_version", "bucket"],
        set_={"n": table.c.n + statement.excluded.n},
    )
    rows = [
        {"site_id": s, "model_name": m, "model_version": v, "bucket": b, "n": n}
        for (s, m, v, b), n in sorted(counts.items())
    ]
    connection.execute(statement, rows)


def record(connection: Connection, cases: Iterable[Case], now: datetime) -> None:
    """Apply ``cases`` to their rows: created empty if new, locked, changed, written back.

    Every row of the batch at once: the stored summaries decoded into one int64 matrix, the
    cases' counts added (new cases), moved (corrections: old label out, new one in) with
    :func:`~monitor.performance.sufficient.stacked_deltas`, encoded again; the same bytes as
    decoding, changing and encoding each row's :class:`PerformanceSummary` (a unit test
    compares them)."""
    plan = _Plan.of(cases)
    if not plan.keys:
        return
    keys = plan.keys
    table = table_of(PerformanceBucketRow)
    rows = _locked(connection, table, keys)
    missing = [key for key in keys if key not in rows]
    if missing:  # created empty (another batch may create them first), then locked as well
        _create_missing(connection, table, missing, now)
        rows |= _locked(connection, table, missing)
    stored = [rows[key] for key in keys]
    stacked = stacked_from_bytes(_BINS, [row.summary for row in stored])
    plan.apply(stacked, keys)
    n = stacked_counts(stacked, _BINS).tolist()
    updates: list[tuple[Any, ...]] = []
    for position, (key, row, blob) in enumerate(
        zip(keys, stored, stacked_to_bytes(stacked, _BINS), strict=True)
    ):
        first, last = row.first_at, row.last_at
        span = plan.times.get(position)
        if span is not None:
            first = span[0] if first is None else min(as_utc(first), span[0])
            last = span[1] if last is None else max(as_utc(last), span[1])
        updates.append(
            (
                *key,
                blob,
                _delays(row.delays, plan.delays.get(position)),
                n[position],
                None if first is None else as_utc(first),
                None if last is None else as_utc(last),
            )
        )
    _write_back(connection, table, updates, now)


_BINS: Final = layout_for(DEFAULT_THRESHOLD)
"""The bins of every stored summary (:func:`layout_for` changes only the threshold)."""


@dataclass
class _Plan:
    """What a batch's cases do to its rows (sorted keys; a row is a position among them)."""

    keys: list[BucketKey]
    cases: Sequence[Case]
    new: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    """(row, case) of every case that forms now, once per row it is counted in."""
    moved: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))
    """(row, case) of every corrected case whose label changed value."""
    delays: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
    """Per row of all cases: the delays in, the delays out (corrections)."""
    times: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)
    """Per row: the earliest and latest prediction time of its new cases."""

    @classmethod
    def of(cls, cases: Iterable[Case]) -> _Plan:
        cases = list(cases)
        # Cases of one stream, threshold, day and subgroup values share their rows: their keys
        # are made once per such signature, not once per case.
        signatures: dict[tuple[Any, ...], list[BucketKey]] = {}
        of_case = []
        for case in cases:
            at = as_utc(case.predicted_at)
            signature = (case.site_id, case.model_name, case.model_version, case.finding,
                         case.threshold, at.date(), case.groups)  # fmt: skip
            if signature not in signatures:
                signatures[signature] = list(case.bucket_keys())
            of_case.append((signature, at))
        keys = sorted({key for signature_keys in signatures.values() for key in signature_keys})
        position = {key: index for index, key in enumerate(keys)}
        rows_of = {
            signature: (
                [position[key] for key in signature_keys],
                [position[key] for key in signature_keys if key.subgroup_field == ALL_CASES],
            )
            for signature, signature_keys in signatures.items()
        }
        plan = cls(keys, cases)
        spans: dict[tuple[Any, ...], tuple[datetime, datetime]] = {}
        for number, (case, (signature, at)) in enumerate(zip(cases, of_case, strict=True)):
            rows, everything = rows_of[signature]
            if case.old_label is None:
                plan.new[0].extend(rows)
                plan.new[1].extend([number] * len(rows))
                span = spans.get(signature)
                spans[signature] = (
                    (at, at) if span is None else (min(span[0], at), max(span[1], at))
                )
            elif case.old_label != case.label:
                plan.moved[0].extend(rows)
                plan.moved[1].extend([number] * len(rows))
            for row in everything:
                delays_in, delays_out = plan.delays.setdefault(row, ([], []))
                delays_in.append(case.delay_h)
                if case.old_delay_h is not None:
                    delays_out.append(case.old_delay_h)
        for signature, (first, last) in spans.items():
            for row in rows_of[signature][0]:
                span = plan.times.get(row)
                plan.times[row] = (
                    (first, last) if span is None else (min(span[0], first), max(span[1], last))
                )
        return plan

    def apply(self, stacked: NDArray[np.int64], keys: Sequence[BucketKey]) -> None:
        """New cases in, then corrections moved (NegativeCountError for a case never added)."""
        labels = np.array([case.label for case in self.cases], dtype=np.int64)
        scores = np.array([case.score for case in self.cases], dtype=np.float64)
        thresholds = np.array(
            [layout_for(case.threshold).threshold for case in self.cases], dtype=np.float64
        )
        n_rows = len(stacked)
        rows, chosen = (np.asarray(column, dtype=np.intp) for column in self.new)
        if len(rows):
            stacked += stacked_deltas(
                _BINS, n_rows, rows, labels[chosen], scores[chosen], thresholds[chosen]
            )
        rows, chosen = (np.asarray(column, dtype=np.intp) for column in self.moved)
        if len(rows):
            old = np.array([self.cases[i].old_label for i in chosen], dtype=np.int64)
            removed = stacked_deltas(_BINS, n_rows, rows, old, scores[chosen], thresholds[chosen])
            stacked_subtract(stacked, removed, _BINS, keys)
            stacked += stacked_deltas(
                _BINS, n_rows, rows, labels[chosen], scores[chosen], thresholds[chosen]
            )


def _delays(stored: Mapping[str, int], change: tuple[list[float], list[float]] | None) -> str:
    """A row's delay sketch as JSON text after the batch's delays out and in."""
    if change is None and not stored:
        return "{}"
    sketch = DelaySketch.from_dict(stored)
    if change is not None:
        delays_in, delays_out = change
        if delays_out:
            sketch.subtract(delays_out)
        sketch.add(delays_in)
    return orjson.dumps(sketch.to_dict()).decode()


_WRITTEN = ("summary", "delays", "n", "first_at", "last_at")


def _write_back(
    connection: Connection, table: Table, updates: list[tuple[Any, ...]], now: datetime
) -> None:
    """One ``UPDATE ... FROM unnest(...)`` for every changed row (``updates``: the key's
    columns, then the new values of :data:`_WRITTEN`, the delays as JSON text)."""
    given = given_rows(table, (*_KEY_COLUMNS, *_WRITTEN), updates, types={"delays": Text()})
    statement = (
        update(table)
        .where(matches(table, given, _KEY_COLUMNS))
        .values(
            summary=given.c.summary,
            delays=cast(given.c.delays, JSONB),
            n=given.c.n,
            first_at=given.c.first_at,
            last_at=given.c.last_at,
            updated_at=literal(now, type_=table.c.updated_at.type),
        )
    )
    connection.execute(statement)


def _create_missing(
    connection: Connection, table: Table, keys: list[BucketKey], now: datetime
) -> None:
    empty: dict[float, bytes] = {}  # the bytes depend on the layout only
    rows = [
        (
            *key,
            empty.get(key.threshold)
            or empty.setdefault(
                key.threshold,
                PerformanceSummary(summary_key(key), layout_for(key.threshold)).to_bytes(),
            ),
        )
        for key in keys
    ]
    given = given_rows(table, (*_KEY_COLUMNS, "summary"), rows)
    statement = (
        pg_insert(table)
        .from_select(
            [*_KEY_COLUMNS, "summary", "delays", "n", "first_at", "last_at", "updated_at"],
            select(
                *(given.c[name] for name in _KEY_COLUMNS),
                given.c.summary,
                cast(literal("{}"), JSONB),
                literal(0),
                null(),
                null(),
                literal(now, type_=table.c.updated_at.type),
            ),
        )
        .on_conflict_do_nothing(index_elements=list(_KEY_COLUMNS))
    )
    connection.execute(statement)


def _locked(connection: Connection, table: Table, keys: list[BucketKey]) -> dict[BucketKey, Any]:
    given = given_rows(table, _KEY_COLUMNS, keys)
    statement = (
        select(table)
        .join(given, matches(table, given, _KEY_COLUMNS))
        .order_by(*(table.c[name] for name in _KEY_COLUMNS))
        .with_for_update(of=table)
    )
    return {
        BucketKey(*(getattr(row, name) for name in _KEY_COLUMNS)): row
        for row in connection.execute(statement)
    }


# --- rebuilding from the raw rows ------------------------------------------------------------


def rebuild(connection: Connection, subgroup_fields: Sequence[str], now: datetime) -> int:
    """Count every labelled case and prediction from the raw rows into empty tables (the
    migration that adds them, ``maintenance.rebuild_all``, tests); returns the cases counted."""
    events, labels = table_of(InferenceEventRow), table_of(CurrentLabelRow)
    count_rows = connection.execute(
        select(
            events.c.site_id,
            events.c.model_name,
            events.c.model_version,
            events.c.occurred_at,
        )
    )
    counts: dict[tuple[str, str, str, str], int] = {}
    for row in count_rows:
        stream = (row.site_id, row.model_name, row.model_version)
        for bucket in (as_utc(row.occurred_at).date().isoformat(), TOTAL):
            counts[(*stream, bucket)] = counts.get((*stream, bucket), 0) + 1
    if counts:
        connection.execute(
            table_of(PredictionCountRow).insert(),
            [
                {"site_id": s, "model_name": m, "model_version": v, "bucket": b, "n": n}
                for (s, m, v, b), n in sorted(counts.items())
            ],
        )
    joined = connection.execute(
        select(
            events.c.site_id,
            events.c.model_name,
            events.c.model_version,
            events.c.occurred_at,
            events.c.scores,
            events.c.threshold,
            events.c.metadata,
            labels.c.finding,
            labels.c.label,
            labels.c.labelled_at,
        )
        .select_from(events)
        .join(
            labels,
            and_(
                labels.c.site_id == events.c.site_id,
                labels.c.model_name == events.c.model_name,
                labels.c.study_key == events.c.study_key,
            ),
        )
        .where(labels.c.expired_at.is_(None))
        # A server-side cursor: a history of millions of cases is never held in memory.
        .execution_options(stream_results=True, max_row_buffer=5000)
    )
    total = 0
    while batch := joined.fetchmany(5000):
        cases = [
            _case(
                row.site_id,
                row.model_name,
                row.model_version,
                row.finding,
                row.threshold,
                row.occurred_at,
                row.scores[row.finding],
                row.metadata,
                subgroup_fields,
                label=row.label,
                labelled_at=row.labelled_at,
            )
            for row in batch
            if row.finding in row.scores
        ]
        record(connection, cases, now)
        total += len(cases)
    return total
