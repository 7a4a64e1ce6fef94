"""Drift detection in the live consumer: state saved with the offsets, crash and restart exact."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, Engine, select

from monitor.drift.config import DetectorSet, EngineConfig, OnlineSettings, WindowConfig
from monitor.drift.engine import DriftEngine
from monitor.drift.online import OnlineConfig
from monitor.drift.severity import Severity
from monitor.events import InferenceEvent
from monitor.service.drift.alerts import get_alert, write_alerts
from monitor.service.drift.store import DriftBatch, DriftMonitor
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered, make_producer
from monitor.service.models import AlertRow, DriftCheckRow, DriftStreamRow, ReferenceChangeRow
from monitor.service.settings import KafkaSettings
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.integration.helpers import ingest_until, read_all, send

pytestmark = pytest.mark.integration

CONFIG = EngineConfig(
    reference_size=300,
    window=WindowConfig(size=150, min_size=100),
    detectors=DetectorSet(online=OnlineSettings(detector=OnlineConfig(ert=5000, n_bootstraps=300))),
)
N_PER_SITE = 1200


def events() -> list[InferenceEvent]:
    stable = feature_stream(FeatureStreamConfig(site_id="site-01", n_events=N_PER_SITE, seed=1))
    changing = feature_stream(
        FeatureStreamConfig(
            site_id="site-02",
            n_events=N_PER_SITE,
            seed=2,
            change_at=600,
            pixel_shift_sd=0.5,
            degraded_scanner=True,
        )
    )
    return sorted([*stable, *changing], key=lambda e: (e.occurred_at, e.site_id))


class CrashOnce(DriftMonitor):
    """Fails the third batch after the engine has run on it: the transaction rolls back."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def process(self, connection: Connection, stored: Sequence[Delivered]) -> DriftBatch:
        batch = super().process(connection, stored)
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("injected crash after detection, before commit")
        return batch


def test_crash_and_restart_mid_window_match_an_uninterrupted_run(
    pg_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    settings = kafka_settings.model_copy(update={"max_poll_records": 150})
    stream = events()
    producer = make_producer(settings.bootstrap_servers, settings)
    send(producer, settings, stream)
    producer.close()

    first = CrashOnce(CONFIG)
    stats = ingest_until(pg_engine, settings, lambda s: s.stored >= 1000, drift=first, timeout=120)
    assert stats.failures >= 1 and first.calls >= 3
    # A new process: nothing cached, state comes from the database.
    ingest_until(
        pg_engine,
        settings,
        lambda s: s.stored + stats.stored >= len(stream),
        drift=DriftMonitor(CONFIG),
        timeout=180,
    )

    expected = DriftEngine(CONFIG)
    outcomes = [expected.process(event) for event in stream]
    expected_checks = sorted(
        _check_key(c.key.site_id, c.detector, c.window_start, c.window_end, c.n_window, c.result)
        for o in outcomes
        for c in o.checks
    )
    expected_alerts = {str(a.alert_id): a.to_json() for o in outcomes for a in o.alerts}
    assert expected_alerts, "the changed site must alert"
    assert {a["site_id"] for a in expected_alerts.values()} == {"site-02"}

    with pg_engine.connect() as connection:
        checks = connection.execute(select(DriftCheckRow)).all()
        alerts = connection.execute(select(AlertRow)).all()
        streams = connection.execute(select(DriftStreamRow)).all()
        references = connection.execute(select(ReferenceChangeRow)).all()
    stored_checks = sorted(
        _check_key(r.site_id, r.detector, r.window_start, r.window_end, r.n_window, r)
        for r in checks
    )
    assert stored_checks == expected_checks
    assert {str(r.alert_id) for r in alerts} == set(expected_alerts)
    for row in alerts:
        document = expected_alerts[str(row.alert_id)]
        assert (row.detector, row.explanation, list(row.features)) == (
            document["detector"],
            document["explanation"],
            document["features"],
        )
        assert row.status == "open"
    assert sorted(r.events_seen for r in streams) == [N_PER_SITE, N_PER_SITE]
    assert sorted(r.source for r in references) == ["first_events", "first_events"]

    published = read_all(settings.bootstrap_servers, settings.alerts_topic, len(alerts))
    documents = [orjson.loads(record.value) for record in published]
    assert {d["alert_id"] for d in documents} == set(expected_alerts)
    assert all(d["schema"] == "drift-alert/v1" for d in documents)


def _check_key(
    site_id: str, detector: str, start: Any, end: Any, n_window: int, result: Any
) -> tuple[Any, ...]:
    statistic = None if result is None or result.statistic is None else round(result.statistic, 9)
    p_value = None if result is None or result.p_value is None else round(result.p_value, 9)
    is_drift = None if result is None else result.is_drift
    return (
        site_id,
        detector,
        start.timestamp(),
        end.timestamp(),
        n_window,
        statistic,
        p_value,
        is_drift,
    )


def test_partition_moving_between_consumers_neither_loses_nor_double_counts(
    pg_engine: Engine,
) -> None:
    """Two consumers take turns on the same streams (a partition moving back and forth in a
    rebalance); each reloads what the other saved, and a redelivered batch changes nothing."""
    stream = events()
    consumers = [DriftMonitor(CONFIG), DriftMonitor(CONFIG)]
    batches = [stream[i : i + 200] for i in range(0, len(stream), 200)]
    for number, batch in enumerate(batches):
        delivered = [Delivered(e, "t", 0, number * 200 + i) for i, e in enumerate(batch)]
        owner = consumers[(number // 2) % 2]  # ownership moves every two batches
        store_batch(pg_engine, delivered, [], owner.process)
        if number % 5 == 0:  # the previous owner redelivers the same batch: the inbox skips it
            store_batch(pg_engine, delivered, [], consumers[1 - (number // 2) % 2].process)

    expected = DriftEngine(CONFIG)
    outcomes = [expected.process(event) for event in stream]
    with pg_engine.connect() as connection:
        checks = connection.execute(select(DriftCheckRow)).all()
        alerts = connection.execute(select(AlertRow.alert_id)).scalars().all()
        seen = connection.execute(select(DriftStreamRow.events_seen)).scalars().all()
    assert sorted(
        _check_key(r.site_id, r.detector, r.window_start, r.window_end, r.n_window, r)
        for r in checks
    ) == sorted(
        _check_key(c.key.site_id, c.detector, c.window_start, c.window_end, c.n_window, c.result)
        for o in outcomes
        for c in o.checks
    )
    assert sorted(str(a) for a in alerts) == sorted(
        str(a.alert_id) for o in outcomes for a in o.alerts
    )
    assert sorted(seen) == [N_PER_SITE, N_PER_SITE]


def test_alerts_the_consumer_did_not_raise_are_published_from_the_outbox(
    pg_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    """A performance alert written by a scheduler job reaches radsentry.alerts while the
    consumer is idle, once: the outbox is checked every outbox_check_s."""
    engine = DriftEngine(CONFIG)
    outcomes = (engine.process(e) for e in events() if e.site_id == "site-02")
    alert = next(a for outcome in outcomes for a in outcome.alerts)
    # An info alert (a data-quality finding, say) is stored and shown, never published.
    info = dataclasses.replace(alert, alert_id=uuid.uuid4(), severity=Severity.INFO)
    with pg_engine.begin() as connection:
        write_alerts(connection, [alert, info], alert.occurred_at)
    settings = kafka_settings.model_copy(update={"outbox_check_s": 0.2})
    stats = ingest_until(
        pg_engine, settings, lambda s: s.alerts_published >= 1, drift=DriftMonitor(CONFIG)
    )
    assert stats.alerts_published == 1 and stats.stored == 0
    published = read_all(settings.bootstrap_servers, settings.alerts_topic, 1)
    assert [orjson.loads(r.value)["alert_id"] for r in published] == [str(alert.alert_id)]
    assert orjson.loads(published[0].value)["severity"] == alert.severity.value
    assert get_alert(pg_engine, info.alert_id).published_at is None
