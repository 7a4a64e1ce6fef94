"""The tracker's batched reads equal the per-stream reads they replace, in a real PostgreSQL.

``windows.read_streams`` (windows and prediction counts of many streams in a few queries)
against ``read_window`` and ``predicted``; ``raw.earliest_labelled`` and
``raw.recent_windows`` against ``joined_sample`` and ``recent_predictions``. On the
shuffled history of ``test_performance_summaries`` (two sites, two versions, one without a
threshold, a finding missing from a third of the scores, corrections and expiries).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine

from monitor.events import DicomMetadata, InferenceEvent, LabelEvent, Prediction
from monitor.service.db import make_engine, upgrade
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.performance import windows
from monitor.service.performance.labels import joined_sample, recent_predictions
from monitor.service.performance.raw import earliest_labelled, recent_windows
from monitor.service.performance.windows import Window, predicted, read_streams, read_window
from tests.conftest import empty_tables
from tests.factories import study_key
from tests.integration.test_performance_summaries import _label, _store_history

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stored(pg_url: str) -> Iterator[Engine]:
    """The history, stored once for the module (storing it takes most of a test's time)."""
    engine = make_engine(pg_url)
    upgrade(engine)
    _store_history(engine)
    yield engine
    empty_tables(engine)
    engine.dispose()


def _streams(engine: Engine) -> list[tuple[str, str, str, str]]:
    with engine.connect() as connection:
        return [(*stream, finding) for stream, finding in windows.tracked(connection)]


def _same_window(batched: Window, single: Window) -> None:
    assert batched.summary == single.summary
    assert batched.subgroups == single.subgroups
    assert batched.delays.to_dict() == single.delays.to_dict()
    assert (batched.first_at, batched.last_at) == (single.first_at, single.last_at)
    assert batched.buckets == single.buckets
    assert batched.threshold_source == single.threshold_source


@pytest.mark.parametrize("page", [64, 3, 1])
@pytest.mark.parametrize("rolling", [1, 25, 10_000])
def test_read_streams_equals_the_reads_per_stream(
    stored: Engine, monkeypatch: pytest.MonkeyPatch, page: int, rolling: int
) -> None:
    # Small pages make most rolling windows span several: the per-stream fallback runs.
    monkeypatch.setattr(windows, "_DAYS_PER_PAGE", page)
    streams = _streams(stored)
    assert len(streams) >= 6
    with stored.connect() as connection:
        batched = read_streams(connection, streams, rolling)
        assert sorted(batched) == sorted(streams)
        for stream in streams:
            site_id, model_name, version, finding = stream
            one = batched[stream]
            window = read_window(
                connection, model_name, version, finding, site_id=site_id, rolling=rolling
            )
            _same_window(one.rolling, window)
            cumulative = read_window(connection, model_name, version, finding, site_id=site_id)
            _same_window(one.cumulative, cumulative)
            assert one.predicted == predicted(connection, model_name, version, site_id=site_id)
            assert one.recent == predicted(
                connection, model_name, version, site_id=site_id, buckets=window.buckets
            )


@pytest.mark.parametrize("limit", [1, 2, 40, 10_000])
def test_raw_reads_of_many_streams_equal_the_reads_per_stream(stored: Engine, limit: int) -> None:
    # limit 1 and 2: the finding missing from some of the rows read, which the reads drop
    # after the limit, as the per-stream reads do.
    streams = _streams(stored)
    with stored.connect() as connection:
        earliest = earliest_labelled(connection, streams, limit)
        recent = recent_windows(connection, streams, limit)
    for stream in streams:
        site_id, model_name, version, finding = stream
        sample = joined_sample(
            stored, site_id, model_name, finding, model_version=version, limit=limit, earliest=True
        )
        np.testing.assert_array_equal(earliest[stream].scores, sample.scores)
        np.testing.assert_array_equal(earliest[stream].labels, sample.labels)
        scores, oldest = recent_predictions(
            stored, site_id, model_name, finding, model_version=version, limit=limit
        )
        np.testing.assert_array_equal(recent[stream].scores, scores)
        assert recent[stream].oldest == oldest
        if oldest is None:  # the latest predictions lack this finding's score
            assert len(recent[stream].labelled) == 0
            continue
        labelled = joined_sample(
            stored, site_id, model_name, finding, model_version=version, since=oldest
        )
        np.testing.assert_array_equal(recent[stream].labelled.scores, labelled.scores)
        np.testing.assert_array_equal(recent[stream].labelled.labels, labelled.labels)


def test_streams_without_rows_read_as_empty(stored: Engine) -> None:
    missing = ("site-99", "cxr-lesion", "1.0.0", "lesion")
    with stored.connect() as connection:
        window = read_streams(connection, [missing], 500)[missing]
        earliest = earliest_labelled(connection, [missing], 500)[missing]
        recent = recent_windows(connection, [missing], 500)[missing]
    assert window.cumulative.summary is None and window.rolling.summary is None
    assert (window.predicted, window.recent) == (0, 0)
    assert len(earliest) == 0 and len(recent.labelled) == 0
    assert recent.oldest is None and recent.scores.size == 0


def test_recent_window_with_predictions_tied_at_its_oldest_time(stored: Engine) -> None:
    """Predictions sharing the oldest time of the latest ``limit``: the labelled ones beyond
    the limit are read too, as ``joined_sample(since=oldest)`` reads them, and every read
    breaks ties the same way (by event id), so a reference or a window holds the same cases
    on every replica and every run. (A site of its own next to the shared history.)"""
    at = datetime(2026, 5, 1, tzinfo=UTC)
    events: list[InferenceEvent | LabelEvent] = []
    for n in range(8):
        events.append(
            InferenceEvent(
                event_id=uuid.UUID(int=5 * 10**8 + n),  # ids apart from the history's
                site_id="site-ties",
                model_name="cxr-lesion",
                model_version="1.0.0",
                occurred_at=at if n < 6 else at + timedelta(hours=n),
                study_key=study_key(n),
                modality="DX",
                metadata=DicomMetadata(Modality="DX"),
                prediction=Prediction(scores={"lesion": n / 10}, threshold=0.5),
            )
        )
        events.append(_label(10**8 + n, "site-ties", n, at + timedelta(days=1), {"lesion": n % 2}))
    store_batch(stored, [Delivered(e, "t", 0, i) for i, e in enumerate(events)], [])
    stream = ("site-ties", "cxr-lesion", "1.0.0", "lesion")
    with stored.connect() as connection:
        recent = recent_windows(connection, [stream], 4)[stream]
    scores, oldest = recent_predictions(
        stored, "site-ties", "cxr-lesion", "lesion", model_version="1.0.0", limit=4
    )
    labelled = joined_sample(
        stored, "site-ties", "cxr-lesion", "lesion", model_version="1.0.0", since=oldest
    )
    assert oldest == at and recent.oldest == at
    # Ties are broken by event id, the same way in every read: the latest four are the two
    # later predictions, then the tied ones with the highest ids (5 and 4), newest first.
    assert recent.scores.tolist() == scores.tolist() == [0.7, 0.6, 0.5, 0.4]
    assert len(labelled) == 8 and len(recent.labelled) == 8
    assert recent.labelled.scores.tolist() == labelled.scores.tolist()
    assert labelled.scores.tolist() == [n / 10 for n in range(8)]
    # The earliest three of the six tied predictions: the lowest ids, in both reads.
    with stored.connect() as connection:
        earliest = earliest_labelled(connection, [stream], 3)[stream]
    first = joined_sample(
        stored, "site-ties", "cxr-lesion", "lesion", model_version="1.0.0", limit=3, earliest=True
    )
    assert earliest.scores.tolist() == first.scores.tolist() == [0.0, 0.1, 0.2]
