"""Faults during a retrain, each compared with an undisturbed run of the same deployment.

The deployment: a real champion in a real ``mlflow server`` (PostgreSQL store), governed by a
PCCP plan whose locked test set is the initial cohort's held-out part; three sites' studies
with images and labels, site-02 after a scanner change, stored with the drift engine, so that
a drift alert stands. Each run copies that database and starts a real ``radsentry scheduler``
on it: its ``retrain-triggers`` job turns the alert into a request, ``retrain-requests`` trains
a challenger and registers it, and the gate runs. The faults:

- MLflow stopped while the job trains, so that the attempt fails at registration, and started
  again: a later attempt finishes the same request;
- the scheduler killed (kill -9) mid-training, then started again: once the dead job's lease
  has run out, the new leader takes the request over and resumes from the last checkpoint.

After each, the tally (events, alerts, candidates, audit entries per action, the chain) equals
the undisturbed run's, and MLflow holds exactly one version for the request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from monitor.events import Event
from monitor.service.broker import free_port
from monitor.service.db import make_engine
from monitor.service.demo.simulation import champion_scorer
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import RetrainRequestRow
from monitor.service.retrain.initial import register_initial
from monitor.service.retrain.store import list_requests
from monitor.service.settings import DatabaseSettings, PccpSettings, Settings
from monitor.simulate import SimulationConfig, simulate
from retrain.config import MlflowConfig, TrainConfig
from retrain.initial import InitialConfig
from tests.faults.harness import Process, Tally, probe, radsentry_env, tally
from tests.integration.helpers import wait_for
from tests.integration.test_retrain_e2e import DRIFT, write_test_plan
from tests.mlflow_server import MLFLOW_DATABASE, MlflowServer
from tests.servers import fresh_database, migrated_database, pg_admin_url

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),
]

MODEL = "cxr-lesion-faults"
INITIAL = InitialConfig(
    seed=4,
    sites=3,
    studies_per_site=120,
    test_studies_per_site=40,
    model_name=MODEL,
    train=TrainConfig(max_epochs=10, patience=4, learning_rate=3e-3),
)
SIMULATION = SimulationConfig(
    seed=21,
    start=datetime(2026, 5, 1, tzinfo=UTC),
    sites=3,
    studies_per_site=150,
    label_rate=0.9,
    label_delay=timedelta(hours=6),
    model_name=MODEL,
    change_site="site-02",
    change_at_index=50,
)
EPOCHS = 6
"""Every epoch runs (patience as long), so the kill lands with epochs still to go (it comes
after epoch 2). Six, not 12: the module retrains three times and resumes once, and at 12 it was
the suite's second-longest module (docs/benchmarks.md)."""
SCHEDULER = {
    "RETRAIN__SCAN_S": "1",
    "RETRAIN__JOBS_S": "5",
    "RETRAIN__LEASE_S": "5",
    "RETRAIN__POLICY__MIN_NEW_LABELS": "200",
    "RETRAIN__POLICY__MIN_NEW_LABELS_SITE": "80",
    "RETRAIN__JOB__TRAIN__MAX_EPOCHS": str(EPOCHS),
    "RETRAIN__JOB__TRAIN__PATIENCE": str(EPOCHS),
    "RETRAIN__JOB__TRAIN__DEVICE": "cpu",
    "RETRAIN__JOB__VALIDATION_SHARE": "0.3",
    # Attempts while MLflow is down fail fast (one every RETRAIN__JOBS_S), and enough of them
    # remain for when it is back, however long its restart takes on a loaded box.
    "RETRAIN__JOB__MAX_ATTEMPTS": "30",
    "MLFLOW__RETRY_ATTEMPTS": "2",
    "MLFLOW__RETRY_INITIAL_S": "0.5",
    "MLFLOW__REQUEST_TIMEOUT_S": "5",
    "MLFLOW__EXPERIMENT": "faults",
    "PCCP__GATE_S": "2",
}


@dataclass
class Deployment:
    """What every run starts from: the template database, the plans, the MLflow server."""

    template: str
    mlflow: MlflowServer
    plans_dir: Path
    locked_cases_dir: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("retrain-faults")
    plans = workdir / "plans"
    plans.mkdir()
    write_test_plan(plans, workdir / "scratch", INITIAL)
    with (
        fresh_database(pg_admin_url(), MLFLOW_DATABASE) as store,
        migrated_database(pg_admin_url(), "radsentry_faults") as template,
    ):
        mlflow = MlflowServer(store, workdir)
        mlflow.start()
        try:
            settings = Settings(
                data_dir=workdir / "setup",
                database=DatabaseSettings(url=template),
                mlflow=MlflowConfig(tracking_uri=mlflow.url, experiment="faults"),
                pccp=PccpSettings(plans_dir=plans),
            )
            register_initial(settings, INITIAL, progress=False)
            scorer = champion_scorer(settings, MODEL, "champion")
            events = list(simulate(SIMULATION, workdir / "studies", scorer))
            engine = make_engine(template)
            store_with_drift(engine, events)
            engine.dispose()
            yield Deployment(template, mlflow, plans, settings.locked_cases_dir)
        finally:
            mlflow.stop()


def store_with_drift(engine: Engine, events: Sequence[Event]) -> None:
    """Store the events with the drift engine, as the consumer would (in batches of 100)."""
    monitor = DriftMonitor(DRIFT)
    for first in range(0, len(events), 100):
        chunk = events[first : first + 100]
        delivered = [Delivered(e, "setup", 0, first + i) for i, e in enumerate(chunk)]
        store_batch(engine, delivered, [], monitor.process)


class Run:
    """One run: a copy of the template database and a ``radsentry scheduler`` on it."""

    def __init__(self, deployment: Deployment, database_url: str, workdir: Path) -> None:
        self.engine = make_engine(database_url)
        env = radsentry_env(
            database_url,
            workdir,
            **SCHEDULER,
            MLFLOW__TRACKING_URI=deployment.mlflow.url,
            PCCP__PLANS_DIR=str(deployment.plans_dir),
            PCCP__LOCKED_CASES_DIR=str(deployment.locked_cases_dir),
        )
        self.port = free_port()
        self.scheduler = Process(
            ["scheduler", "--metrics-port", str(self.port)], env, workdir / "sched.log"
        )
        self.mlflow = MlflowClient(deployment.mlflow.url)

    def request(self) -> RetrainRequestRow | None:
        requests = list_requests(self.engine, model_name=MODEL).items
        assert len(requests) <= 1, "one alert, one request"
        return requests[0] if requests else None

    def training(self, from_epoch: int = 0) -> bool:
        """The request's job is training and has finished ``from_epoch`` epochs."""
        self.check_alive()
        request = self.request()
        progress = (request.progress or {}) if request is not None else {}
        return (
            request is not None
            and request.status == "running"
            and progress.get("stage") == "training"
            and int(progress.get("epoch", 0)) >= from_epoch
        )

    def check_alive(self) -> None:
        assert self.scheduler.alive(), self.scheduler.text()[-4000:]

    def gated(self) -> bool:
        """The request succeeded and the gate has judged its candidate."""
        self.check_alive()
        request = self.request()
        if request is None or request.status != "succeeded":
            return False
        with self.engine.connect() as connection:
            states = list(connection.scalars(text("SELECT status FROM candidates")))
        return len(states) == 1 and states[0] != "candidate"

    def finish(self, timeout_s: float = 300) -> tuple[Tally, RetrainRequestRow]:
        """Wait for the request to end in a gated candidate; stop the scheduler (SIGTERM,
        exit 0); check MLflow holds one version for the request; the tally."""
        wait_for(self.gated, timeout_s, "a challenger registered and gated")
        assert probe(self.port, "/healthz") == 200
        ready = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
        assert (ready.status_code, ready.json()["state"]) == (200, "leading")
        assert self.scheduler.stop() == 0, self.scheduler.text()[-4000:]
        request = self.request()
        assert request is not None
        versions = self.mlflow.search_model_versions(
            f"name = '{MODEL}' and tags.`radsentry.request_id` = '{request.request_id}'"
        )
        assert [v.version for v in versions] == [request.model_version]
        return tally(self.engine), request

    def resumed_from(self, request: RetrainRequestRow) -> int | None:
        assert request.mlflow_run_id is not None
        params = self.mlflow.get_run(request.mlflow_run_id).data.params
        value: int | None = json.loads(params["result.resumed_from_epoch"])
        return value

    def close(self) -> None:
        if self.scheduler.alive():
            self.scheduler.kill()
        self.engine.dispose()


@contextmanager
def copied_run(deployment: Deployment, workdir: Path) -> Iterator[Run]:
    template = make_url(deployment.template).database
    with fresh_database(pg_admin_url(), "radsentry_faults", template=template) as url:
        run = Run(deployment, url, workdir)
        try:
            yield run
        finally:
            run.close()


@pytest.fixture(scope="module")
def undisturbed(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Tally, RetrainRequestRow]:
    with copied_run(deployment, tmp_path_factory.mktemp("undisturbed")) as run:
        run.scheduler.start()
        result, request = run.finish()
        assert run.resumed_from(request) is None
    # The deployment does what it is for: the alert became one request, trained, gated.
    assert request.trigger == "alert" and request.site_id == "site-02"
    assert request.attempts == 1
    assert result.candidates == 1 and result.chain_verified
    actions = dict(result.audit)
    for action in ("retrain.requested", "training.run", "candidate.proposed", "gate.result"):
        assert actions.get(action) == 1, result.audit
    assert "retrain.failed" not in actions
    return result, request


def test_mlflow_down_during_a_retrain(
    undisturbed: tuple[Tally, RetrainRequestRow], deployment: Deployment, tmp_path: Path
) -> None:
    expected, _ = undisturbed
    with copied_run(deployment, tmp_path) as run:
        run.scheduler.start()
        try:
            wait_for(run.training, 300, "the job training")
            deployment.mlflow.stop()

            def failed_attempt() -> bool:
                run.check_alive()
                request = run.request()
                return request is not None and request.status == "pending" and bool(request.error)

            # The attempt fails when its training ends and MLflow is called: a dozen epochs,
            # which take minutes on a loaded 2-core box.
            wait_for(failed_attempt, 600, "the attempt failing while MLflow is down")
        finally:
            deployment.mlflow.start()
        result, request = run.finish()
    assert result == expected
    assert request.attempts >= 2 and request.error is None
    assert "retrain attempt failed; the request will be retried" in run.scheduler.text()


def test_scheduler_killed_during_a_retrain(
    undisturbed: tuple[Tally, RetrainRequestRow], deployment: Deployment, tmp_path: Path
) -> None:
    expected, _ = undisturbed
    with copied_run(deployment, tmp_path) as run:
        run.scheduler.start()
        wait_for(lambda: run.training(from_epoch=2), 300, "the job two epochs into training")
        run.scheduler.kill()
        killed = run.request()
        assert killed is not None and killed.status == "running" and killed.attempts == 1

        run.scheduler.start()  # the new leader waits for the dead job's lease to run out
        result, request = run.finish()
    assert result == expected
    assert request.attempts == 2
    resumed = run.resumed_from(request)
    assert resumed is not None and 2 <= resumed < EPOCHS
