"""The health score from stored checks and labels: ``GET /sites/{site_id}/health`` and the
gauges, against a real PostgreSQL database, on the simulator's scanner change."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from monitor.drift.calibration import LearnedThresholdConfig
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.events import InferenceEvent
from monitor.performance.health import HealthConfig
from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.performance.health import site_health
from monitor.service.performance.jobs import refresh_health
from monitor.service.settings import PerformanceSettings, Settings
from monitor.simulate import SimulationConfig, simulate
from tests.auth_helpers import TEST_AUTH, bearer
from tests.embedding_events import DIMENSIONS, with_embeddings

pytestmark = pytest.mark.integration

SITE, MODEL = "site-01", "cxr-lesion"
DRIFT = EngineConfig(
    reference_size=200,
    window=WindowConfig(size=50, min_size=25),
    detectors=DetectorSet(online=None),
    learned=LearnedThresholdConfig(chunk_size=25, min_chunks=8),
)


def _settings(min_labelled_windows: int) -> Settings:
    health = HealthConfig(min_labelled_windows=min_labelled_windows, n_bootstrap=50)
    return Settings(drift=DRIFT, auth=TEST_AUTH, performance=PerformanceSettings(health=health))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> list[object]:
    """One site, 600 studies; the degraded scanner from study 300 (AUROC 0.90 -> 0.70)."""
    config = SimulationConfig(
        seed=5,
        start=datetime(2026, 3, 1, tzinfo=UTC),
        sites=1,
        studies_per_site=600,
        image_size=64,
        change_site=SITE,
        change_at_index=300,
    )
    return list(simulate(config, Path(tmp_path_factory.mktemp("studies"))))


def _ingest(engine: Engine, events: list[object]) -> Engine:
    monitor = DriftMonitor(DRIFT)
    for start in range(0, len(events), 200):
        chunk = events[start : start + 200]
        delivered = [Delivered(e, "t", 0, start + i) for i, e in enumerate(chunk)]  # type: ignore[arg-type]
        store_batch(engine, delivered, [], monitor.process)
    return engine


@pytest.fixture
def ingested(pg_engine: Engine, simulated: list[object]) -> Engine:
    return _ingest(pg_engine, simulated)


def _client(engine: Engine, settings: Settings, role: Role = Role.MLOPS) -> TestClient:
    app = create_app(settings, engine=engine)
    return TestClient(app, headers=bearer(settings, "ann", role))


@pytest.fixture
def client(ingested: Engine) -> Iterator[TestClient]:
    with _client(ingested, _settings(5)) as test_client:
        yield test_client


def test_health_of_the_changed_site_has_a_band_components_and_learned_weights(
    client: TestClient, ingested: Engine
) -> None:
    body = client.get(f"/sites/{SITE}/health").json()
    assert body["site_id"] == SITE
    [stream] = body["streams"]
    assert stream["model_name"] == MODEL and stream["finding"] == "lesion"
    assert stream["lower"] <= stream["health"] <= stream["upper"]
    assert stream["health"] < 90.0  # the latest window is on the degraded scanner
    weights = stream["weights"]
    assert weights["source"] == "learned" and weights["labelled_windows"] >= 5
    assert datetime.fromisoformat(weights["learned_through"]) <= datetime.fromisoformat(
        stream["window_end"]
    )
    scored = [c for c in stream["components"] if c["z"] is not None]
    assert {c["detector"] for c in scored} >= {"mmd", "chi2", "score_ks"}
    assert all(c["note"] and c["weight"] == 0 for c in stream["components"] if c["z"] is None)
    assert sum(c["weight"] for c in scored) == pytest.approx(1.0)
    assert stream["expected_auroc_drop"] is not None

    refresh_health(ingested, _settings(5).performance)
    labels = {"site_id": SITE, "model_name": MODEL, "model_version": stream["model_version"]}
    assert REGISTRY.get_sample_value("radsentry_health_score", labels) == pytest.approx(
        stream["health"]
    )
    assert REGISTRY.get_sample_value("radsentry_health_score_lower", labels) == pytest.approx(
        stream["lower"]
    )
    assert REGISTRY.get_sample_value("radsentry_health_weights_learned", labels) == 1.0


def test_default_weights_without_enough_labelled_windows_and_404_elsewhere(
    ingested: Engine,
) -> None:
    with _client(ingested, _settings(500)) as client:
        [stream] = client.get(f"/sites/{SITE}/health").json()["streams"]
        assert stream["weights"]["source"] == "default"
        assert "fewer than the 500" in stream["weights"]["reason"]
        assert stream["weights"]["learned_through"] is None
        weights = {c["weight"] for c in stream["components"] if c["z"] is not None}
        assert len(weights) == 1  # equal
        assert client.get("/sites/site-09/health").status_code == 404


def test_a_detector_the_health_code_never_names_takes_part(
    pg_engine: Engine, simulated: list[object]
) -> None:
    """The same studies as inference-event/v2 with embeddings that move at the change: the
    embedding detector's learned moments put it in the score like any other."""
    inference = [e for e in simulated if isinstance(e, InferenceEvent)]
    moved = iter(with_embeddings(inference, 3, change_at=300, shift=[0.8] * DIMENSIONS))
    _ingest(pg_engine, [next(moved) if isinstance(e, InferenceEvent) else e for e in simulated])
    [stream] = site_health(pg_engine, SITE, HealthConfig(n_bootstrap=20))
    [embedding] = [c for c in stream.score.components if c.detector == "embedding_mmd"]
    assert embedding.z is not None and embedding.z > 3.0 and embedding.weight > 0.0
