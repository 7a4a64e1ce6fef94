"""Issue 6 end to end, on real parts: a scanner change at one site, its drift alert, a retrain
request, the job training on the labelled synthetic images, and a ``challenger`` version in a
real MLflow registry (``mlflow server`` on PostgreSQL) that beats the champion at that site.

The champion is a real model (``radsentry train-initial``'s path), the simulated events carry
its scores, and they travel through the bundled Kafka-protocol broker into a real consumer with
the drift engine, exactly as in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.events import InferenceEvent
from monitor.service.alerts_store import list_alerts
from monitor.service.api import create_app
from monitor.service.drift_store import DriftMonitor
from monitor.service.kafka import make_producer
from monitor.service.registry import (
    ChampionExists,
    champion_scorer,
    register_initial,
    registry_for,
)
from monitor.service.retrain_job import JobContext, serve_pending
from monitor.service.retrain_store import consider_alerts, list_requests
from monitor.service.settings import KafkaSettings, Settings
from monitor.simulate import SimulationConfig, simulate
from retrain.config import JobConfig, MlflowConfig, TrainConfig
from retrain.initial import InitialConfig
from retrain.policy import RetrainPolicy
from tests.integration.helpers import ingest_until, send

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

MODEL = "cxr-lesion-e2e"
RENDER = 256
"""The simulator's default size (the model sees 64 px, area-averaged)."""
INITIAL = InitialConfig(
    seed=4,
    sites=3,
    studies_per_site=300,
    test_studies_per_site=0,
    render_size=RENDER,
    model_name=MODEL,
    train=TrainConfig(max_epochs=20, patience=6, learning_rate=3e-3),
)
STUDIES, CHANGE_AT = 360, 60
DRIFT = EngineConfig(
    reference_size=50,
    window=WindowConfig(size=50, min_size=25),
    detectors=DetectorSet(online=None),
)
POLICY = RetrainPolicy(min_new_labels=300, min_new_labels_site=150, cooldown_hours=24)
JOB = JobConfig(train=TrainConfig(max_epochs=10, patience=3, device="cpu"), validation_share=0.3)


@pytest.fixture(scope="module")
def settings(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("radsentry"),
        mlflow=MlflowConfig(tracking_uri=mlflow_server, experiment="e2e"),
    )


@pytest.fixture(scope="module")
def champion_version(settings: Settings) -> Iterator[str]:
    registered = register_initial(settings, INITIAL, progress=False)
    yield registered.version.version


@pytest.fixture
def deployed(
    settings: Settings,
    champion_version: str,
    pg_engine: Engine,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
) -> Engine:
    """Three sites scored by the champion; site-02 gets the degraded reader at study 60."""
    scorer = champion_scorer(settings, MODEL, "champion")
    assert scorer is not None and scorer.version == champion_version
    config = SimulationConfig(
        seed=21,
        start=datetime(2026, 5, 1, tzinfo=UTC),
        sites=3,
        studies_per_site=STUDIES,
        image_size=RENDER,
        label_rate=0.9,
        label_delay=timedelta(hours=6),
        model_name=MODEL,
        change_site="site-02",
        change_at_index=CHANGE_AT,
    )
    events = list(simulate(config, tmp_path / "studies", scorer))
    inference = [e for e in events if isinstance(e, InferenceEvent)]
    assert {e.model_version for e in inference} == {champion_version}
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    try:
        send(producer, kafka_settings, events)  # type: ignore[arg-type]
    finally:
        producer.close()
    ingest_until(
        pg_engine,
        kafka_settings,
        lambda stats: stats.stored >= len(events),
        timeout=180,
        drift=DriftMonitor(DRIFT),
    )
    return pg_engine


def test_a_scanner_change_ends_in_a_better_challenger_and_the_champion_stays(
    deployed: Engine, settings: Settings, champion_version: str
) -> None:
    drift_alerts = [a for a in list_alerts(deployed, limit=100).items if a.drift_active]
    assert drift_alerts and {a.site_id for a in drift_alerts} == {"site-02"}

    created = consider_alerts(deployed, POLICY)
    assert len(created) == 1  # one request per model, however many detectors alerted
    assert consider_alerts(deployed, POLICY) == []
    [request] = list_requests(deployed, model_name=MODEL).items
    assert request.site_id == "site-02" and request.trigger == "alert"

    registry = registry_for(settings)
    context = JobContext(
        engine=deployed, registry=registry, config=JOB, work_dir=settings.data_dir / "retrain"
    )
    [served] = serve_pending(context)

    assert served.status == "succeeded", served.error
    challenger = registry.version_by_alias(MODEL, "challenger")
    assert challenger is not None and challenger.version == served.model_version
    assert challenger.run_id == served.mlflow_run_id
    assert challenger.tags["radsentry.request_id"] == str(request.request_id)
    assert challenger.tags["radsentry.alert_id"] == str(request.alert_id)
    champion = registry.version_by_alias(MODEL, "champion")
    assert champion is not None and champion.version == champion_version  # never moved here

    assert served.progress is not None
    changed = served.progress["comparison"]["sites"]["site-02"]
    assert changed["n"] >= 60 and changed["positives"] >= 10
    assert changed["candidate_auroc"] >= changed["champion_auroc"] + 0.05, changed
    for site in ("site-01", "site-03"):  # no price paid at the unchanged sites
        other = served.progress["comparison"]["sites"][site]
        assert other["candidate_auroc"] >= other["champion_auroc"] - 0.05, other

    with TestClient(create_app(settings, engine=deployed)) as client:
        shown = client.get(f"/retrain-requests/{request.request_id}").json()
    assert shown["status"] == "succeeded" and shown["model_version"] == challenger.version
    assert shown["progress"]["stage"] == "done" and shown["manifest_sha256"]

    with pytest.raises(ChampionExists):
        register_initial(settings, INITIAL, progress=False)
