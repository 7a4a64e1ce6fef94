"""The HTTP API against a real PostgreSQL database and the bundled broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.broker import free_port
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.settings import KafkaSettings, Settings
from tests.auth_helpers import TEST_AUTH, bearer
from tests.factories import inference_event, label_event, study_key

pytestmark = pytest.mark.integration


@pytest.fixture
def client(pg_engine: Engine, kafka_settings: KafkaSettings) -> Iterator[TestClient]:
    settings = Settings(kafka=kafka_settings, auth=TEST_AUTH)
    headers = bearer(settings, "auditor-amy", Role.AUDITOR)
    with TestClient(create_app(settings, engine=pg_engine), headers=headers) as test_client:
        yield test_client


def _store(engine: Engine) -> None:
    events = [inference_event(i, site_id=("site-a" if i < 30 else "site-b")) for i in range(50)]
    labels = [label_event(i, site_id="site-a") for i in range(10)]
    store_batch(engine, [Delivered(e, "t", 0, n) for n, e in enumerate(events + labels)], [])


def test_health_and_readiness(client: TestClient, pg_engine: Engine) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": True, "broker": True}


def test_readiness_fails_when_the_broker_is_unreachable(pg_engine: Engine) -> None:
    kafka = KafkaSettings(bootstrap_servers=[f"127.0.0.1:{free_port()}"])
    settings = Settings(kafka=kafka, auth=TEST_AUTH)
    with TestClient(create_app(settings, engine=pg_engine)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "database": True, "broker": False}


def test_sites_and_site_events(client: TestClient, pg_engine: Engine) -> None:
    _store(pg_engine)
    sites = client.get("/sites").json()
    assert [(s["site_id"], s["inference_events"], s["label_events"]) for s in sites] == [
        ("site-a", 30, 10),
        ("site-b", 20, 0),
    ]
    detail = client.get("/sites/site-a/events").json()
    assert detail["inference"]["count"] == 30
    assert detail["inference"]["latest_occurred_at"] == "2026-01-01T00:29:00Z"
    assert detail["labels"] == {"count": 10, "latest_occurred_at": "2026-01-04T00:09:00Z"}
    assert client.get("/sites/site-zz/events").status_code == 404
    assert client.get("/sites/bad%20id/events").status_code == 422


def test_metrics_are_exposed_without_identifiers(client: TestClient, pg_engine: Engine) -> None:
    from monitor.service import metrics

    metrics.EVENTS_CONSUMED.labels("radsentry.inference", "site-a").inc(0)
    body = client.get("/metrics").text
    for name in (
        "radsentry_events_consumed_total",
        "radsentry_events_dead_lettered_total",
        "radsentry_event_processing_seconds_bucket",
    ):
        assert name in body
    _store(pg_engine)
    body = client.get("/metrics").text
    assert study_key(1) not in body and "00000000-0000" not in body


def test_openapi_is_served(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/readyz", "/metrics", "/sites", "/sites/{site_id}/events"} <= set(paths)
