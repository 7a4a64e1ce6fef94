"""`make run` twice on one clone (issue 22): resume, start over with --fresh, and a stage that
fails says why (the policy's own reasons) and what to do. The stage-level parts against real
PostgreSQL; the whole demo, twice, in real processes in test_embedded_defaults.py."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import Engine, func, select
from structlog.testing import capture_logs

from monitor.drift.alerts import Alert, StreamKey
from monitor.service.audit import store as change_log
from monitor.service.audit.config import record_config
from monitor.service.demo import state as demo_state
from monitor.service.demo.loop import DemoLoop, StageFailed, StageStopped
from monitor.service.demo.stages import Stage
from monitor.service.drift.alerts import write_alerts
from monitor.service.ingest.consumer import ConsumerThread
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import InferenceEventRow
from monitor.service.retrain import store as retrain_store
from monitor.service.settings import DatabaseSettings, RetrainSettings, Settings
from monitor.simulate import SimulationConfig
from retrain.initial import InitialConfig
from retrain.policy import RetrainPolicy
from tests.factories import inference_event, label_event
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SIMULATION = SimulationConfig(
    seed=7, start=T0, sites=3, studies_per_site=30, change_site="site-02", change_at_index=10
)


@pytest.fixture
def engine(pg_engine: Engine) -> Engine:
    """The demo's database (PostgreSQL: the embedded server's engine in the demo itself)."""
    return pg_engine


def _store_events(engine: Engine, count: int) -> None:
    events = [inference_event(i, site_id="site-02") for i in range(count)]
    events += [label_event(i, site_id="site-02") for i in range(count)]
    store_batch(engine, [Delivered(e, "t", 0, n) for n, e in enumerate(events)], [])


def _stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(InferenceEventRow)) or 0


def test_a_rerun_resumes_the_same_stream_and_fresh_starts_over(
    engine: Engine, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first, record = demo_state.begin(settings, engine, SIMULATION, fresh=False)
    assert first == SIMULATION and record.reached == []
    _store_events(engine, 5)
    record.reached.append(Stage.STREAM)
    record.summaries[Stage.STREAM] = "stream done"
    demo_state.save(settings, record)

    # A rerun an hour later: its stream would start elsewhere, but the stored one is resumed.
    later = SIMULATION.model_copy(update={"start": T0 + timedelta(hours=1)})
    resumed, again = demo_state.begin(settings, engine, later, fresh=False)
    assert resumed.start == T0 and resumed == SIMULATION
    assert again.reached == [Stage.STREAM] and _stored(engine) == 5

    other = SIMULATION.model_copy(update={"seed": 8})
    with pytest.raises(demo_state.CannotResume, match=r"seed 7 then, 8 now.*--fresh"):
        demo_state.begin(settings, engine, other, fresh=False)

    # --fresh: the tables emptied through the migrations (whatever the engine), the demo's
    # files gone, the secrets kept.
    (settings.data_dir / "simulated" / "seed-7").mkdir(parents=True)
    (settings.data_dir / "mlflow.db").write_bytes(b"store")
    (settings.data_dir / "auth-local.key").write_bytes(b"secret")
    started, fresh = demo_state.begin(settings, engine, other, fresh=True)
    assert started == other and fresh.reached == []
    assert _stored(engine) == 0
    assert not (settings.data_dir / "simulated").exists()
    assert not (settings.data_dir / "mlflow.db").exists()
    assert (settings.data_dir / "auth-local.key").read_bytes() == b"secret"
    assert demo_state.load(settings) == fresh


def test_data_no_demo_recorded_is_not_resumed_without_fresh(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    demo_state.upgrade(engine)
    _store_events(engine, 3)
    with pytest.raises(demo_state.CannotResume, match=r"no demo run recorded.*ARGS=--fresh"):
        demo_state.begin(settings, engine, SIMULATION, fresh=False)


def test_fresh_refuses_to_wipe_a_configured_database_that_is_not_a_demos(
    pg_url: str, pg_engine: Engine, tmp_path: Path
) -> None:
    """`--fresh` deletes every table: a stray RADSENTRY_DATABASE__URL naming a production
    database must not take it down (issue 22)."""
    configured = Settings(data_dir=tmp_path / "data", database=DatabaseSettings(url=pg_url))
    # A database the services have run on: its change log begins with their first start.
    record_config(pg_engine, configured, actor="radsentry-serve")
    _store_events(pg_engine, 3)
    with pytest.raises(
        demo_state.NotTheDemosDatabase,
        match=r"began with radsentry-serve.*"
        r"Nothing was deleted.*Unset RADSENTRY_DATABASE__URL",
    ):
        demo_state.begin(configured, pg_engine, SIMULATION, fresh=True)
    assert _stored(pg_engine) == 3 and len(list(change_log.entries(pg_engine))) == 1

    # The same database once the demo started it (its first entry the demo's): wiped.
    demo_state.wipe(configured, pg_engine)
    demo_state.upgrade(pg_engine)
    record_config(pg_engine, configured, actor=demo_state.DEMO_ACTOR)
    _store_events(pg_engine, 3)
    _, record = demo_state.begin(configured, pg_engine, SIMULATION, fresh=True)
    assert record.reached == [] and _stored(pg_engine) == 0
    # An empty configured database, and the embedded server's (never another's), start over.
    assert demo_state.begin(configured, pg_engine, SIMULATION, fresh=True)[1].reached == []
    record_config(pg_engine, configured, actor="radsentry-serve")
    embedded = Settings(data_dir=tmp_path / "data")
    assert demo_state.begin(embedded, pg_engine, SIMULATION, fresh=True)[1].reached == []


def _loop(settings: Settings, engine: Engine) -> DemoLoop:
    return DemoLoop(
        settings=settings,
        engine=engine,
        bootstrap=[],
        simulation=SIMULATION,
        consumer=ConsumerThread(settings, engine, []),
        initial=InitialConfig(),
        api_url="http://127.0.0.1:8000",
        console=Console(file=None, stderr=True),
    )


def _drift_alert(site_id: str = "site-02") -> Alert:
    return Alert(
        alert_id=uuid.uuid4(),
        key=StreamKey(site_id, "cxr-lesion", "1.0.0"),
        detector="mmd",
        features=("mean",),
        occurred_at=T0,
        since=T0,
        window_start=T0,
        window_end=T0 + timedelta(hours=1),
        statistic=0.1,
        p_value=0.001,
        effect_size=0.05,
        effect_size_name="mmd2",
        explanation="test alert",
        config_fingerprint="f" * 64,
        reference_id=uuid.uuid4(),
    )


def test_no_request_fails_the_stage_with_the_policys_reasons(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """The message said "its reasons are in the log", and the log held none (issue 22)."""
    policy = RetrainPolicy(min_new_labels=1000, min_new_labels_site=10)
    settings = Settings(data_dir=tmp_path, retrain=RetrainSettings(policy=policy))
    _store_events(pg_engine, 20)
    with pg_engine.begin() as connection:
        write_alerts(connection, [_drift_alert()], T0)
    loop = _loop(settings, pg_engine)
    # Resumed after the alerts: the earlier stages are an earlier run's, not done again.
    done = [Stage.INITIAL_MODEL, Stage.STREAM, Stage.DRIFT_ALERT, Stage.PERFORMANCE_ALERT]
    loop.record = demo_state.DemoRecord(
        simulation=demo_state.schedule_of(SIMULATION),
        start=T0,
        started_at=T0,
        reached=done,
        stream_scores="champion",
    )
    with capture_logs() as logs, pytest.raises(StageFailed) as failed:
        loop.run(Stage.RETRAIN_REQUEST, _never())
    assert loop.state.reached == done
    message = str(failed.value)
    assert "mmd alert at site-02: too few new labelled cases: 20 overall (need 1000)" in message
    assert "ARGS=--fresh" in message and "RADSENTRY_RETRAIN__POLICY__MIN_NEW_LABELS" in message
    [warning] = [e for e in logs if e["event"] == "no retrain request from the alerts"]
    assert any("too few new labelled cases" in reason for reason in warning["reasons"])


def test_a_request_made_by_an_earlier_run_is_named_when_none_is_pending(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """The second `make run` of issue 22: the alerts already had their request (served)."""
    policy = RetrainPolicy(min_new_labels=10, min_new_labels_site=10, cooldown_hours=0)
    settings = Settings(data_dir=tmp_path, retrain=RetrainSettings(policy=policy))
    _store_events(pg_engine, 20)
    with pg_engine.begin() as connection:
        write_alerts(connection, [_drift_alert()], T0)
    loop = _loop(settings, pg_engine)
    assert "request" in loop._retrain_request(_never())  # the first run's request
    [request] = retrain_store.list_requests(pg_engine).items
    retrain_store.finish(pg_engine, request.request_id, "succeeded")
    with pytest.raises(StageFailed, match=rf"already requested: request {request.request_id} "):
        _loop(settings, pg_engine)._retrain_request(_never())


def test_a_stop_during_a_stage_is_a_stop_not_a_failure(pg_engine: Engine, tmp_path: Path) -> None:
    """Ctrl-C while a stage waits (or trains): StageStopped names the stage, which is not
    recorded as reached, so the next run takes it up again."""
    loop = _loop(Settings(data_dir=tmp_path), pg_engine)
    done = [Stage.INITIAL_MODEL, Stage.STREAM]
    loop.record = demo_state.DemoRecord(
        simulation=demo_state.schedule_of(SIMULATION),
        start=T0,
        started_at=T0,
        reached=list(done),
        stream_scores="champion",
    )
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()  # no drift alert comes: the stage waits for one
    with pytest.raises(StageStopped, match="stopped during the drift-alert stage") as stopped:
        loop.run(Stage.DRIFT_ALERT, stop)
    assert stopped.value.stage == Stage.DRIFT_ALERT
    assert loop.state.reached == done and loop.record.reached == done


def _never() -> threading.Event:
    return threading.Event()


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("passed", "Waiting for approval"),
        ("approved", "Waiting for approval"),
        ("failed", "Not promotable"),
        ("promoted", None),
    ],
)
def test_a_resumed_decision_looks_at_the_candidate_as_it_is_now(
    pg_engine: Engine, tmp_path: Path, status: str, shown: str | None
) -> None:
    """A rerun after every stage: the decision is made again from the candidate's status now
    (approved or promoted by people since the first run), so the instructions come back, or
    the run says its loop is complete and how to see it again."""
    from tests.integration.test_candidates import reach

    row = reach(pg_engine, status)
    loop = _loop(Settings(data_dir=tmp_path), pg_engine)
    loop.record = demo_state.DemoRecord(
        simulation=demo_state.schedule_of(SIMULATION),
        start=T0,
        started_at=T0,
        reached=list(Stage),
        summaries={Stage.DECISION: "waits for two approvals"},
        stream_scores="champion",
        candidate_id=row.candidate_id,
        model_version=row.model_version,
    )
    state = loop.run(Stage.DECISION, _never())
    assert state.reached == list(Stage)
    if shown is None:
        assert state.instructions is None
        saved = demo_state.load(loop.settings)
        assert saved is not None and "was promoted" in saved.summaries[Stage.DECISION]
        assert "ARGS=--fresh" in saved.summaries[Stage.DECISION]
    else:
        assert state.instructions is not None and shown in state.instructions
        assert str(row.candidate_id) in state.instructions


def test_once_the_loop_is_done_the_demo_serves_the_retrain_a_person_asks_for(
    pg_engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The decision offers "ask for another retrain"; nothing in the demo served such a
    request (issue 22). Now the demo's scheduler runs the retraining job once the loop is
    done, and says on the console what became of each request: here one that cannot succeed
    (no champion in this registry), which fails at once with the job's reason."""
    from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
        BackgroundScheduler,
    )

    from monitor.service.demo.run import serve_requests

    settings = Settings(data_dir=tmp_path / "data")
    scheduler = BackgroundScheduler(timezone=UTC)  # not started: the test runs the job itself
    serve_requests(scheduler, settings, pg_engine, "http://127.0.0.1:1", threading.Event())
    job = scheduler.get_job("demo-retrain-requests")
    assert job.trigger.interval == timedelta(seconds=settings.retrain.jobs_s)
    request = retrain_store.request_manual(pg_engine, "cxr-lesion", "alice", "more labels")
    job.func()
    served = retrain_store.get_request(pg_engine, request.request_id)
    assert served.status == "failed" and served.error is not None
    said = capsys.readouterr().err
    assert f"retrain request {request.request_id}: no candidate" in said
    assert "has no 'champion' version" in said


def test_a_retrain_that_outlasts_the_interval_is_not_served_twice_nor_warned_about(
    pg_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A training takes minutes, the job looks every `retrain.jobs_s`. With
    ``max_instances=1`` APScheduler printed "skipped: maximum number of running instances
    reached" on the demo's console every minute of a retrain (seen on a real demo); now a run
    that finds one going returns at once, silently."""
    from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
        BackgroundScheduler,
    )

    from monitor.service.demo.run import serve_requests
    from monitor.service.retrain import jobs as retrain_jobs

    calls: list[float] = []
    release = threading.Event()

    def slow_serve(context: object, limit: int | None = None) -> list[object]:
        calls.append(datetime.now(UTC).timestamp())
        release.wait(timeout=10)
        return []

    monkeypatch.setattr(retrain_jobs, "serve_pending", slow_serve)
    settings = Settings(data_dir=tmp_path / "data", retrain=RetrainSettings(jobs_s=0.2))
    scheduler = BackgroundScheduler(timezone=UTC)
    serve_requests(scheduler, settings, pg_engine, "http://127.0.0.1:1", threading.Event())
    caplog.set_level("WARNING", logger="apscheduler")
    scheduler.start()
    try:
        wait_for(lambda: len(calls) == 1, 60, "the first run")  # it opens the MLflow store first
        threading.Event().wait(1.5)  # about seven intervals while the first run trains
        assert len(calls) == 1
        release.set()
        wait_for(lambda: len(calls) >= 2, 60, "the next run")  # once it is done, one serves again
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    assert not [r for r in caplog.records if "running instances" in r.getMessage()]
