"""The embedding detector end to end: inference-event/v2 through the bundled broker, the real
consumer and PostgreSQL, to an ``embedding_mmd`` alert explained by a known direction in the
API and on the site drift page; a v1 site beside it runs without the detector and says why."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.drift.alerts import StreamKey
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.drift.directions import Direction, fit_direction
from monitor.drift.stream import NO_EMBEDDINGS
from monitor.events import InferenceEvent
from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.drift.store import DriftMonitor
from monitor.service.kafka import make_producer
from monitor.service.settings import KafkaSettings, Settings
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.auth_helpers import TEST_AUTH, bearer
from tests.embedding_events import DIMENSIONS, EMBEDDING_ID, embeddings, with_embeddings
from tests.integration.helpers import ingest_until, send

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

CONFIG = EngineConfig(
    reference_size=300,
    window=WindowConfig(size=100, min_size=50),
    detectors=DetectorSet(online=None),
)
SETTINGS = Settings(drift=CONFIG, auth=TEST_AUTH)
N_PER_SITE = 800
LATERAL = np.zeros(DIMENSIONS)
LATERAL[[1, 2]] = [0.8, -0.6]
DIRECTION = fit_direction(
    "lateral_views",
    "towards lateral views",
    embeddings(300, 100),
    embeddings(300, 101, 2 * LATERAL),
)


def known_directions(key: StreamKey, embedding_id: str) -> tuple[Direction, ...]:
    """The model's directions (the service reads them from MLflow: test_tracking.py)."""
    return (DIRECTION,) if (key.model_name, embedding_id) == ("cxr-lesion", EMBEDDING_ID) else ()


def events() -> list[InferenceEvent]:
    v1 = feature_stream(FeatureStreamConfig(site_id="site-01", n_events=N_PER_SITE, seed=1))
    v2 = with_embeddings(
        feature_stream(FeatureStreamConfig(site_id="site-02", n_events=N_PER_SITE, seed=2)),
        2,
        change_at=500,
        shift=0.6 * LATERAL,
    )
    return sorted([*v1, *v2], key=lambda e: (e.occurred_at, e.site_id))


@pytest.fixture
def client(pg_engine: Engine, kafka_settings: KafkaSettings) -> Iterator[TestClient]:
    stream = events()
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, stream)
    producer.close()
    monitor = DriftMonitor(CONFIG, known_directions)
    ingest_until(
        pg_engine, kafka_settings, lambda s: s.stored >= len(stream), drift=monitor, timeout=180
    )
    app = create_app(SETTINGS, engine=pg_engine)
    with TestClient(app, headers=bearer(SETTINGS, "mlops-ann", Role.MLOPS)) as test_client:
        yield test_client


def test_a_content_shift_alerts_and_the_api_explains_it_by_a_known_direction(
    client: TestClient,
) -> None:
    alerts = client.get("/sites/site-02/alerts").json()
    embedding = [a for a in alerts["items"] if a["detector"] == "embedding_mmd"]
    assert len(embedding) == 1, alerts
    alert = embedding[0]
    assert alert["features"][0] == "direction:lateral_views"
    assert "image content in the model's embedding (MMD) changed" in alert["explanation"]
    assert "window mean moved towards lateral views" in alert["explanation"]
    assert alert["window_start"] >= "2026-01-04"  # after the change (event 500, 10 min apart)
    assert client.get("/sites/site-01/alerts").json()["items"] == []

    drift = client.get("/sites/site-02/drift").json()
    latest = {check["detector"]: check for check in drift["latest_checks"]}
    assert latest["embedding_mmd"]["is_drift"] is True
    assert latest["embedding_mmd"]["threshold"] == pytest.approx(0.05 / 6)

    response = client.get("/sites/site-02/drift-report", params={"model_name": "cxr-lesion"})
    assert response.status_code == 200, response.text
    page = response.text
    assert "image content in the model&#39;s embedding (MMD)" in page
    assert "window mean moved towards lateral views" in page
    assert "emb_01" in page and "Component 2 of the model&#39;s embedding" in page


def test_a_v1_site_runs_without_the_detector_and_says_why(client: TestClient) -> None:
    drift = client.get("/sites/site-01/drift").json()
    assert {check["detector"] for check in drift["latest_checks"]} == {
        "mmd",
        "ks",
        "chi2",
        "score_ks",
        "missingness",
    }
    assert all(check["threshold"] == pytest.approx(0.05 / 5) for check in drift["latest_checks"])
    assert drift["streams"][0]["reference"]["not_run"] == {"embedding_mmd": NO_EMBEDDINGS}
