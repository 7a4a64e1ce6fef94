"""Reading the performance sufficient statistics: windows merged from ``performance_buckets``.

The tracker (``performance.store``) reads a stream's cumulative and rolling windows with
:func:`read_window` or, for every stream at once, :func:`read_streams`: merges of the day rows
that ``summaries`` keeps in the batch transaction, never the predictions. A rolling window is
the fewest latest days holding at least the configured number of labelled cases;
:func:`pooled` merges windows across sites (fleet-wide metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Table, func, select, true

from monitor.performance.delays import DelaySketch
from monitor.performance.sufficient import (
    PerformanceSummary,
    at_threshold,
    merge,
    summaries_from_bytes,
)
from monitor.service.db import as_utc, chunked, given_rows, matches, table_of
from monitor.service.models import PerformanceBucketRow, PredictionCountRow
from monitor.service.performance.summaries import (
    ALL_CASES,
    DEFAULT_THRESHOLD,
    NO_THRESHOLD,
    TOTAL,
    layout_for,
    summary_key,
)

_DAYS_PER_PAGE: Final = 64


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
    _, reached = _take_days(days, chosen, 0, rolling)
    return tuple(chosen) if reached or not full else None


def _take_days(
    days: Mapping[str, int], chosen: list[str], held: int, rolling: int
) -> tuple[int, bool]:
    """Append the ``days`` with cases, latest first, to ``chosen`` until ``rolling`` cases are
    held: the cases held then, and whether ``rolling`` was reached."""
    for bucket, n in days.items():
        if n:
            chosen.append(bucket)
            held += n
        if held >= rolling:
            return held, True
    return held, False


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
        held, reached = _take_days(days, chosen, held, rolling)
        if reached or not full:
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
