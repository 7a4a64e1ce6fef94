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

The tracker (``performance.store``) reads windows with :func:`read_window`: merges of these rows,
never the predictions. The raw path (``labels.joined_sample``) stays for the PCCP gate's exact
numbers and for :func:`verify`, which recomputes a window from the raw rows and compares.
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
    func,
    literal,
    null,
    select,
    true,
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
    at_threshold,
    merge,
    stacked_counts,
    stacked_deltas,
    stacked_from_bytes,
    stacked_subtract,
    stacked_to_bytes,
    summaries_from_bytes,
)
from monitor.service.db import as_utc, chunked, given_rows, matches, table_of
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
_DAYS_PER_PAGE = 64


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


# --- reading: merges -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """A window's merged statistics: all cases, and per (field, value) subgroup."""

    summary: PerformanceSummary | None
    """None when the window has no labelled case."""
    subgroups: dict[tuple[str, str], PerformanceSummary]
    delays: DelaySketch
    first_at: datetime | None
    last_at: datetime | None
    buckets: tuple[str, ...]
    """The day buckets merged (empty for the cumulative window)."""
    threshold_source: str

    @property
    def n(self) -> int:
        return 0 if self.summary is None else self.summary.n


def read_window(
    connection: Connection,
    model_name: str,
    model_version: str,
    finding: str,
    *,
    site_id: str | None,
    rolling: int | None = None,
) -> Window:
    """The cumulative window (``rolling`` None) or the fewest latest days holding at least
    ``rolling`` labelled cases; of one site, or of every site (``site_id`` None: fleet-wide)."""
    table = table_of(PerformanceBucketRow)
    where = [
        table.c.model_name == model_name,
        table.c.model_version == model_version,
        table.c.finding == finding,
    ]
    if site_id is not None:
        where.append(table.c.site_id == site_id)
    buckets = (TOTAL,) if rolling is None else _latest_days(connection, table, where, rolling)
    if not buckets:
        return _empty()
    rows = connection.execute(select(table).where(*where, table.c.bucket.in_(buckets))).all()
    return _window_of(rows, () if rolling is None else buckets)


def _window_of(rows: Sequence[Any], buckets: tuple[str, ...]) -> Window:
    """The window merged from its ``performance_buckets`` rows (``buckets``: its days, empty
    for the cumulative window). The rows' summaries are decoded together (one call a window:
    a full refresh decodes 3,400 rows)."""
    filled = [row for row in rows if row.n]
    decoded = _decoded(filled)
    everything = [
        (row, s) for row, s in zip(filled, decoded, strict=True) if not row.subgroup_field
    ]
    threshold, source = _threshold([row for row, _ in everything])
    summary = _merged(everything, threshold)
    grouped: dict[tuple[str, str], list[tuple[Any, PerformanceSummary]]] = {}
    for row, decoded_row in zip(filled, decoded, strict=True):
        if row.subgroup_field != ALL_CASES:
            members = grouped.setdefault((row.subgroup_field, row.subgroup_value), [])
            members.append((row, decoded_row))
    delays = DelaySketch()
    for row, _ in everything:
        delays.merge(DelaySketch.from_dict(row.delays))
    return Window(
        summary=summary,
        subgroups={
            group: merged
            for group, members in sorted(grouped.items())
            if (merged := _merged(members, threshold)) is not None
        },
        delays=delays,
        first_at=min((as_utc(r.first_at) for r, _ in everything), default=None),
        last_at=max((as_utc(r.last_at) for r, _ in everything), default=None),
        buckets=buckets,
        threshold_source=source,
    )


def _decoded(rows: Sequence[Any]) -> list[PerformanceSummary]:
    """The rows' summaries, each with its row's key and threshold."""
    return summaries_from_bytes(
        [summary_key(row) for row in rows],
        [layout_for(row.threshold) for row in rows],
        [row.summary for row in rows],
    )


def _empty() -> Window:
    """A window without labelled cases."""
    return Window(None, {}, DelaySketch(), None, None, (), _source([]))


Stream = tuple[str, str, str, str]
"""(site, model name, model version, finding)."""


@dataclass(frozen=True, slots=True)
class StreamWindows:
    """What the tracker reads of one (site, model version, finding): :func:`read_streams`."""

    cumulative: Window
    rolling: Window
    predicted: int
    """Predictions of the version at the site."""
    recent: int
    """Predictions over the rolling window's days."""


def read_streams(
    connection: Connection, streams: Sequence[Stream], rolling: int
) -> dict[Stream, StreamWindows]:
    """:func:`read_window` (cumulative and rolling) and :func:`predicted` (all, and over the
    rolling window's days) of many streams at once: a few queries per 200 streams instead of
    six per stream (round trips were most of a fleet refresh). Same results."""
    found: dict[Stream, StreamWindows] = {}
    for chunk in chunked(sorted(set(streams))):
        days = _latest_days_of(connection, chunk, rolling)
        rows = _rows_of(connection, chunk, {day for chosen in days.values() for day in chosen})
        counts = _counts_of(connection, chunk, days)
        for stream in chunk:
            chosen = days[stream]
            in_window = set(chosen)
            mine = rows.get(stream, [])
            site_id, model_name, version, _ = stream
            per_bucket = counts.get((site_id, model_name, version), {})
            found[stream] = StreamWindows(
                cumulative=_window_of([r for r in mine if r.bucket == TOTAL], ()),
                rolling=_window_of([r for r in mine if r.bucket in in_window], chosen)
                if chosen
                else _empty(),
                predicted=per_bucket.get(TOTAL, 0),
                recent=sum(per_bucket.get(day, 0) for day in in_window),
            )
    return found


_STREAM_KEY: Final = ("site_id", "model_name", "model_version", "finding")


def _latest_days_of(
    connection: Connection, streams: list[Stream], rolling: int
) -> dict[Stream, tuple[str, ...]]:
    """:func:`_latest_days` of each stream: the first page of every stream in one query (a
    ``LATERAL`` page read per stream, the streams an ``unnest`` of arrays); a stream whose
    window goes past its first page (rare: a page is 64 days) is read page by page as before."""
    table = table_of(PerformanceBucketRow)
    given = given_rows(table, _STREAM_KEY, streams)
    page = (
        select(table.c.bucket, table.c.n)
        .where(
            *(table.c[name] == given.c[name] for name in _STREAM_KEY),
            table.c.subgroup_field == ALL_CASES,
            table.c.subgroup_value == "",
            table.c.bucket < TOTAL,
        )
        .order_by(table.c.bucket.desc())
        .limit(_DAYS_PER_PAGE)
        .correlate(given)
        .lateral("page")
    )
    read: dict[Stream, list[tuple[str, int]]] = {}
    statement = select(*given.c, page.c.bucket, page.c.n).select_from(given).join(page, true())
    for row in connection.execute(statement):
        stream = (row.site_id, row.model_name, row.model_version, row.finding)
        read.setdefault(stream, []).append((row.bucket, int(row.n)))
    chosen: dict[Stream, tuple[str, ...]] = {}
    for stream in streams:
        first_page = sorted(read.get(stream, []), key=lambda day: day[0], reverse=True)
        days = _days_of_first_page(first_page, rolling)
        if days is None:
            days = _latest_days(connection, table, _stream_where(table, stream), rolling)
        chosen[stream] = days
    return chosen


def _days_of_first_page(page: list[tuple[str, int]], rolling: int) -> tuple[str, ...] | None:
    """What :func:`_latest_days` returns after reading ``page`` as its first page, or None
    when it would read on."""
    days: dict[str, int] = {}
    for bucket, n in page:
        days[bucket] = days.get(bucket, 0) + n
    full = len(page) == _DAYS_PER_PAGE
    if full and len(days) == 1:
        return None
    if full:
        del days[list(days)[-1]]
    chosen: list[str] = []
    held = 0
    for bucket, n in days.items():
        if n:
            chosen.append(bucket)
            held += n
        if held >= rolling:
            return tuple(chosen)
    return None if full else tuple(chosen)


def _stream_where(table: Table, stream: Stream) -> list[Any]:
    site_id, model_name, version, finding = stream
    return [
        table.c.model_name == model_name,
        table.c.model_version == version,
        table.c.finding == finding,
        table.c.site_id == site_id,
    ]


def _rows_of(
    connection: Connection, streams: list[Stream], days: set[str]
) -> dict[Stream, list[Any]]:
    """The ``total`` rows and those of ``days`` of the streams, by stream."""
    table = table_of(PerformanceBucketRow)
    rows: dict[Stream, list[Any]] = {}
    given = given_rows(table, _STREAM_KEY, streams)
    statement = (
        select(table)
        .join(given, matches(table, given, _STREAM_KEY))
        .where(table.c.bucket.in_(sorted(days | {TOTAL})))
    )
    for row in connection.execute(statement).all():
        stream = (row.site_id, row.model_name, row.model_version, row.finding)
        rows.setdefault(stream, []).append(row)
    return rows


def _counts_of(
    connection: Connection, streams: list[Stream], days: Mapping[Stream, tuple[str, ...]]
) -> dict[tuple[str, str, str], dict[str, int]]:
    """Predictions per bucket (``total`` and the rolling windows' days) of the streams'
    (site, model, version)."""
    table = table_of(PredictionCountRow)
    versions = sorted({stream[:3] for stream in streams})
    buckets = sorted({day for chosen in days.values() for day in chosen} | {TOTAL})
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    given = given_rows(table, _STREAM_KEY[:3], versions)
    statement = (
        select(
            table.c.site_id, table.c.model_name, table.c.model_version, table.c.bucket, table.c.n
        )
        .join(given, matches(table, given, _STREAM_KEY[:3]))
        .where(table.c.bucket.in_(buckets))
    )
    for row in connection.execute(statement):
        key = (row.site_id, row.model_name, row.model_version)
        counts.setdefault(key, {})[row.bucket] = int(row.n)
    return counts


def pooled(windows: Sequence[Window]) -> Window:
    """The windows of several sites as one (fleet-wide): their statistics merged, at the
    threshold of the latest case among them."""
    filled = [w for w in windows if w.summary is not None and w.last_at is not None]
    if not filled:
        return _empty()
    latest = max(filled, key=lambda w: w.last_at or datetime.min)
    assert latest.summary is not None
    target = latest.summary.layout.threshold
    others = sum(w.n for w in filled if w.summary and w.summary.layout.threshold != target)

    def at_target(summary: PerformanceSummary) -> PerformanceSummary:
        return summary if summary.layout.threshold == target else at_threshold(summary, target)

    groups: dict[tuple[str, str], list[PerformanceSummary]] = {}
    for window in filled:
        for group, summary in window.subgroups.items():
            groups.setdefault(group, []).append(at_target(summary))
    delays = DelaySketch()
    for window in filled:
        delays.merge(window.delays)
    source = latest.threshold_source.split(";")[0]
    if others:
        source += f"; {others} cases of sites at another threshold are scored at this one"
    return Window(
        summary=merge([at_target(w.summary) for w in filled if w.summary], across_sites=True),
        subgroups={g: merge(s, across_sites=True) for g, s in sorted(groups.items())},
        delays=delays,
        first_at=min(w.first_at for w in filled if w.first_at),
        last_at=latest.last_at,
        buckets=tuple(sorted({b for w in filled for b in w.buckets})),
        threshold_source=source,
    )


def _latest_days(
    connection: Connection, table: Table, where: list[Any], rolling: int
) -> tuple[str, ...]:
    """The latest day buckets whose cases add up to ``rolling`` (all of them if fewer).

    Read a page of days at a time, newest first, down the primary key: the cost follows the
    window, not the history.
    """
    chosen: list[str] = []
    held = 0
    upper, inclusive = TOTAL, False  # "total" sorts after every ISO day
    while True:
        page = connection.execute(
            select(table.c.bucket, table.c.n)
            .where(
                *where,
                table.c.subgroup_field == ALL_CASES,
                table.c.subgroup_value == "",
                table.c.bucket <= upper if inclusive else table.c.bucket < upper,
            )
            .order_by(table.c.bucket.desc())
            .limit(_DAYS_PER_PAGE)
        ).all()
        days: dict[str, int] = {}
        for bucket, n in page:
            days[bucket] = days.get(bucket, 0) + int(n)
        full = len(page) == _DAYS_PER_PAGE
        if full and len(days) > 1:  # the last day may go on in the next page: read it again
            upper, inclusive = list(days)[-1], True
            del days[upper]
        elif full:  # one day filled the page (a key with a page of thresholds): go past it
            upper, inclusive = page[-1][0], False
        for bucket, n in days.items():
            if n:
                chosen.append(bucket)
                held += n
            if held >= rolling:
                return tuple(chosen)
        if not full:
            return tuple(chosen)


def _threshold(rows: Sequence[Any]) -> tuple[float, str]:
    """The threshold of the latest case's row, and how the snapshot should say it."""
    if not rows:
        return NO_THRESHOLD, _source([])
    latest = max(rows, key=lambda r: as_utc(r.last_at))
    return float(latest.threshold), _source(rows, float(latest.threshold))


def _source(rows: Sequence[Any], threshold: float = NO_THRESHOLD) -> str:
    if threshold == NO_THRESHOLD:
        text = f"no threshold in the events: {DEFAULT_THRESHOLD} assumed"
    else:
        text = "the model's operating threshold (latest event)"
    others = sum(int(r.n) for r in rows if float(r.threshold) != threshold)
    if others:
        text += (
            f"; {others} cases predicted at another threshold are scored at this one to the "
            f"histogram's resolution (1/{layout_for(threshold).score_bins})"
        )
    return text


def _merged(
    rows: Sequence[tuple[Any, PerformanceSummary]], threshold: float
) -> PerformanceSummary | None:
    """The rows' decoded summaries merged at ``threshold`` (the latest case's)."""
    if not rows:
        return None
    target = layout_for(threshold).threshold
    summaries = [
        summary if summary.layout.threshold == target else at_threshold(summary, target)
        for _, summary in rows
    ]
    if len(summaries) == 1:  # decoded just now, so nobody else holds it: merging would copy it
        return summaries[0]
    return merge(summaries, across_sites=len({s.key.site_id for s in summaries}) > 1)


def predicted(
    connection: Connection,
    model_name: str,
    model_version: str,
    *,
    site_id: str | None,
    buckets: Sequence[str] = (TOTAL,),
) -> int:
    """Predictions of the version in the given buckets (all of them by default), at one site
    or (``site_id`` None) at all."""
    table = table_of(PredictionCountRow)
    where = [
        table.c.model_name == model_name,
        table.c.model_version == model_version,
        table.c.bucket.in_(list(buckets)),
    ]
    if site_id is not None:
        where.append(table.c.site_id == site_id)
    return int(connection.scalar(select(func.sum(table.c.n)).where(*where)) or 0)


def tracked(connection: Connection) -> list[tuple[tuple[str, str, str], str]]:
    """((site, model, version), finding) pairs with labelled cases, sorted."""
    return sorted(stream_marks(connection))


def stream_marks(
    connection: Connection,
) -> dict[tuple[tuple[str, str, str], str], tuple[Any, ...]]:
    """Per ((site, model, version), finding) with labelled cases, what changes whenever its
    statistics or its predictions do: cases, last update of its ``total`` rows, predictions.
    One query each over the ``total`` rows: a refresh compares them with the last ones."""
    table, counts = table_of(PerformanceBucketRow), table_of(PredictionCountRow)
    rows = connection.execute(
        select(
            table.c.site_id,
            table.c.model_name,
            table.c.model_version,
            table.c.finding,
            func.sum(table.c.n),
            func.max(table.c.updated_at),
        )
        .where(table.c.bucket == TOTAL, table.c.subgroup_field == ALL_CASES)
        .group_by(table.c.site_id, table.c.model_name, table.c.model_version, table.c.finding)
    ).all()
    predictions = {
        (r.site_id, r.model_name, r.model_version): int(r.n)
        for r in connection.execute(
            select(counts.c.site_id, counts.c.model_name, counts.c.model_version, counts.c.n).where(
                counts.c.bucket == TOTAL
            )
        )
    }
    return {
        ((site, model, version), finding): (
            int(n),
            as_utc(at),
            predictions.get((site, model, version), 0),
        )
        for site, model, version, finding, n, at in rows
        if n
    }


# --- rebuilding and verifying from the raw rows ---------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A window whose statistics differ from the raw rows' (:func:`verify`)."""

    stream: tuple[str, str, str]
    finding: str
    what: str


def verify(
    connection: Connection, stream: tuple[str, str, str], finding: str, raw: Any
) -> list[Mismatch]:
    """Compare the cumulative window's statistics with ``raw`` (its ``joined_sample``): the
    counts and confusion matrix must be equal, the summary of the raw cases bit for bit."""
    site_id, model_name, version = stream
    window = read_window(connection, model_name, version, finding, site_id=site_id)
    problems = []
    if window.n != len(raw):
        problems.append(f"{window.n} labelled cases summarised, {len(raw)} in the raw rows")
    elif window.summary is not None:
        expected = PerformanceSummary(window.summary.key, window.summary.layout)
        expected.add(raw.labels, raw.scores)
        if not np.array_equal(expected.histogram, window.summary.histogram):
            problems.append("the score histograms differ from the raw rows'")
        if not np.array_equal(expected.confusion, window.summary.confusion):
            problems.append(
                f"confusion counts {window.summary.confusion.tolist()} summarised, "
                f"{expected.confusion.tolist()} in the raw rows"
            )
    return [Mismatch(stream, finding, what) for what in problems]
