"""The sequential performance rules' one read per refresh: each stream's labelled cases after
its watermark, in (label time, study) order, with the metadata fields the AUROC CUSUM's
per-value CUSUMs need (``alerts`` feeds them to the error-rate and AUROC CUSUMs, which read
each label exactly once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, String, or_, select, true

from monitor.service.db import as_utc, given_rows, table_of
from monitor.service.models import CurrentLabelRow, InferenceEventRow
from monitor.service.performance.summaries import subgroup_value

_STREAM: Final = ("site_id", "model_name", "model_version", "finding")


@dataclass(frozen=True, slots=True)
class LabelledAfter:
    """The labelled cases of one stream after its watermark, in (label time, study) order."""

    labels: list[int]
    scores: list[float]
    groups: dict[str, list[str | None]]
    """Per field of ``AurocCusum.by_fields``, each case's value (None: the event has none)."""
    last: tuple[datetime, str] | None
    """(label time, study) of the last of them: the next watermark."""


_BEGINNING: Final = datetime.min.replace(tzinfo=UTC)
"""The watermark of a stream that has read no label yet: before every label."""


def labels_after(
    connection: Connection,
    streams: Sequence[tuple[str, str, str, str]],
    watermarks: Sequence[tuple[datetime, str] | None],
    fields: Sequence[str] = (),
) -> list[LabelledAfter]:
    """Per stream (site, model, version, finding), its labelled predictions whose (label
    time, study) comes after its watermark, those without the finding's score left out, with
    the metadata ``fields`` of each: one statement for all streams, each read down
    ``ix_labels_current_joined`` from its watermark's time."""
    events, labels = table_of(InferenceEventRow), table_of(CurrentLabelRow)
    given = given_rows(
        labels,
        (*_STREAM, "labelled_at", "study_key"),
        [
            (*stream, *(watermark or (_BEGINNING, "")))
            for stream, watermark in zip(streams, watermarks, strict=True)
        ],
        types={"model_version": String(64)},
    )
    after = (
        select(
            labels.c.labelled_at,
            labels.c.study_key,
            labels.c.label,
            events.c.scores[given.c.finding].as_float().label("score"),
            *(events.c.metadata[name].label(f"field_{i}") for i, name in enumerate(fields)),
        )
        .select_from(labels)
        .join(
            events,
            (events.c.site_id == labels.c.site_id)
            & (events.c.model_name == labels.c.model_name)
            & (events.c.study_key == labels.c.study_key),
        )
        .where(
            *(labels.c[name] == given.c[name] for name in ("site_id", "model_name", "finding")),
            events.c.model_version == given.c.model_version,
            labels.c.expired_at.is_(None),
            labels.c.labelled_at >= given.c.labelled_at,
            or_(
                labels.c.labelled_at > given.c.labelled_at,
                labels.c.study_key > given.c.study_key,
            ),
        )
        .offset(0)  # a planner fence: each stream stays an index range, never a hash join
        .correlate(given)
        .lateral("after")
    )
    statement = (
        select(*(given.c[name] for name in _STREAM), *after.c)
        .select_from(given)
        .join(after, true())
        .order_by(*(given.c[name] for name in _STREAM), after.c.labelled_at, after.c.study_key)
    )
    read: dict[tuple[Any, ...], list[Any]] = {}
    for row in connection.execute(statement):
        if row.score is not None:
            read.setdefault(tuple(row[:4]), []).append(row)
    found = []
    for stream in streams:
        rows = read.get(stream, [])
        last = (as_utc(rows[-1].labelled_at), rows[-1].study_key) if rows else None
        groups = {
            name: [_value_of(row._mapping[f"field_{i}"], name) for row in rows]
            for i, name in enumerate(fields)
        }
        labels_of = [row.label for row in rows]
        found.append(LabelledAfter(labels_of, [row.score for row in rows], groups, last))
    return found


def _value_of(stored: Any, name: str) -> str | None:
    """A metadata field's value as the subgroup statistics key it; None when missing."""
    return subgroup_value({name: stored}, name) or None
