"""Sufficient statistics kept as labels join, against the raw rows, in a real PostgreSQL.

One shuffled history (two sites, two model versions, two findings, labels before and after
their predictions, corrections, repeats, orphan labels that expire, a prediction arriving after
its label expired, redelivered batches) is stored batch by batch. Then every window's statistics
must equal the ones computed from the raw rows, bit for bit, and a rebuild from the raw rows
must give the same table.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, delete, select

from monitor.events import DicomMetadata, InferenceEvent, LabelEvent, LabelSource, Prediction
from monitor.performance.delays import DelaySketch
from monitor.performance.metrics import PerformanceConfig, binary_metrics
from monitor.performance.sufficient import PerformanceSummary
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import (
    CurrentLabelRow,
    InferenceEventRow,
    PerformanceBucketRow,
    PredictionCountRow,
)
from monitor.service.performance import maintenance
from monitor.service.performance.jobs import verify_performance
from monitor.service.performance.labels import expire_unmatched, joined_sample
from monitor.service.performance.store import FLEET, RefreshCache, refresh
from monitor.service.performance.windows import read_window, tracked
from monitor.service.settings import PerformanceSettings
from tests.factories import study_key

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, tzinfo=UTC)
HORIZON = timedelta(days=10)
SITES = ("site-01", "site-02")
VERSIONS = {"1.0.0": 0.5, "2.0.0": None}  # the second version's events carry no threshold


def _history(seed: int = 3) -> list[tuple[datetime, InferenceEvent | LabelEvent]]:
    """(arrival time, event) of a shuffled history; see the module docstring."""
    rng = random.Random(seed)
    arrivals: list[tuple[datetime, InferenceEvent | LabelEvent]] = []
    ids = iter(range(1, 10**6))
    for n in range(600):
        site = SITES[n % 2]
        version = "1.0.0" if n < 400 else "2.0.0"
        at = START + timedelta(hours=n * 0.8 + rng.random())
        positive = rng.random() < 0.3
        scores = {"lesion": min(1.0, max(0.0, rng.gauss(0.65 if positive else 0.35, 0.2)))}
        if rng.random() < 0.7:
            scores["effusion"] = rng.random()
        sex = rng.choice(["F", "M", None])
        event = InferenceEvent(
            event_id=uuid.UUID(int=next(ids)),
            site_id=site,
            model_name="cxr-lesion",
            model_version=version,
            occurred_at=at,
            study_key=study_key(n),
            modality="DX",
            metadata=DicomMetadata(Modality="DX", Manufacturer="ACME", PatientSex=sex),
            prediction=Prediction(scores=scores, threshold=VERSIONS[version]),
        )
        orphan = rng.random() < 0.05  # a label for a study whose prediction never comes
        late_prediction = orphan and rng.random() < 0.5  # ...or comes after expiry
        if not orphan:
            arrivals.append((at + timedelta(minutes=rng.random() * 30), event))
        elif late_prediction:
            arrivals.append((at + HORIZON * 2, event))
        if rng.random() < 0.85 or orphan:
            findings = {"lesion": int(positive), "effusion": int(rng.random() < 0.4)}
            delay = timedelta(hours=rng.uniform(-3, 24 * 8))
            first = _label(next(ids), site, n, at + delay, findings)
            arrivals.append((at + max(delay, timedelta()), first))
            if rng.random() < 0.15:  # a correction (one finding flipped), later
                corrected = dict(findings, lesion=1 - findings["lesion"])
                later = at + delay + timedelta(hours=rng.uniform(1, 24 * 5))
                arrivals.append((later, _label(next(ids), site, n, later, corrected)))
            elif rng.random() < 0.1:  # a repeat, later, same values
                later = at + delay + timedelta(hours=rng.uniform(1, 48))
                arrivals.append((later, _label(next(ids), site, n, later, findings)))
            elif rng.random() < 0.05:  # an older label arriving late: changes nothing
                older = at + delay - timedelta(hours=2)
                arrivals.append(
                    (at + delay + timedelta(hours=3), _label(next(ids), site, n, older, findings))
                )
    arrivals.sort(key=lambda item: item[0])
    return arrivals


def _label(number: int, site: str, n: int, at: datetime, labels: dict[str, int]) -> LabelEvent:
    return LabelEvent(
        event_id=uuid.UUID(int=10**9 + number),
        site_id=site,
        model_name="cxr-lesion",
        study_key=study_key(n),
        occurred_at=at,
        labels=labels,
        source=LabelSource.RADIOLOGIST,
    )


def _store_history(engine: Engine, seed: int = 3) -> None:
    """Batches of 1 to 60 events in arrival order, expiry run between them (at arrival time),
    and every fifth batch delivered twice."""
    rng = random.Random(seed)
    history = _history(seed)
    offsets = iter(range(10**6))
    position = 0
    while position < len(history):
        size = rng.randint(1, 60)
        chunk = history[position : position + size]
        position += size
        delivered = [Delivered(event, "t", 0, next(offsets)) for _, event in chunk]
        store_batch(engine, delivered, [])
        if rng.random() < 0.2:
            store_batch(engine, delivered, [])  # redelivered: nothing changes
        expire_unmatched(engine, HORIZON, now=chunk[-1][0])


@pytest.fixture
def stored(pg_engine: Engine) -> Iterator[Engine]:
    _store_history(pg_engine)
    yield pg_engine


def _raw_summary(
    engine: Engine, stream: tuple[str, str, str], finding: str, layout_of: PerformanceSummary
) -> tuple[PerformanceSummary, Any]:
    site_id, model_name, version = stream
    raw = joined_sample(engine, site_id, model_name, finding, model_version=version)
    expected = PerformanceSummary(layout_of.key, layout_of.layout)
    expected.add(raw.labels, raw.scores)
    return expected, raw


def test_every_window_equals_the_raw_rows_bit_for_bit(stored: Engine) -> None:
    with stored.connect() as connection:
        pairs = tracked(connection)
        expired = set(
            connection.scalars(
                select(CurrentLabelRow.study_key).where(CurrentLabelRow.expired_at.is_not(None))
            )
        )
        predicted_late = set(
            connection.scalars(
                select(InferenceEventRow.study_key).where(InferenceEventRow.study_key.in_(expired))
            )
        )
    # The history expires labels, and some of their predictions arrive after all: the raw
    # rows leave those out, and so must the statistics (checked by the equality below).
    assert expired and predicted_late
    assert {(s[2], f) for s, f in pairs} == {
        (v, f) for v in VERSIONS for f in ("lesion", "effusion")
    }
    for stream, finding in pairs:
        with stored.connect() as connection:
            window = read_window(connection, *stream[1:], finding, site_id=stream[0])
        assert window.summary is not None
        expected, raw = _raw_summary(stored, stream, finding, window.summary)
        assert window.summary == expected, (stream, finding)
        assert window.delays.counts == DelaySketch(_sketch(raw.delays_h)).counts
        assert window.first_at == raw.predicted_at[0] and window.last_at == raw.predicted_at[-1]
        sexes = [md.get("PatientSex") for md in raw.metadata]
        for value in ("F", "M", None):
            members = np.array([s == value for s in sexes])
            group = window.subgroups[("PatientSex", value or "")]
            assert group.n == members.sum()
            mine = PerformanceSummary(group.key, group.layout)
            mine.add(raw.labels[members], raw.scores[members])
            assert group == mine, (stream, finding, value)
    assert verify_performance(stored, PerformanceSettings()) == 0


def _sketch(delays: np.ndarray) -> dict[int, int]:
    sketch = DelaySketch()
    sketch.add(delays.tolist())
    return dict(sketch.counts)


def test_a_lost_statistics_row_is_found_and_a_rebuild_restores_the_same_table(
    stored: Engine,
) -> None:
    """As an operator meets it: a statistics row goes missing (a restore from an older backup,
    a bug); the daily job and `radsentry performance verify` (a real process) name the window,
    `radsentry performance rebuild --yes` counts every case again from the raw rows, and the
    table equals the one the batches built incrementally, row for row."""

    def rows() -> dict[tuple[Any, ...], tuple[Any, ...]]:
        with stored.connect() as connection:
            buckets = connection.execute(select(PerformanceBucketRow.__table__)).all()
            counts = connection.execute(select(PredictionCountRow.__table__)).all()
        return {
            tuple(r[:8]): (r.summary, r.delays, r.n, r.first_at, r.last_at) for r in buckets
        } | {("count", *r[:4]): (r.n,) for r in counts}

    def radsentry(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
        env["RADSENTRY_DATABASE__URL"] = stored.url.render_as_string(hide_password=False)
        return subprocess.run(
            [sys.executable, "-m", "monitor.service.cli", "performance", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    incremental = rows()
    table = PerformanceBucketRow.__table__
    lost = (
        (table.c.site_id == "site-02")
        & (table.c.model_version == "1.0.0")
        & (table.c.finding == "lesion")
        & (table.c.subgroup_field == "")
        & (table.c.bucket == "total")
    )
    with stored.begin() as connection:
        assert connection.execute(delete(table).where(lost)).rowcount == 1
    assert verify_performance(stored, PerformanceSettings()) == 1
    found = radsentry("verify")
    assert found.returncode == 1, found.stderr
    # The command's messages go to stderr (as every radsentry command's).
    assert "site-02 cxr-lesion 1.0.0 lesion: 0 labelled cases summarised" in found.stderr
    assert "radsentry performance rebuild" in found.stderr

    rebuilt = radsentry("rebuild", "--yes")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "labelled cases counted" in rebuilt.stderr
    # A bucket emptied by nothing is never written: equal key sets, equal contents.
    assert rows().keys() == incremental.keys()
    assert rows() == incremental
    checked = radsentry("verify")
    assert checked.returncode == 0, checked.stderr
    assert "8 windows equal the raw rows" in checked.stderr
    assert verify_performance(stored, PerformanceSettings()) == 0


def test_a_batch_committed_during_the_verification_is_not_a_difference(
    stored: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer keeps writing while the daily verification runs. A batch that commits
    between the raw read and the statistics read of a window must not show as a difference:
    both are read in one snapshot. The batch is stored, for real, at that very moment."""
    at = START + timedelta(days=30)
    batch = [
        InferenceEvent(
            event_id=uuid.UUID(int=7 * 10**8 + n),
            site_id="site-01",
            model_name="cxr-lesion",
            model_version="1.0.0",
            occurred_at=at + timedelta(minutes=n),
            study_key=study_key(10_000 + n),
            modality="DX",
            metadata=DicomMetadata(Modality="DX"),
            prediction=Prediction(scores={"lesion": n / 10}, threshold=0.5),
        )
        for n in range(5)
    ] + [_label(7 * 10**6 + n, "site-01", 10_000 + n, at, {"lesion": n % 2}) for n in range(5)]
    real_verify = maintenance.verify
    racing = {"stream": (("site-01", "cxr-lesion", "1.0.0"), "lesion"), "stored": False}

    def verify_after_a_commit(connection: Any, stream: Any, finding: str, raw: Any) -> Any:
        if (stream, finding) == racing["stream"] and not racing["stored"]:
            store_batch(stored, [Delivered(e, "t", 0, 10**7 + i) for i, e in enumerate(batch)], [])
            racing["stored"] = True
        return real_verify(connection, stream, finding, raw)

    monkeypatch.setattr(maintenance, "verify", verify_after_a_commit)
    found = maintenance.mismatches(stored)
    assert racing["stored"], "the batch was stored during the verification"
    assert found.problems == (), found.problems
    # The next verification sees the batch on both sides.
    monkeypatch.setattr(maintenance, "verify", real_verify)
    assert maintenance.mismatches(stored).problems == ()
    with stored.connect() as connection:
        window = read_window(connection, "cxr-lesion", "1.0.0", "lesion", site_id="site-01")
    raw = joined_sample(stored, "site-01", "cxr-lesion", "lesion", model_version="1.0.0")
    assert window.n == len(raw)


def test_snapshot_metrics_from_the_statistics_match_the_exact_ones(stored: Engine) -> None:
    settings = PerformanceSettings(rolling_window=100)
    config = PerformanceConfig()
    snapshots = refresh(stored, settings, now=START + timedelta(days=60))
    cumulative = {
        (s.site_id, s.model_version, s.finding): s for s in snapshots if s.window == "cumulative"
    }
    for (site_id, version, finding), snapshot in cumulative.items():
        if site_id == FLEET:
            raws = [
                joined_sample(stored, site, "cxr-lesion", finding, model_version=version)
                for site in SITES
            ]
            labels = np.concatenate([r.labels for r in raws])
            scores = np.concatenate([r.scores for r in raws])
        else:
            raw = joined_sample(stored, site_id, "cxr-lesion", finding, model_version=version)
            labels, scores = raw.labels, raw.scores
        exact = binary_metrics(labels, scores, snapshot.metrics.threshold, config)
        mine = snapshot.metrics
        assert mine.counts == exact.counts
        for name in ("sensitivity", "specificity", "ppv", "npv"):
            assert getattr(mine, name) == getattr(exact, name), name
        if exact.auroc is not None:
            assert mine.auroc is not None
            assert abs(mine.auroc.estimate - exact.auroc.estimate) < 1e-3
            assert abs(mine.auroc.lower - exact.auroc.lower) < 1e-3
            assert abs(mine.auroc.upper - exact.auroc.upper) < 1e-3
        assert mine.brier == pytest.approx(exact.brier, abs=1e-8)
        assert mine.ece == pytest.approx(exact.ece, abs=1e-9)
        if site_id != FLEET:
            predicted = sum(
                1
                for _, event in _history()
                if isinstance(event, InferenceEvent)
                and (event.site_id, event.model_version) == (site_id, version)
            )
            assert snapshot.predicted == predicted
    version_2 = [s for s in snapshots if s.model_version == "2.0.0"]
    assert version_2 and all(
        s.metrics.threshold == 0.5 and "0.5 assumed" in s.threshold_source for s in version_2
    )


def test_a_refresh_with_a_cache_recomputes_only_what_changed_and_agrees(pg_engine: Engine) -> None:
    history = _history()
    first_half = [event for _, event in history[: len(history) // 2]]
    offsets = iter(range(10**6))
    store_batch(pg_engine, [Delivered(e, "t", 0, next(offsets)) for e in first_half], [])
    settings = PerformanceSettings(rolling_window=50)
    cache = RefreshCache()
    first = refresh(pg_engine, settings, now=START, cache=cache)
    again = refresh(pg_engine, settings, now=START, cache=cache)  # nothing new: nothing read
    assert [s.metrics for s in again] == [s.metrics for s in first]
    assert all(a is b for a, b in zip(_sites(again), _sites(first), strict=True))

    # Labels arrive for site-02 only: its streams are recomputed, site-01's are kept.
    late = [
        event
        for _, event in history[len(history) // 2 :]
        if isinstance(event, LabelEvent) and event.site_id == "site-02"
    ]
    store_batch(pg_engine, [Delivered(e, "t", 0, next(offsets)) for e in late], [])
    cached = {
        (s.site_id, s.model_version, s.finding, s.window): s
        for s in _sites(refresh(pg_engine, settings, now=START, cache=cache))
    }
    before = {(s.site_id, s.model_version, s.finding, s.window): s for s in _sites(first)}
    changed = {key[0] for key, snapshot in cached.items() if snapshot is not before.get(key)}
    assert changed == {"site-02"}
    # ...and the result is what a refresh without a cache computes, fleet-wide rows included.
    full = refresh(pg_engine, settings, now=START)
    assert [(s.site_id, s.window, s.metrics, s.subgroups) for s in full] == [
        (s.site_id, s.window, s.metrics, s.subgroups)
        for s in refresh(pg_engine, settings, now=START, cache=cache)
    ]


def _sites(snapshots: list[Any]) -> list[Any]:
    return [s for s in snapshots if s.site_id != FLEET]
