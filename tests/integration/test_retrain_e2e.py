"""Issues 6 and 7 end to end, on real parts: a scanner change at one site, its drift alert, a
retrain request, the job training on the labelled synthetic images, a ``challenger`` version in
a real MLflow registry (``mlflow server`` on PostgreSQL) that beats the champion at that site;
then the PCCP gate on the locked test set with its evidence in MLflow, two distinct approvers
through the API, promotion, and a rollback, all in the verified change log.

The champion is a real model (``radsentry train-initial``'s path), the simulated events carry
its scores, and they travel through the bundled Kafka-protocol broker into a real consumer with
the drift engine, exactly as in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.events import InferenceEvent
from monitor.service.api import create_app
from monitor.service.audit.store import verify
from monitor.service.auth import Role
from monitor.service.demo.simulation import champion_scorer
from monitor.service.drift.alerts import list_alerts
from monitor.service.drift.store import DriftMonitor
from monitor.service.kafka import make_producer
from monitor.service.pccp.jobs import gate_context
from monitor.service.registry import registry_for
from monitor.service.retrain.initial import ChampionExists, register_initial
from monitor.service.retrain.jobs import JobContext, serve_pending
from monitor.service.retrain.store import consider_alerts, list_requests
from monitor.service.settings import KafkaSettings, PccpSettings, Settings
from monitor.simulate import SimulationConfig, simulate
from pccp.catalog import SHIPPED_PLANS
from retrain.config import JobConfig, MlflowConfig, TrainConfig
from retrain.dataset import LockedTestSet
from retrain.initial import InitialConfig, render_cohort
from retrain.policy import RetrainPolicy
from tests.auth_helpers import TEST_AUTH, bearer
from tests.integration.helpers import ingest_until, send

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),
]

MODEL = "cxr-lesion-e2e"
RENDER = 256
"""The simulator's default size (the model sees 64 px, area-averaged)."""
INITIAL = InitialConfig(
    seed=4,
    sites=3,
    studies_per_site=300,
    test_studies_per_site=60,
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
JOB = JobConfig(train=TrainConfig(max_epochs=20, patience=8, device="cpu"), validation_share=0.3)


@pytest.fixture(scope="module")
def settings(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    plans = tmp_path_factory.mktemp("plans")
    write_test_plan(plans, tmp_path_factory.mktemp("cohort"))
    return Settings(
        data_dir=tmp_path_factory.mktemp("radsentry"),
        mlflow=MlflowConfig(tracking_uri=mlflow_server, experiment="e2e"),
        pccp=PccpSettings(plans_dir=plans),
        auth=TEST_AUTH,
    )


def write_test_plan(folder: Path, scratch: Path, initial: InitialConfig = INITIAL) -> None:
    """The shipped plan, made to govern ``initial``'s model: its locked test set is the
    held-out part of the initial cohort (rendered here once to learn its keys; ``train-initial``
    renders the same studies again and writes their cases for the gate), and its bounds fit a
    small test cohort (E2E's: 180 studies)."""
    document = yaml.safe_load((SHIPPED_PLANS / "cxr-lesion.yaml").read_text())
    keys = [case.study_key for case in render_cohort(initial, scratch, "test")]
    locked = LockedTestSet.from_keys(keys)
    locked.write(folder / "locked.json")
    document["description"]["model_name"] = initial.model_name
    document["protocol"]["data_management"]["locked_test_set"] = {
        "manifest": "locked.json",
        "sha256": locked.sha256,
    }
    loose: dict[str, dict[str, float | list[str]]] = {
        "PE-1": {"min": 0.6},
        "PE-2": {"min": 0.5},
        "PE-3": {"min": 0.3},
        "PE-4": {"margin": 0.1},
        "PE-5": {"min": 0.6, "min_cases": 30},
        "PE-6": {"min": 0.6, "min_cases": 30},
        "PE-7": {"max": 0.2},
        "PE-8": {"tolerance": 0.1},
        "PE-9": {"margin": 0.2},
        # Specificity loose enough for this cohort's candidate, which (like the demo's) buys
        # site-02's sensitivity back with false positives on the old scanner's test studies:
        # this test is about governance, test_embedded_defaults about the shipped plan failing it.
        "PE-10": {"margin": 0.45},
        "PE-11": {"tolerance": 0.25},
        "PE-12": {"tolerance": 0.5},
        # Per-site sensitivity on about a dozen positives: the candidate's site-03 estimate moves
        # with the CPU's arithmetic (0.5, lower bound 0.28, on one machine), so a loose floor.
        "PE-13": {"min": 0.2, "min_cases": 10},
        "PE-14": {"min": 0.05, "min_cases": 10},
        "PE-15": {"min": 0.9},
        # The locked test set (catalogue rooms) holds no AP study and the changed site's
        # portable reader sends only AP views: the shipped PE-16 rightly refuses the candidate
        # (tests/integration/test_gate_job.py). Here only age bands are compared, and this
        # cohort's smaller locked set holds about 18 cases per band.
        "PE-16": {"fields": ["PatientAgeBand"], "min_cases": 5},
    }
    for criterion in document["protocol"]["performance_evaluation"]:
        criterion.update(loose[criterion["id"]])
    (folder / "e2e.yaml").write_text(yaml.safe_dump(document))


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
        engine=deployed,
        registry=registry,
        config=JOB,
        work_dir=settings.data_dir / "retrain",
        gate=gate_context(deployed, settings, registry),
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

    headers = bearer(settings, "auditor-amy", Role.AUDITOR)
    with TestClient(create_app(settings, engine=deployed), headers=headers) as client:
        shown = client.get(f"/retrain-requests/{request.request_id}").json()
    assert shown["status"] == "succeeded" and shown["model_version"] == challenger.version
    assert shown["progress"]["stage"] == "done" and shown["manifest_sha256"]

    with pytest.raises(ChampionExists):
        register_initial(settings, INITIAL, progress=False)

    governed(deployed, settings, challenger.version, champion_version, request.requested_by)


def governed(
    engine: Engine, settings: Settings, version: str, champion_version: str, trigger: str
) -> None:
    """PCCP governance: the gate ran after training; two approvers, promotion, rollback."""
    registry = registry_for(settings)
    alice, bob = bearer(settings, "alice", Role.MLOPS), bearer(settings, "bob", Role.MLOPS)
    with TestClient(create_app(settings, engine=engine)) as client:
        [listed] = client.get("/candidates", headers=alice).json()["items"]
        assert listed["model_version"] == version and listed["triggered_by"] == trigger
        url = f"/candidates/{listed['candidate_id']}"
        detail = client.get(url, headers=alice).json()
        assert detail["status"] == "passed", [c for c in detail["criteria"] if not c["passed"]]
        assert [c["id"] for c in detail["criteria"]] == [f"PE-{n}" for n in range(1, 17)]
        assert detail["champion_version"] == champion_version
        page = client.get(detail["evidence_html"], headers=alice)
        assert page.status_code == 200 and "PE-4" in page.text and "<svg" in page.text
        assert registry.version(MODEL, version).tags["radsentry.gate_outcome"] == "passed"
        assert detail["evidence_uri"].endswith("/evidence")

        # A site manager of another site does not see it; one of site-02 does, and reads only.
        other = bearer(settings, "sm1", Role.SITE_MANAGER, sites=["site-01"])
        assert client.get(url, headers=other).status_code == 404
        own = bearer(settings, "sm2", Role.SITE_MANAGER, sites=["site-02"])
        assert client.get(url, headers=own).status_code == 200
        assert client.post(f"{url}/approve", json={"reason": "x"}, headers=own).status_code == 403

        early = client.post(f"{url}/promote", json={"reason": "early"}, headers=alice)
        assert early.status_code == 409
        first = client.post(f"{url}/approve", json={"reason": "evidence reviewed"}, headers=alice)
        assert first.status_code == 200 and first.json()["status"] == "passed"
        again = client.post(f"{url}/approve", json={"reason": "twice"}, headers=alice)
        assert again.status_code == 403
        second = client.post(f"{url}/approve", json={"reason": "agree"}, headers=bob)
        assert second.json()["status"] == "approved" and second.json()["approvals"] == 2

        promoted = client.post(f"{url}/promote", json={"reason": "site-02 recovers"}, headers=bob)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["previous_champion"] == champion_version
        current = registry.version_by_alias(MODEL, "champion")
        assert current is not None and current.version == version

        drill = {"expected_version": version, "reason": "drill"}
        rolled = client.post(f"/models/{MODEL}/rollback", json=drill, headers=alice)
        assert rolled.status_code == 200 and rolled.json()["status"] == "rolled_back"
        restored = registry.version_by_alias(MODEL, "champion")
        assert restored is not None and restored.version == champion_version

        auditor = bearer(settings, "audrey", Role.AUDITOR)
        audit = client.get("/audit", params={"limit": 1000}, headers=auditor).json()
        assert client.get("/audit", headers=own).status_code == 403
        assert client.get("/audit/verify", headers=auditor).json()["ok"] is True
    trail = [entry["action"] for entry in reversed(audit["items"])]
    expected = [
        "champion.initial",
        "retrain.requested",
        "candidate.proposed",
        "training.run",
        "plan.loaded",
        "gate.result",
        "approval",
        "approval",
        "promotion",
        "rollback",
    ]
    assert [action for action in trail if action in expected] == expected[1:], trail
    by_action = {entry["action"]: entry for entry in audit["items"]}
    assert by_action["promotion"]["details"]["approvers"] == ["alice", "bob"]
    assert by_action["gate.result"]["plan_version"] == "1.4.0"
    assert by_action["rollback"]["details"]["restored_champion"] == champion_version
    assert verify(engine).ok
