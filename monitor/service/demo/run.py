"""``radsentry demo``: everything on embedded defaults (PostgreSQL and the broker, started
here), driven through the whole loop (``demo.loop``): initial model, stream, alerts, retrain,
candidate, gate, a person's decision."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TextIO

import structlog
from rich.console import Console

from monitor.drift.alarms import AlarmConfig
from monitor.drift.calibration import LearnedThresholdConfig
from monitor.drift.config import EngineConfig, WindowConfig
from monitor.performance.config import AurocDrop, ErrorRateCusum
from monitor.performance.rules import RulesConfig
from monitor.service import embedded_pg
from monitor.service.api import create_app
from monitor.service.audit.config import record_config
from monitor.service.db import make_engine
from monitor.service.demo import state as demo_state
from monitor.service.demo.loop import DemoLoop, LoopState, StageFailed, StageStopped
from monitor.service.demo.simulation import ScoresChoice
from monitor.service.demo.stages import Stage
from monitor.service.demo.state import (
    DEMO_ACTOR,
    FRESH_HINT,
    CannotResume,
    DemoRecord,
    NotTheDemosDatabase,
)
from monitor.service.ingest.consumer import ConsumerThread
from monitor.service.jobs import start_jobs
from monitor.service.lifecycle import GracefulStop, api_server, port_taken
from monitor.service.logging import configure_logging, job_boundary
from monitor.service.retrain.initial import DEVELOPMENT_CASES, cohort_folder
from monitor.service.runtime import (
    database_url,
    embedded_database,
    pasteable_cli,
    start_broker_if_needed,
)
from monitor.service.settings import PerformanceSettings, Settings
from monitor.simulate import SimulationConfig
from retrain.config import JobConfig, TrainConfig

if TYPE_CHECKING:
    from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
        BackgroundScheduler,
    )
    from sqlalchemy import Engine

    from monitor.service.models import RetrainRequestRow
    from retrain.initial import InitialConfig

log = structlog.get_logger(__name__)
console = Console(stderr=True)

DEMO_JOB = JobConfig(train=TrainConfig(max_epochs=40, patience=40, learning_rate=3e-4))
"""The retraining job's training for the demo: 40 epochs at a learning rate of 3e-4 (a third
of the job's default: fine-tuning the champion at 1e-3 made the validation loss jump from epoch
to epoch), keeping the epoch with the best validation loss. The patience is the whole run: at
3e-4 the validation loss still jumps now and then, and a patience of 8 stopped some runs at
epoch 24 with a weaker candidate. ``run_demo`` adds ``rehearsal_cases``: v1's development cases
are trained on beside the new labels. Trained on the new labels alone, the candidate learnt the
portable reader and forgot the catalogue rooms (PA AUROC 0.884 against the champion's 0.903 on
a development set) and no threshold passed the plan's criteria there (docs/benchmarks.md,
"Full-loop demo")."""
DEMO_SEED = 7
"""The demo's stream is the same on every machine unless ``--seed`` says otherwise."""
DEMO_DRIFT = EngineConfig(
    reference_size=100,
    window=WindowConfig(size=50, min_size=25),
    learned=LearnedThresholdConfig(chunk_size=20, min_chunks=5),
    alarms=AlarmConfig(cooldown_checks=2),
)
"""Drift settings scaled to the demo's few hundred studies per site: references of the first
100 events, thresholds learned from five chunks of 20 (small chunks vary more than windows of
50, so these thresholds are conservative; they give the health score its standardisation),
windows of 50, a cooldown of 2 windows; production keeps the defaults (a 13-week reference,
learned from chunks the window's size; docs/drift.md) or sets ``RADSENTRY_DRIFT__*``."""
DEMO_PERFORMANCE = PerformanceSettings(
    rolling_window=150,
    refresh_s=15,
    estimate_reference=100,
    min_new_labels=50,
    rules=RulesConfig(
        calibration_limit=None,
        auroc_drop=AurocDrop(min_positives=15),
        error_rate_cusum=ErrorRateCusum(min_reference_cases=100, arl0=2000),
    ),
)
"""Performance refreshed every 15 s on the latest 150 labelled studies, for the demo's pace.
The reference is each site's first 100 labelled studies (about 20 positives at the simulator's
prevalence), so the AUROC-drop rule accepts 15 reference positives and the error-rate CUSUM a
100-case reference with one false signal per 2,000 labelled cases (production: 30 positives,
200 cases, 20,000). The simulator's scores are not calibrated probabilities, so the
calibration rule is off."""


DEMO_STOP_BOUND_S = 45.0
"""From Ctrl-C to the exit, whatever is still draining then (exit status 1). Every stage stops
within a second or two, training included (it is asked between batches); the bound is for a
step that cannot be asked, such as the gate's evaluation or an MLflow call with its retries."""

ROUTINE_LOGGERS: Final = frozenset(
    {
        "monitor.service.performance.jobs",
        "monitor.service.retrain.jobs",
        "monitor.service.retrain.store",
        "monitor.service.pccp.jobs",
        "monitor.service.audit.jobs",
        "monitor.service.drift.jobs",
        "retrain.tracking",
    }
)
"""The periodic jobs and the steps the loop reports itself: their INFO lines ("performance
refreshed" every 15 s...) are DEBUG in the demo, so the stage lines and the approval block stay
on screen; warnings and errors still show, and RADSENTRY_LOGGING__LEVEL=DEBUG shows them all."""


def run_demo(
    settings: Settings,
    config: SimulationConfig,
    *,
    rate: float | None,
    port: int | None,
    until: Stage | None,
    scores: ScoresChoice = "auto",
    initial: InitialConfig | None = None,
    fresh: bool = False,
) -> int:
    """Serve the API, consumer and jobs, and drive the loop (``demo.loop``) to ``until`` then
    exit, or through every stage and keep serving until Ctrl-C (None). The exit code.

    A rerun on the same data dir resumes the previous run (``demo.state``); ``fresh`` deletes
    what it stored first (only the demo's own database: ``demo.state.check_wipeable``). A run
    that cannot resume, or cannot start over, exits 2 saying what to do."""
    from retrain.initial import InitialConfig

    configure_logging(settings.logging, routine=ROUTINE_LOGGERS)
    api_port = port or settings.api.port
    if port_taken(settings.api.host, api_port):
        console.print(
            f"[red]cannot start:[/red] {settings.api.host}:{api_port} is in use (another "
            f"`radsentry demo` or `serve` still running?): stop it, or give the demo another "
            f"port: make run ARGS='--port {api_port + 1}'",
            soft_wrap=True,
        )
        return 2

    if settings.drift == EngineConfig():
        # A few hundred studies per site would never fill the service's 1,000-event references.
        settings = settings.model_copy(update={"drift": DEMO_DRIFT})
    if settings.performance == PerformanceSettings():
        settings = settings.model_copy(update={"performance": DEMO_PERFORMANCE})
    initial = initial or InitialConfig(model_name=config.model_name)
    if settings.retrain.job == JobConfig():
        # Rehearsal on v1's development cases, which the initial-model stage writes.
        rehearsal = cohort_folder(settings, initial) / DEVELOPMENT_CASES
        job = DEMO_JOB.model_copy(update={"rehearsal_cases": rehearsal})
        retrain = settings.retrain.model_copy(update={"job": job})
        settings = settings.model_copy(update={"retrain": retrain})
    # Unless a database is configured, the demo runs its own PostgreSQL server (cluster in
    # <data_dir>/pg, which --fresh keeps: it empties the database instead) for its whole life
    # and stops it at the end, as it does the broker.
    embedded = embedded_database(settings)
    engine = make_engine(database_url(settings))
    try:
        config, record = _begin(settings, engine, config, fresh=fresh)
    except (CannotResume, NotTheDemosDatabase) as exc:
        refusal = "cannot resume" if isinstance(exc, CannotResume) else "will not start over"
        console.print(f"[red]{refusal}:[/red] {exc}", soft_wrap=True)
        engine.dispose()
        if embedded is not None:
            embedded_pg.close_embedded_database(settings.data_dir)
        return 2
    record_config(engine, settings, actor=DEMO_ACTOR)
    bootstrap, broker = start_broker_if_needed(settings)
    ingest = ConsumerThread(settings, engine, bootstrap).start()
    scheduler = start_jobs(engine, settings.performance, settings.retrain)
    api_url = f"http://{settings.api.host}:{api_port}"
    server = api_server(
        create_app(settings, engine=engine, bootstrap=lambda: bootstrap),
        settings.api.host,
        api_port,
    )
    loop = DemoLoop(
        settings=settings,
        engine=engine,
        bootstrap=bootstrap,
        simulation=config,
        consumer=ingest,
        initial=initial,
        api_url=api_url,
        console=console,
        rate=rate,
        scores=scores,
        record=record,
    )
    outcome: dict[str, int] = {}
    stop = threading.Event()

    def drive() -> None:
        try:
            loop.run(until or Stage.DECISION, stop)
            outcome["code"] = 0
            if until is None:
                # What the decision's instructions offer ("ask for another retrain") is
                # trained and gated here, as `serve`'s deployment would; not before the loop
                # is done, whose own stages serve the request they made.
                serve_requests(scheduler, settings, engine, api_url, stop)
            if until is None and loop.state.instructions and sys.stdin.isatty():
                console.print("(press Enter to show these instructions again)")
                threading.Thread(
                    target=reprint_on_enter,
                    args=(loop.state, sys.stdin),
                    name="radsentry-demo-keys",
                    daemon=True,
                ).start()
        except StageStopped as exc:  # Ctrl-C: nothing failed, the exit status stays 0
            console.print(f"[yellow]{exc}[/yellow]", soft_wrap=True)
            return
        except StageFailed as exc:
            if stop.is_set():  # as above, from a step that saw the stop its own way
                return
            console.print(f"[red]stage failed:[/red] {exc}", soft_wrap=True)
            console.print(
                f"Run the demo again to resume from this stage (the stages before it are "
                f"kept), or start over with {FRESH_HINT}.",
                soft_wrap=True,
            )
            outcome["code"] = 1
        except Exception:  # the driver's boundary: say so, keep nothing running
            log.exception("demo loop failed")
            outcome["code"] = 1
        if until is not None:
            server.should_exit = True  # headless: the exit code says how far it got
        else:
            console.print(f"serving on {api_url} until Ctrl-C")

    console.print(f"RadSentry demo: API on {api_url}/docs (data in {settings.data_dir})")
    if settings.auth.mode == "local":
        token = f"{pasteable_cli(settings.data_dir)} token --subject you --role auditor"
        console.print(f"  a token for it: {token}", soft_wrap=True, markup=False)
    driver = threading.Thread(target=drive, name="radsentry-demo-loop", daemon=True)
    driver.start()
    # Ctrl-C stops the demo as it stops serve (monitor/service/lifecycle.py).
    with GracefulStop("demo", bound_s=DEMO_STOP_BOUND_S) as stopping:
        if broker is not None:
            stopping.on_abandon(broker.stop)
        stopping.on_stop(server.request_exit)
        stopping.on_stop(stop.set)
        try:
            server.run()
        finally:
            stop.set()
            driver.join(30)
            scheduler.shutdown(wait=False)
            ingest.stop()
            if broker is not None:
                broker.stop()
            engine.dispose()
            if embedded is not None:
                embedded_pg.close_embedded_database(settings.data_dir)
    if stopping.requested.is_set():
        console.print("stopped (Ctrl-C)")
    return outcome.get("code", 0)


def _begin(
    settings: Settings, engine: Engine, config: SimulationConfig, *, fresh: bool
) -> tuple[SimulationConfig, DemoRecord]:
    """``demo_state.begin``, saying on the console what it chose."""
    if fresh:
        demo_state.check_wipeable(settings, engine)  # before saying it deletes anything
        console.print(f"starting over in {settings.data_dir}: deleting what earlier runs stored")
    config, record = demo_state.begin(settings, engine, config, fresh=fresh)
    if record.reached:
        done = ", ".join(record.reached)
        console.print(
            f"resuming the demo run of {record.started_at:%Y-%m-%d %H:%M} UTC (done: {done}); "
            f"{FRESH_HINT} starts over",
            soft_wrap=True,
        )
    return config, record


def serve_requests(
    scheduler: BackgroundScheduler,
    settings: Settings,
    engine: Engine,
    api_url: str,
    stop: threading.Event,
) -> None:
    """From now on, serve pending retrain requests every ``retrain.jobs_s`` (60 s): train the
    candidate, run the gate on it, and say on the console where its evidence is."""
    from monitor.service.retrain.jobs import job_context, serve_pending
    from retrain.train import TrainingStopped

    serving = threading.Lock()

    def serve() -> None:
        # A training outlasts the interval. A run that finds one going returns at once: with
        # max_instances=1 APScheduler would print a warning for each skipped run instead.
        if not serving.acquire(blocking=False):
            return
        try:
            context = job_context(engine, settings, should_stop=stop.is_set)
            try:
                served = serve_pending(context)
            except TrainingStopped:  # Ctrl-C: the request is pending again for the next run
                return
            for row in served:
                console.print(served_sentence(engine, row, api_url), soft_wrap=True)
        finally:
            serving.release()

    scheduler.add_job(
        job_boundary("demo retrain job failed")(serve),
        "interval",
        seconds=settings.retrain.jobs_s,
        id="demo-retrain-requests",
        max_instances=2,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )


def served_sentence(engine: Engine, row: RetrainRequestRow, api_url: str) -> str:
    """What became of a retrain request asked for after the loop: its candidate's gate
    result and evidence, or why there is none."""
    from monitor.service.pccp import store as candidates_store

    if row.status != "succeeded" or row.model_version is None:
        why = row.error or f"it is {row.status}"
        return f"retrain request {row.request_id}: no candidate ({why})"
    candidate = candidates_store.find(engine, row.model_name, str(row.model_version))
    url = f"{api_url}/candidates/{candidate.candidate_id}"
    outcome = {
        "passed": f"passed the PCCP gate and waits for two approvals (POST {url}/approve)",
        "failed": "failed the PCCP gate",
        "candidate": "waits for the PCCP gate",
    }.get(str(candidate.status), f"is {str(candidate.status).replace('_', ' ')}")
    return (
        f"retrain request {row.request_id}: {row.model_name} version {row.model_version} "
        f"{outcome}; evidence: {url}/evidence"
    )


def reprint_on_enter(state: LoopState, keys: TextIO) -> None:
    """Each Enter on the demo's terminal (``keys``) prints the last instructions again: the
    API's lines may have scrolled them away. Run on a daemon thread: it ends with the process."""
    for _line in keys:
        if state.instructions:
            console.print(state.instructions, soft_wrap=True)
