"""The tracker's bounded raw reads: a few hundred predictions per stream, many streams at once.

The label-free estimate and the rules' reference need each case, which the sufficient
statistics do not keep, so ``performance.store.refresh`` reads, per (site, model version,
finding):

* :func:`earliest_labelled`: the version's earliest ``limit`` labelled predictions (what
  ``labels.joined_sample(..., limit=limit, earliest=True)`` returns);
* :func:`recent_windows`: its latest ``limit`` predictions, labelled or not, and the labelled
  ones since the oldest of them (``labels.recent_predictions`` and
  ``joined_sample(..., since=oldest)``).

Each is one statement per :data:`~monitor.service.db.KEYS_PER_STATEMENT` streams: the
streams as an ``unnest`` of arrays, a ``LATERAL`` read of each one's predictions in time order down
``ix_inference_events_site_time``, the label in force looked up per prediction by primary key
(so the earliest read stops after ``limit`` labelled predictions, where a join planned as a
hash join read every label of the site), and the scores and labels sent back as one array
per stream, in the order read (an aggregate over a sorted subquery takes its rows in that
order): predictions at the same time come in the index's order, as the per-stream reads these
replace had them. Per-stream statements cost more in statement building and row handling than
the database spent on them (docs/benchmarks.md, issue 21 item 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, String, Table, func, select, true

from monitor.service.db import as_utc, chunked, given_rows, table_of
from monitor.service.models import CurrentLabelRow, InferenceEventRow

Stream = tuple[str, str, str, str]
"""(site, model name, model version, finding)."""

_STREAM_COLUMNS: Final = ("site_id", "model_name", "model_version", "finding")


@dataclass(frozen=True, slots=True)
class LabelledScores:
    """Scores and labels of labelled predictions of one finding, in prediction-time order."""

    scores: NDArray[np.float64]
    labels: NDArray[np.int_]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True, slots=True)
class RecentWindow:
    """The latest predictions of one stream, labelled or not, and the labelled ones since the
    oldest of them: what the label-free estimate works on."""

    scores: NDArray[np.float64]
    """Newest first, as ``labels.recent_predictions`` returns them."""
    oldest: datetime | None
    labelled: LabelledScores


def earliest_labelled(
    connection: Connection, streams: Sequence[Stream], limit: int
) -> dict[Stream, LabelledScores]:
    """Per stream, the scores and labels ``joined_sample(..., model_version=version,
    limit=limit, earliest=True)`` returns: the first ``limit`` labelled predictions, those
    without the finding's score then left out."""
    found = {stream: _labelled([], []) for stream in streams}
    for chunk in chunked(streams):
        given, events = _given(chunk), table_of(InferenceEventRow)
        label = _label_in_force(events, given)
        picked = (
            select(events.c.occurred_at, _score(events, given), label.c.label)
            .select_from(events)
            .join(label, true())
            .where(*_of_stream(events, given))
            .order_by(events.c.occurred_at, events.c.event_id)  # ties: one order
            .limit(limit)
            .correlate(given)
            .lateral("picked")
        )
        kept = picked.c.score.is_not(None)
        arrays = select(
            func.array_agg(picked.c.score).filter(kept), func.array_agg(picked.c.label).filter(kept)
        ).lateral("arrays")
        statement = select(*given.c, *arrays.c).select_from(given).join(arrays, true())
        for *key, scores, labels in connection.execute(statement):
            found[_stream(key)] = _labelled(scores or [], labels or [])
    return found


def recent_windows(
    connection: Connection, streams: Sequence[Stream], limit: int
) -> dict[Stream, RecentWindow]:
    """Per stream, ``recent_predictions`` (the latest ``limit`` predictions) and the scores and
    labels of ``joined_sample`` since the oldest of them.

    The latest ``limit + 1`` predictions are read with their label in force, if any: the
    labelled predictions since the oldest are all among the first ``limit`` unless the one
    after them has the oldest one's time too; only then is ``joined_sample``'s read made."""
    found: dict[Stream, RecentWindow] = {}
    read: dict[Stream, tuple[list[Any], list[Any], list[Any]]] = {}
    for chunk in chunked(streams):
        given, events = _given(chunk), table_of(InferenceEventRow)
        label = _label_in_force(events, given)
        latest = (
            select(events.c.occurred_at, _score(events, given), label.c.label)
            .select_from(events)
            .outerjoin(label, true())
            .where(*_of_stream(events, given))
            .order_by(events.c.occurred_at.desc(), events.c.event_id.desc())
            .limit(limit + 1)
            .correlate(given)
            .lateral("latest")
        )
        arrays = select(
            *(func.array_agg(c) for c in (latest.c.occurred_at, latest.c.score, latest.c.label))
        ).lateral("arrays")
        statement = select(*given.c, *arrays.c).select_from(given).join(arrays, true())
        for *key, times, scores, labels in connection.execute(statement):
            read[_stream(key)] = (times or [], scores or [], labels or [])
    for stream in streams:
        times, scores, labels = read.get(stream, ([], [], []))
        found[stream] = _recent_window(connection, stream, limit, times, scores, labels)
    return found


def _recent_window(
    connection: Connection,
    stream: Stream,
    limit: int,
    times: list[datetime],
    scores: list[float | None],
    labels: list[int | None],
) -> RecentWindow:
    """The window from the latest ``limit + 1`` predictions' times, scores and labels (newest
    first; a score None where the prediction lacks the finding)."""
    kept = [i for i in range(min(len(times), limit)) if scores[i] is not None]
    if not kept:
        return RecentWindow(np.array([], dtype=np.float64), None, _labelled([], []))
    oldest = times[kept[-1]]
    if len(times) > limit and times[limit] == oldest:
        labelled = _labelled_since(connection, stream, oldest)
    else:
        with_label = [i for i in reversed(kept) if labels[i] is not None]
        labelled = _labelled([scores[i] for i in with_label], [labels[i] for i in with_label])
    return RecentWindow(
        scores=np.array([scores[i] for i in kept], dtype=np.float64),
        oldest=as_utc(oldest),
        labelled=labelled,
    )


def _labelled_since(connection: Connection, stream: Stream, since: datetime) -> LabelledScores:
    """The scores and labels of ``joined_sample(..., since=since)``: every labelled prediction
    from ``since`` on (the predictions at ``since`` went on past the window's limit)."""
    given, events = _given([stream]), table_of(InferenceEventRow)
    label = _label_in_force(events, given)
    rows = connection.execute(
        select(_score(events, given), label.c.label)
        .select_from(given)
        .join(events, true())
        .join(label, true())
        .where(*_of_stream(events, given), events.c.occurred_at >= since)
        .order_by(events.c.occurred_at.desc(), events.c.event_id.desc())
    ).all()[::-1]
    kept = [row for row in rows if row.score is not None]
    return _labelled([row.score for row in kept], [row.label for row in kept])


def _given(streams: Sequence[Stream]) -> Any:
    return given_rows(
        table_of(InferenceEventRow), _STREAM_COLUMNS, streams, types={"finding": String(64)}
    )


def _of_stream(events: Table, given: Any) -> list[Any]:
    return [events.c[name] == given.c[name] for name in _STREAM_COLUMNS[:3]]


def _score(events: Table, given: Any) -> Any:
    """The finding's score, read out of the JSON by the database (NULL when absent)."""
    return events.c.scores[given.c.finding].as_float().label("score")


def _label_in_force(events: Table, given: Any) -> Any:
    """The label in force of the prediction's study for the stream's finding, looked up by
    primary key per prediction (a ``LATERAL`` subquery: never planned as a hash join)."""
    labels = table_of(CurrentLabelRow)
    return (
        select(labels.c.label)
        .where(
            labels.c.site_id == events.c.site_id,
            labels.c.model_name == events.c.model_name,
            labels.c.study_key == events.c.study_key,
            labels.c.finding == given.c.finding,
            labels.c.expired_at.is_(None),
        )
        .correlate_except(labels)
        .limit(1)  # one at most (the key): a subquery with a limit is never made a join
        .lateral("label")
    )


def _stream(key: list[Any]) -> Stream:
    site_id, model_name, version, finding = key
    return (site_id, model_name, version, finding)


def _labelled(scores: Sequence[float | None], labels: Sequence[int | None]) -> LabelledScores:
    """Scores and labels read as not NULL."""
    return LabelledScores(
        scores=np.array(scores, dtype=np.float64), labels=np.array(labels, dtype=np.int_)
    )
