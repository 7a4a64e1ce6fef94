"""Delayed labels joined to predictions in PostgreSQL: order, repeats, corrections, expiry."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from monitor.events import LabelEvent, LabelSource
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import CurrentLabelRow, LabelChangeRow
from monitor.service.performance.labels import expire_unmatched, joined_sample, label_completeness
from tests.factories import T0, inference_event, study_key

pytestmark = pytest.mark.integration

_offsets = iter(range(10**6))


def label(n: int, value: int, *, hours: float, event: int | None = None) -> LabelEvent:
    return LabelEvent(
        event_id=uuid.UUID(int=2 * 10**9 + (event if event is not None else n)),
        site_id="site-01",
        model_name="cxr-lesion",
        study_key=study_key(n),
        occurred_at=T0 + timedelta(minutes=n, hours=hours),
        labels={"lesion": value},
        source=LabelSource.RADIOLOGIST,
    )


def store(engine: Engine, *events: object) -> None:
    store_batch(engine, [Delivered(e, "t", 0, next(_offsets)) for e in events], [])  # type: ignore[arg-type]


def test_labels_join_whether_they_come_before_or_after_the_prediction(pg_engine: Engine) -> None:
    store(pg_engine, label(0, 1, hours=-1))  # the label first (a prior read, say)
    store(pg_engine, inference_event(0, score=0.9), inference_event(1, score=0.2))
    store(pg_engine, label(1, 0, hours=48), inference_event(2, score=0.4))
    sample = joined_sample(pg_engine, "site-01", "cxr-lesion", "lesion")
    assert sample.scores.tolist() == [0.9, 0.2]
    assert sample.labels.tolist() == [1, 0]
    assert sample.delays_h.tolist() == [-1.0, 48.0]
    assert sample.thresholds.tolist() == [0.5, 0.5]
    completeness = label_completeness(pg_engine, "site-01", "cxr-lesion", "lesion")
    assert (completeness.predicted, completeness.labelled, completeness.share) == (3, 2, 2 / 3)
    assert completeness.delay_hours == {"p50": 23.5, "p90": pytest.approx(43.1), "max": 48.0}


def test_the_later_label_wins_corrections_are_recorded_and_repeats_count_once(
    pg_engine: Engine,
) -> None:
    store(pg_engine, inference_event(0, score=0.7))
    first = label(0, 0, hours=24, event=1)
    store(pg_engine, first)
    store(pg_engine, first)  # redelivered: the inbox drops it before the join sees it
    store(pg_engine, label(0, 1, hours=72, event=2))  # the pathology result corrects it
    store(pg_engine, label(0, 0, hours=30, event=3))  # an older read arriving late: no effect
    with pg_engine.connect() as connection:
        current = connection.execute(select(CurrentLabelRow)).one()
        changes = connection.execute(select(LabelChangeRow)).all()
    assert (current.label, current.revisions) == (1, 2)
    assert current.label_event_id == uuid.UUID(int=2 * 10**9 + 2)
    assert [(c.old_label, c.new_label) for c in changes] == [(0, 1)]
    assert joined_sample(pg_engine, "site-01", "cxr-lesion", "lesion").labels.tolist() == [1]


def test_a_label_without_prediction_expires_after_the_horizon_and_is_counted(
    pg_engine: Engine,
) -> None:
    store(pg_engine, label(5, 1, hours=0), label(6, 0, hours=0), inference_event(6))
    assert expire_unmatched(pg_engine, timedelta(days=14), now=T0 + timedelta(days=3)) == 0
    assert expire_unmatched(pg_engine, timedelta(days=14), now=T0 + timedelta(days=15)) == 1
    assert expire_unmatched(pg_engine, timedelta(days=14), now=T0 + timedelta(days=16)) == 0
    store(pg_engine, inference_event(5))  # too late: an expired label stays out of the join
    completeness = label_completeness(pg_engine, "site-01", "cxr-lesion", "lesion")
    assert (completeness.predicted, completeness.labelled, completeness.expired) == (2, 1, 1)


def test_rolling_window_takes_the_latest_labelled_predictions(pg_engine: Engine) -> None:
    store(pg_engine, *(inference_event(n, score=n / 100) for n in range(20)))
    store(pg_engine, *(label(n, n % 2, hours=5) for n in range(20)))
    rolling = joined_sample(pg_engine, "site-01", "cxr-lesion", "lesion", limit=5)
    assert rolling.scores.tolist() == [0.15, 0.16, 0.17, 0.18, 0.19]
    since = joined_sample(
        pg_engine, "site-01", "cxr-lesion", "lesion", since=T0 + timedelta(minutes=18)
    )
    assert len(since) == 2
