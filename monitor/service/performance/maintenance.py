"""Maintenance of the performance sufficient statistics: compare them with the raw rows, and
rebuild them from the raw rows.

The daily verification job (``jobs.verify_performance``) and ``radsentry performance verify``
share :func:`mismatches`; ``radsentry performance rebuild`` runs :func:`rebuild_all`, the
remedy when the verification finds a mismatch, and the way to count past cases under
subgroup fields added to ``RADSENTRY_PERFORMANCE__SUBGROUP_FIELDS`` (docs/performance.md,
"Verifying and rebuilding the statistics").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Connection, Engine, and_, delete, select, text

from monitor.performance.sufficient import PerformanceSummary
from monitor.service.db import table_of
from monitor.service.models import (
    CurrentLabelRow,
    InferenceEventRow,
    PerformanceBucketRow,
    PredictionCountRow,
)
from monitor.service.performance.labels import JoinedSample, joined_sample
from monitor.service.performance.summaries import rebuild
from monitor.service.performance.windows import read_window, tracked


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A window whose statistics differ from the raw rows' (:func:`verify`)."""

    stream: tuple[str, str, str]
    finding: str
    what: str


@dataclass(frozen=True, slots=True)
class Verification:
    """What :func:`mismatches` compared and what differed."""

    windows: int
    """(stream, finding) pairs whose cumulative window was compared."""
    problems: tuple[Mismatch, ...]

    @property
    def mismatched(self) -> int:
        """Windows with at least one difference."""
        return len({(p.stream, p.finding) for p in self.problems})


def mismatches(engine: Engine) -> Verification:
    """Recompute every cumulative window from the raw rows (the exact path) and compare it
    with its sufficient statistics. Reads every labelled prediction once.

    The windows compared are those the statistics hold *and* those the raw rows hold: a
    stream whose statistics rows were lost entirely is a mismatch, not a window left out.
    """
    with engine.connect() as connection:
        pairs = sorted(set(tracked(connection)) | set(_labelled_pairs(connection)))
    problems: list[Mismatch] = []
    for stream, finding in pairs:
        site_id, model_name, version = stream
        # Raw rows and statistics from one snapshot: a consumer's batch that commits between
        # the two reads would otherwise show as a difference (and page someone for nothing).
        with engine.connect() as connection:
            connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                raw = joined_sample(
                    connection,
                    site_id,
                    model_name,
                    finding,
                    model_version=version,
                    with_metadata=False,
                )
                problems += verify(connection, stream, finding, raw)
    return Verification(windows=len(pairs), problems=tuple(problems))


def _labelled_pairs(connection: Connection) -> list[tuple[tuple[str, str, str], str]]:
    """((site, model, version), finding) of every label in force that has a prediction."""
    events, labels = table_of(InferenceEventRow), table_of(CurrentLabelRow)
    rows = connection.execute(
        select(events.c.site_id, events.c.model_name, events.c.model_version, labels.c.finding)
        .distinct()
        .select_from(events)
        .join(
            labels,
            and_(*(labels.c[c] == events.c[c] for c in ("site_id", "model_name", "study_key"))),
        )
        .where(labels.c.expired_at.is_(None))
    )
    return [((r.site_id, r.model_name, r.model_version), r.finding) for r in rows]


def rebuild_all(engine: Engine, subgroup_fields: Sequence[str], now: datetime) -> int:
    """Replace every statistics row and prediction count with ones counted from the raw rows,
    in one transaction; returns the labelled cases counted.

    The two tables are locked ``EXCLUSIVE`` first: readers (the refresh, the API) go on seeing
    the old rows until the commit, writers (a consumer's batch) wait for it and then add their
    cases to the rebuilt rows, so no case is lost or counted twice. Locked in the order a batch
    writes them (``summaries.join_batch``: prediction counts, then statistics), so a batch
    already under way finishes first instead of deadlocking with the rebuild. PostgreSQL only.
    """
    buckets, counts = table_of(PerformanceBucketRow), table_of(PredictionCountRow)
    with engine.begin() as connection:
        connection.execute(text(f"LOCK TABLE {counts.name}, {buckets.name} IN EXCLUSIVE MODE"))
        connection.execute(delete(buckets))
        connection.execute(delete(counts))
        return rebuild(connection, subgroup_fields, now)


def verify(
    connection: Connection, stream: tuple[str, str, str], finding: str, raw: JoinedSample
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
