"""Drift, alert, re-baselining and report endpoints against a real PostgreSQL database."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from monitor.drift.alerts import Alert, AlertUpdate, StreamKey
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.drift.severity import Severity
from monitor.events import InferenceEvent
from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.cli import app
from monitor.service.drift.alerts import apply_updates, get_alert, write_alerts
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.consumer import observe_drift
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import AlertRow, ReferenceChangeRow
from monitor.service.settings import Settings
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.auth_helpers import TEST_AUTH, bearer

pytestmark = pytest.mark.integration

CONFIG = EngineConfig(
    reference_size=200,
    window=WindowConfig(size=100, min_size=50),
    detectors=DetectorSet(online=None),
)
SITE = "site-02"
STREAM = {"model_name": "cxr-lesion", "model_version": "1.0.0"}
SETTINGS = Settings(drift=CONFIG, auth=TEST_AUTH)


def changed_site(n: int, seed: int = 2) -> list[InferenceEvent]:
    config = FeatureStreamConfig(
        site_id=SITE, n_events=n, seed=seed, change_at=300, degraded_scanner=True
    )
    return list(feature_stream(config))


def ingest(
    engine: Engine, monitor: DriftMonitor, events: list[InferenceEvent], start: int = 0
) -> None:
    for first in range(0, len(events), 100):
        chunk = events[first : first + 100]
        delivered = [Delivered(e, "t", 0, start + first + i) for i, e in enumerate(chunk)]
        batch = None

        def detect(connection: object, stored: list[Delivered]) -> None:
            nonlocal batch
            batch = monitor.process(connection, stored)  # type: ignore[arg-type]

        store_batch(engine, delivered, [], detect)
        assert batch is not None
        observe_drift(batch)


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    ingest(pg_engine, DriftMonitor(CONFIG), changed_site(700))
    app = create_app(SETTINGS, engine=pg_engine)
    with TestClient(app, headers=bearer(SETTINGS, "mlops-ann", Role.MLOPS)) as test_client:
        yield test_client


def test_site_drift_shows_streams_and_latest_check_per_detector(client: TestClient) -> None:
    body = client.get(f"/sites/{SITE}/drift").json()
    assert [s["events_seen"] for s in body["streams"]] == [700]
    assert body["streams"][0]["reference"]["frozen"] is True
    detectors = {c["detector"]: c for c in body["latest_checks"]}
    assert set(detectors) == {"mmd", "ks", "chi2", "score_ks", "missingness"}
    assert detectors["chi2"]["is_drift"] is True
    assert detectors["chi2"]["attributions"][0]["explanation"]
    assert client.get("/sites/nowhere/drift").status_code == 404


def test_a_stream_still_collecting_its_reference_shows_how_far_it_has_come(
    client: TestClient, pg_engine: Engine
) -> None:
    config = FeatureStreamConfig(site_id="site-07", n_events=120, seed=4)
    events = list(feature_stream(config))
    ingest(pg_engine, DriftMonitor(CONFIG), events)
    [stream] = client.get("/sites/site-07/drift").json()["streams"]
    reference = stream["reference"]
    assert reference["frozen"] is False and reference["n_events"] == 120
    # ISO 8601 UTC, as every other time the API answers (the engine keeps POSIX seconds).
    first, last = (
        datetime.fromisoformat(reference[k]) for k in ("first_event_at", "last_event_at")
    )
    assert first == events[0].occurred_at and last == events[-1].occurred_at
    assert first.utcoffset() == timedelta(0) and reference["requested_at"] is None
    assert stream["reference_complete_when"] == "200 events"  # CONFIG: a reference by count
    assert EngineConfig().reference_needs() == "1,000 events spanning 91 days"


def test_alerts_filter_paginate_and_follow_their_lifecycle(client: TestClient) -> None:
    page = client.get("/alerts", params={"site_id": SITE}).json()
    assert page["total"] >= 2
    assert {a["detector"] for a in page["items"]} >= {"chi2", "ks"}
    chi2 = client.get("/alerts", params={"detector": "chi2"}).json()["items"][0]
    assert "Manufacturer" in chi2["features"] and chi2["status"] == "open"
    one = client.get("/alerts", params={"limit": 1, "offset": 1}).json()
    assert len(one["items"]) == 1 and one["total"] == page["total"]

    url = f"/alerts/{chi2['alert_id']}"
    acked = client.post(f"{url}/acknowledge", json={"note": "looking"})
    assert acked.status_code == 200
    assert (acked.json()["status"], acked.json()["acknowledged_by"]) == (
        "acknowledged",
        "mlops-ann",
    )
    bob = bearer(SETTINGS, "mlops-bob", Role.MLOPS)
    assert client.post(f"{url}/acknowledge", json={}, headers=bob).status_code == 409
    resolved = client.post(f"{url}/resolve", json={}, headers=bob).json()
    assert (resolved["status"], resolved["resolved_by"]) == ("resolved", "mlops-bob")
    assert client.get("/alerts", params={"status": "resolved"}).json()["total"] == 1
    missing = "/alerts/00000000-0000-0000-0000-000000000000/resolve"
    assert client.post(missing, json={}).status_code == 404


def test_a_sites_alerts_are_where_a_site_manager_looks_for_them(client: TestClient) -> None:
    by_query = client.get("/alerts", params={"site_id": SITE, "limit": 2}).json()
    by_path = client.get(f"/sites/{SITE}/alerts", params={"limit": 2}).json()
    assert by_path == by_query and by_path["total"] >= 2
    chi2 = client.get(f"/sites/{SITE}/alerts", params={"detector": "chi2"}).json()
    assert [a["detector"] for a in chi2["items"]] == ["chi2"] * len(chi2["items"]) != []
    manager = bearer(SETTINGS, "manager-mo", Role.SITE_MANAGER, sites=["site-99"])
    assert client.get(f"/sites/{SITE}/alerts", headers=manager).status_code == 403


def test_the_actor_comes_from_the_token_never_from_the_body(client: TestClient) -> None:
    alert = client.get("/alerts", params={"site_id": SITE}).json()["items"][0]
    forged = client.post(f"/alerts/{alert['alert_id']}/acknowledge", json={"actor": "someone"})
    assert forged.status_code == 422  # the field is gone; the token's subject is the actor
    body = {**STREAM, "requested_by": "someone", "reason": "r"}
    assert client.post(f"/sites/{SITE}/reference", json=body).status_code == 422


def test_rebaseline_records_who_and_why_and_the_consumer_follows(
    client: TestClient, pg_engine: Engine
) -> None:
    body = {**STREAM, "reason": "portable CR reader is the new normal"}
    response = client.post(f"/sites/{SITE}/reference", json=body)
    assert response.status_code == 202
    assert (response.json()["generation"], response.json()["source"]) == (1, "next_events")
    requested_at = datetime.fromisoformat(response.json()["requested_at"])
    assert abs(datetime.now(UTC) - requested_at) < timedelta(minutes=1)
    open_alerts = client.get("/alerts", params={"site_id": SITE}).json()["items"]
    assert all(not a["drift_active"] for a in open_alerts)
    assert all(a["ended_reason"].startswith("re-baselined") for a in open_alerts)

    # The running consumer sees the new state version and collects a new reference.
    later = changed_site(1200)[700:]
    ingest(pg_engine, DriftMonitor(CONFIG), later, start=700)
    streams = client.get(f"/sites/{SITE}/drift").json()["streams"]
    assert streams[0]["reference"]["generation"] == 1 and streams[0]["reference"]["frozen"]
    assert client.get("/alerts", params={"site_id": SITE}).json()["total"] == len(open_alerts)
    with pg_engine.connect() as connection:
        changes = connection.execute(select(ReferenceChangeRow)).all()
    assert [(c.source, c.requested_by) for c in changes] == [
        ("first_events", None),
        ("next_events", "mlops-ann"),
        ("next_events", "mlops-ann"),
    ]


def test_uploaded_reference_must_be_large_enough_and_from_the_site(client: TestClient) -> None:
    events = [e.model_dump(mode="json", by_alias=True) for e in changed_site(60, seed=9)]
    body = {**STREAM, "reason": "validation set"}
    wrong_site = [{**e, "site_id": "site-99"} for e in events]
    assert (
        client.post(f"/sites/{SITE}/reference", json={**body, "events": wrong_site}).status_code
        == 422
    )
    small = client.post(f"/sites/{SITE}/reference", json={**body, "events": events[:10]})
    assert small.status_code == 422 and "at least 50" in small.json()["detail"]
    uploaded = client.post(f"/sites/{SITE}/reference", json={**body, "events": events})
    assert uploaded.status_code == 202
    assert (uploaded.json()["source"], uploaded.json()["n_events"]) == ("uploaded", 60)
    # An empty upload for a stream never seen: too small (422), not a server error (the
    # fuzzer's find: the engine took it for a stream without events and raised a KeyError).
    unseen = {"model_name": "never-seen", "model_version": "1", "reason": "r", "events": []}
    empty = client.post(f"/sites/{SITE}/reference", json=unseen)
    assert empty.status_code == 422 and "at least 50" in empty.json()["detail"]


def test_report_is_an_html_page_and_metrics_carry_detector_statistics(client: TestClient) -> None:
    response = client.get(f"/sites/{SITE}/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "Drift report: site-02, cxr-lesion 1.0.0" in response.text
    assert client.get("/sites/nowhere/report").status_code == 404
    metrics = client.get("/metrics").text
    assert (
        'radsentry_drift_detected{detector="chi2",model_name="cxr-lesion",site_id="site-02"} 1.0'
        in metrics
    )
    assert 'radsentry_alerts_opened_total{detector="chi2"' in metrics


def test_report_command_writes_the_same_page(
    client: TestClient, pg_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RADSENTRY_DATABASE__URL", pg_engine.url.render_as_string(hide_password=False)
    )
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--site", SITE, "--out", str(out), "--evidently"])
    assert result.exit_code == 0, result.output
    assert "Drift report: site-02, cxr-lesion 1.0.0" in out.read_text()
    page = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["report", "--site", SITE, "--out", str(page)])
    assert result.exit_code == 0, result.output
    # The page the API serves, but for the minute it was generated in.
    served, written = client.get(f"/sites/{SITE}/drift-report").text, page.read_text()
    changed = re.compile(r'<section id="changed">.*?</section>', re.S)
    assert changed.search(written) is not None
    assert changed.findall(written) == changed.findall(served)
    missing = CliRunner().invoke(app, ["report", "--site", "nowhere", "--out", str(out)])
    assert missing.exit_code == 1 and "no monitored stream" in missing.output


def test_alerts_carry_their_severity_and_filter_by_the_least_one(
    client: TestClient, pg_engine: Engine
) -> None:
    every = client.get("/alerts", params={"site_id": SITE}).json()["items"]
    assert every and all(a["severity"] in ("info", "warning", "critical") for a in every)
    # The scanner change is seen by several detectors at once: its alerts are critical.
    assert {a["severity"] for a in every if a["detector"] in ("chi2", "ks")} == {"critical"}
    # An info alert (a lone, small effect) is listed, and left out from warning up.
    chi2 = next(a for a in every if a["detector"] == "chi2")
    with pg_engine.begin() as connection:
        connection.execute(
            update(AlertRow)
            .where(AlertRow.alert_id == uuid.UUID(chi2["alert_id"]))
            .values(severity="info")
        )
    serious = client.get("/alerts", params={"min_severity": "warning"}).json()
    assert chi2["alert_id"] not in {a["alert_id"] for a in serious["items"]}
    assert serious["total"] == len(every) - 1
    assert client.get("/alerts", params={"min_severity": "loud"}).status_code == 422


def test_a_continued_episode_keeps_the_most_serious_severity_it_saw(pg_engine: Engine) -> None:
    alert_id = uuid.uuid4()
    with pg_engine.begin() as connection:
        write_alerts(connection, [_alert(alert_id, Severity.INFO)], datetime.now(UTC))
        for level in (Severity.CRITICAL, Severity.WARNING, None):
            apply_updates(
                connection,
                [AlertUpdate(alert_id, "continued", datetime.now(UTC), 0.5, severity=level)],
            )
    row = get_alert(pg_engine, alert_id)
    assert row.severity == "critical" and row.drifting_checks == 4


def _alert(alert_id: uuid.UUID, severity: Severity) -> Alert:
    now = datetime.now(UTC)
    return Alert(
        alert_id=alert_id,
        key=StreamKey(SITE, "cxr-lesion", "1.0.0"),
        detector="ks",
        features=("KVP",),
        occurred_at=now,
        since=now,
        window_start=now,
        window_end=now,
        statistic=0.3,
        p_value=0.001,
        effect_size=0.12,
        effect_size_name="wasserstein_norm",
        explanation="KVP moved",
        config_fingerprint="f" * 64,
        reference_id=uuid.uuid4(),
        severity=severity,
    )


def test_a_sustained_episode_asks_for_a_decision_until_someone_takes_it(
    client: TestClient, pg_engine: Engine
) -> None:
    chi2 = client.get("/alerts", params={"detector": "chi2"}).json()["items"][0]
    assert chi2["needs_decision"] is False and chi2["decision_asked_at"] is None
    asked_at = datetime(2026, 1, 20, tzinfo=UTC)
    reason = "sustained for 15 days: acknowledge and re-baseline if this is the new normal"
    with pg_engine.begin() as connection:
        update_ = AlertUpdate(uuid.UUID(chi2["alert_id"]), "sustained", asked_at, reason=reason)
        apply_updates(connection, [update_])
    url = f"/alerts/{chi2['alert_id']}"
    shown = client.get(url).json()
    assert shown["needs_decision"] is True and shown["decision_reason"] == reason
    assert datetime.fromisoformat(shown["decision_asked_at"]) == asked_at
    assert shown["drift_active"] is True  # asking for a decision ends nothing by itself
    acknowledged = client.post(f"{url}/acknowledge", json={"note": "new scanner: re-baseline"})
    assert acknowledged.json()["needs_decision"] is False


def test_the_drift_report_opens_in_a_browser_through_a_signed_link(client: TestClient) -> None:
    browser = TestClient(client.app)  # no bearer header, as a browser opening a URL
    page = f"/sites/{SITE}/report"
    assert browser.get(page).status_code == 401
    link = client.post("/links", json={"path": page})
    assert link.status_code == 201, link.text
    opened = browser.get(link.json()["url"])
    assert opened.status_code == 200 and opened.headers["content-type"].startswith("text/html")
    assert (
        browser.get(f"/sites/site-01/report?{link.json()['url'].split('?')[1]}").status_code == 401
    )
