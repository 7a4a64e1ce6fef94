"""The service's metrics against the real broker and PostgreSQL: consumer lag, the newest event
per site and drift thresholds from the consumer; open alerts, candidates, promotions and
rollbacks from the API's database collector; the audit chain's verification from its job. Each
appears with its labels and values after the action that sets it, and none carries an event id
or a study key."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, select, text

from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.events import InferenceEvent
from monitor.performance.metrics import Interval
from monitor.service import metrics
from monitor.service.api import create_app
from monitor.service.audit.jobs import verify_change_log
from monitor.service.auth import Role
from monitor.service.db import table_of
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.consumer import Ingestor, Records
from monitor.service.ingest.store import BatchOutcome
from monitor.service.kafka import make_producer
from monitor.service.models import AlertRow, CandidateRow, DriftCheckRow
from monitor.service.performance.store import _export_bounds
from monitor.service.settings import AuditSettings, KafkaSettings, Settings
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.auth_helpers import TEST_AUTH, bearer
from tests.integration.helpers import ingest_until, send

pytestmark = pytest.mark.integration

DRIFT = EngineConfig(
    reference_size=200,
    window=WindowConfig(size=100, min_size=50),
    detectors=DetectorSet(online=None),
)
N_EVENTS = 600


def _sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    return REGISTRY.get_sample_value(name, labels or {})


def _assert_no_identifiers(body: str, events: Sequence[InferenceEvent]) -> None:
    for event in events:
        assert str(event.event_id) not in body and event.study_key not in body


def test_consumer_exports_lag_newest_event_per_site_and_drift_thresholds(
    pg_engine: Engine, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = list(feature_stream(FeatureStreamConfig(site_id="site-71", n_events=N_EVENTS)))
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, stream)
    producer.close()
    topic = kafka_settings.inference_topic
    lag_seen: list[float] = []
    process = Ingestor.process

    def recording(self: Ingestor, records: Records) -> BatchOutcome:
        lag_seen.append(_sample("radsentry_consumer_lag", {"topic": topic}) or 0.0)
        return process(self, records)

    # The gauge is set after each poll, before the batch is processed: record it there.
    monkeypatch.setattr(Ingestor, "process", recording)
    settings = kafka_settings.model_copy(update={"max_poll_records": 100})
    ingest_until(
        pg_engine,
        settings,
        lambda s: s.stored == N_EVENTS and _sample("radsentry_consumer_lag", {"topic": topic}) == 0,
        drift=DriftMonitor(DRIFT),
    )

    assert len(lag_seen) >= N_EVENTS // 100
    assert 0 < lag_seen[0] <= N_EVENTS - 100  # behind after the first batch, not beyond it
    assert _sample("radsentry_consumer_lag", {"topic": kafka_settings.labels_topic}) == 0
    newest = max(e.occurred_at for e in stream).timestamp()
    site = {"site_id": "site-71"}
    assert _sample("radsentry_site_last_event_timestamp_seconds", site) == newest

    with pg_engine.connect() as connection:
        latest: dict[str, float | None] = {}
        for row in connection.execute(
            select(DriftCheckRow.detector, DriftCheckRow.threshold)
            .where(DriftCheckRow.site_id == "site-71", DriftCheckRow.statistic.is_not(None))
            .order_by(DriftCheckRow.window_end)
        ):
            latest[row.detector] = row.threshold
    assert latest, "no drift check ran"
    for detector, threshold in latest.items():
        labels = {**site, "model_name": stream[0].model_name, "detector": detector}
        assert _sample("radsentry_drift_threshold", labels) == threshold, detector
        in_alarm = _sample("radsentry_drift_time_in_alarm", labels)
        assert in_alarm is not None and 0.0 <= in_alarm <= 1.0, (detector, in_alarm)
    _assert_no_identifiers(generate_latest().decode(), stream)


def test_a_restarted_consumer_seeds_the_newest_event_per_site_from_the_database(
    pg_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    """A site that fell silent before a restart still exports its last event time (so it can
    alert as silent); one quiet for longer than the seed window is retired."""
    now = datetime.now(UTC).replace(microsecond=0)
    recent = [
        e.model_copy(update={"occurred_at": now - timedelta(hours=2)})
        for e in feature_stream(FeatureStreamConfig(site_id="site-72", n_events=3, seed=2))
    ]
    retired = [
        e.model_copy(update={"occurred_at": now - timedelta(days=30)})
        for e in feature_stream(FeatureStreamConfig(site_id="site-73", n_events=3, seed=3))
    ]
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, [*recent, *retired])
    producer.close()
    ingest_until(pg_engine, kafka_settings, lambda s: s.stored == 6)
    metrics.SITE_LAST_EVENT.clear()  # what a new process starts with

    ingest_until(pg_engine, kafka_settings, lambda s: True)

    expected = (now - timedelta(hours=2)).timestamp()
    assert _sample("radsentry_site_last_event_timestamp_seconds", {"site_id": "site-72"}) == (
        expected
    )
    assert _sample("radsentry_site_last_event_timestamp_seconds", {"site_id": "site-73"}) is None


def _alert(site_id: str, detector: str, status: str, severity: str = "warning") -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "alert_id": uuid.uuid4(),
        "site_id": site_id,
        "model_name": "cxr-lesion",
        "model_version": "1.0.0",
        "detector": detector,
        "features": ["mean"],
        "occurred_at": now,
        "since": now,
        "window_start": now,
        "window_end": now,
        "statistic": 1.0,
        "p_value": 0.001,
        "effect_size": 0.5,
        "effect_size_name": "d",
        "explanation": "machine-written",
        "config_fingerprint": "f" * 16,
        "reference_id": uuid.uuid4(),
        "status": status,
        "severity": severity,
        "drift_active": True,
        "drifting_checks": 1,
        "last_drift_at": now,
        "created_at": now,
    }


def _candidate(version: int, status: str, promoted: bool, rolled_back: bool) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "candidate_id": uuid.uuid4(),
        "model_name": "cxr-lesion",
        "model_version": str(version),
        "proposed_by": "retrain-job",
        "status": status,
        "created_at": now,
        "updated_at": now,
        "promoted_at": now if promoted else None,
        "rolled_back_at": now if rolled_back else None,
    }


def _families(body: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def test_the_api_exports_open_alerts_candidates_promotions_and_rollbacks(
    pg_engine: Engine,
) -> None:
    """Open alerts per (site, model, detector, status, severity): an info alert beside warning
    ones of the same detector is a series of its own, which the paging rule and the dashboards
    leave out (``severity!="info"``)."""
    with pg_engine.begin() as connection:
        connection.execute(
            table_of(AlertRow).insert(),
            [
                _alert("site-01", "mmd", "open", "warning"),
                _alert("site-01", "mmd", "open", "warning"),
                _alert("site-01", "mmd", "open", "info"),
                _alert("site-01", "mmd", "acknowledged", "critical"),
                _alert("site-02", "sensitivity_floor", "open"),
                _alert("site-02", "ks", "resolved", "info"),
            ],
        )
        connection.execute(
            table_of(CandidateRow).insert(),
            [
                _candidate(2, "rolled_back", promoted=True, rolled_back=True),
                _candidate(3, "promoted", promoted=True, rolled_back=False),
                _candidate(4, "failed", promoted=False, rolled_back=False),
                _candidate(5, "candidate", promoted=False, rolled_back=False),
            ],
        )
    settings = Settings(auth=TEST_AUTH)
    with (
        TestClient(create_app(settings, engine=pg_engine)) as client,
        TestClient(create_app(settings, engine=pg_engine)) as second,  # registered once
    ):
        body = client.get("/metrics").text
        assert second.get("/metrics").status_code == 200
    found = _families(body)

    def labels(**values: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(values.items()))

    mmd = {"site_id": "site-01", "model_name": "cxr-lesion", "detector": "mmd"}
    floor = {"site_id": "site-02", "model_name": "cxr-lesion", "detector": "sensitivity_floor"}
    assert found["radsentry_alerts_open"] == {
        labels(**mmd, status="open", severity="warning"): 2,
        labels(**mmd, status="open", severity="info"): 1,
        labels(**mmd, status="acknowledged", severity="critical"): 1,
        labels(**floor, status="open", severity="warning"): 1,
    }
    assert found["radsentry_candidates"] == {
        labels(model_name="cxr-lesion", status=status): 1
        for status in ("rolled_back", "promoted", "failed", "candidate")
    }
    assert found["radsentry_promotions_total"] == {labels(model_name="cxr-lesion"): 2}
    assert found["radsentry_rollbacks_total"] == {labels(model_name="cxr-lesion"): 1}
    assert "# TYPE radsentry_consumer_lag gauge" in body  # the process's own metrics too
    # Outside an app's lifespan no engine is bound: the families are simply not there.
    open_mmd = {**mmd, "status": "open", "severity": "warning"}
    assert _sample("radsentry_alerts_open", open_mmd) is None
    assert "radsentry_candidates{" not in generate_latest().decode()


def test_a_broken_database_leaves_the_scrape_served_without_its_families() -> None:
    unreachable = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with TestClient(create_app(Settings(auth=TEST_AUTH), engine=unreachable)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "radsentry_drift_statistic" in response.text
    assert "radsentry_alerts_open{" not in response.text
    unreachable.dispose()


def test_audit_verify_exports_the_chain_state_and_when_it_was_checked(
    pg_engine: Engine, tmp_path: Path
) -> None:
    from monitor.service.audit import store as change_log

    settings = Settings(data_dir=tmp_path)
    for number in range(3):
        change_log.record(
            pg_engine,
            change_log.Entry(actor="mlops", action="test", subject=f"s/{number}", details={}),
        )
    before = datetime.now(UTC).timestamp()
    assert verify_change_log(pg_engine, settings) is True
    assert _sample("radsentry_audit_chain_ok") == 1
    verified_at = _sample("radsentry_audit_chain_last_verified_timestamp_seconds")
    assert verified_at is not None and verified_at >= before

    with pg_engine.begin() as connection:
        connection.execute(
            text("ALTER TABLE change_log DISABLE TRIGGER change_log_no_update_delete")
        )
        connection.execute(text("UPDATE change_log SET actor = 'mallory' WHERE seq = 2"))
        connection.execute(
            text("ALTER TABLE change_log ENABLE TRIGGER change_log_no_update_delete")
        )
    assert verify_change_log(pg_engine, settings) is False
    assert _sample("radsentry_audit_chain_ok") == 0
    assert (_sample("radsentry_audit_chain_last_verified_timestamp_seconds") or 0) >= verified_at

    # A check that cannot run (a configured key that is missing) changes neither gauge.
    missing = Settings(
        data_dir=tmp_path, audit=AuditSettings(signing_key_file=tmp_path / "absent.pem")
    )
    last = _sample("radsentry_audit_chain_last_verified_timestamp_seconds")
    assert verify_change_log(pg_engine, missing) is None
    assert _sample("radsentry_audit_chain_ok") == 0
    assert _sample("radsentry_audit_chain_last_verified_timestamp_seconds") == last


def test_performance_bounds_are_set_with_an_interval_and_removed_without_one() -> None:
    labels = ("site-m4", "cxr-lesion", "1.0.0", "lesion", "rolling", "sensitivity")
    names = ("site_id", "model_name", "model_version", "finding", "window", "metric")
    as_dict = dict(zip(names, labels, strict=True))
    _export_bounds(labels, Interval(0.8, 0.7, 0.9, "wilson"))
    assert _sample("radsentry_performance_lower", as_dict) == 0.7
    assert _sample("radsentry_performance_upper", as_dict) == 0.9
    _export_bounds(labels, None)
    assert _sample("radsentry_performance_lower", as_dict) is None
    assert _sample("radsentry_performance_upper", as_dict) is None
    _export_bounds(labels, None)  # never had one: nothing to remove, no error


def test_the_api_verifies_the_change_log_at_start_so_its_gauge_agrees_with_audit_verify(
    pg_engine: Engine, tmp_path: Path
) -> None:
    # Issue 22: /metrics said radsentry_audit_chain_ok 0 (and last verified at 0) while
    # GET /audit/verify said the chain was intact, so the paging rule fired falsely.
    from monitor.service.audit import store as change_log

    for number in range(2):
        change_log.record(
            pg_engine,
            change_log.Entry(actor="mlops", action="test", subject=f"s/{number}", details={}),
        )
    metrics.AUDIT_CHAIN_OK.set(math.nan)  # as in a process that has not checked yet
    metrics.AUDIT_CHAIN_LAST_VERIFIED.set(0)
    started = datetime.now(UTC).timestamp()
    settings = Settings(auth=TEST_AUTH, data_dir=tmp_path)
    with TestClient(create_app(settings, engine=pg_engine)) as client:
        deadline = time.monotonic() + 30
        while _scraped(client, "radsentry_audit_chain_ok") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        scraped_ok = _scraped(client, "radsentry_audit_chain_ok")
        verified_at = _scraped(client, "radsentry_audit_chain_last_verified_timestamp_seconds")
        answer = client.get("/audit/verify", headers=bearer(settings, "audra", Role.AUDITOR))
    assert answer.status_code == 200 and answer.json()["ok"] is True
    assert answer.json()["entries"] == 2
    assert scraped_ok == 1
    assert verified_at is not None and verified_at >= started


def test_a_process_that_has_not_verified_exports_no_broken_chain() -> None:
    # Every process serving the default registry (the consumer's :9101 too) exported
    # radsentry_audit_chain_ok 0 before any check, which RadSentryAuditChainBroken (== 0) read
    # as a broken chain. Until a check it is NaN, which no comparison matches.
    import subprocess
    import sys

    script = (
        "from prometheus_client import REGISTRY\n"
        "import monitor.service.metrics\n"
        "print(REGISTRY.get_sample_value('radsentry_audit_chain_ok'))\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert math.isnan(float(printed))


def _scraped(client: TestClient, name: str) -> float | None:
    """The value of an unlabelled sample in the app's /metrics exposition."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None
