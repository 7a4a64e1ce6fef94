"""``radsentry demo``: everything on embedded defaults plus a simulated stream."""

from __future__ import annotations

import threading
import time

import structlog
import uvicorn
from rich.console import Console

from monitor.drift.config import EngineConfig, WindowConfig
from monitor.performance.rules import RulesConfig
from monitor.service import alerts_store, store
from monitor.service.api import create_app
from monitor.service.db import make_engine, upgrade
from monitor.service.jobs import refresh_performance, start_jobs
from monitor.service.performance_store import latest_snapshots
from monitor.service.runtime import ConsumerThread, start_broker_if_needed
from monitor.service.settings import PerformanceSettings, Settings
from monitor.service.simulation import publish_simulation
from monitor.simulate import SimulationConfig
from monitor.simulate.stream import StudyScorer

log = structlog.get_logger(__name__)
console = Console(stderr=True)

DEMO_DRIFT = EngineConfig(reference_size=100, window=WindowConfig(size=50, min_size=25))
"""Drift settings scaled to the demo's few hundred studies per site (references of 100 events,
windows of 50); production keeps the defaults or sets ``RADSENTRY_DRIFT__*``."""
DEMO_PERFORMANCE = PerformanceSettings(
    rolling_window=150,
    refresh_s=15,
    estimate_reference=100,
    min_new_labels=50,
    rules=RulesConfig(calibration_limit=None),
)
"""Performance refreshed every 15 s on the latest 150 labelled studies, for the demo's pace.
The simulator's scores are not calibrated probabilities, so the calibration rule is off."""


def run_demo(
    settings: Settings,
    config: SimulationConfig,
    *,
    rate: float | None,
    port: int | None,
    exit_when_done: bool,
    scorer: StudyScorer | None = None,
) -> int:
    """Run until Ctrl-C (or, with ``exit_when_done``, until the stream is stored). Exit code."""
    if settings.drift == EngineConfig():
        # A few hundred studies per site would never fill the service's 1,000-event references.
        settings = settings.model_copy(update={"drift": DEMO_DRIFT})
    if settings.performance == PerformanceSettings():
        settings = settings.model_copy(update={"performance": DEMO_PERFORMANCE})
    engine = make_engine(settings.database_url)
    upgrade(engine)
    bootstrap, broker = start_broker_if_needed(settings)
    ingest = ConsumerThread(settings, engine, bootstrap).start()
    scheduler = start_jobs(engine, settings.performance, settings.retrain)
    api_port = port or settings.api.port
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, engine=engine, bootstrap=lambda: bootstrap),
            host=settings.api.host,
            port=api_port,
            log_level="warning",
        )
    )
    outcome: dict[str, int] = {}
    stop = threading.Event()

    def stream() -> None:
        console.print(
            f"streaming {config.sites} sites x {config.studies_per_site} studies "
            f"(seed {config.seed}; scanner change at {config.change_site or 'no site'})"
        )
        sent = publish_simulation(settings, config, bootstrap, rate=rate, stop=stop, scorer=scorer)
        deadline = time.monotonic() + 120
        while ingest.stats.stored + ingest.stats.duplicates < sent and not stop.is_set():
            if time.monotonic() > deadline:
                console.print("[red]timed out waiting for the consumer[/red]")
                outcome["code"] = 1
                break
            time.sleep(0.2)
        outcome.setdefault("code", 0)
        for site in store.list_sites(engine):
            console.print(
                f"  {site.site_id}: {site.inference.count} inference events, "
                f"{site.labels.count} label events"
            )
        refresh_performance(engine, settings.performance)
        for snapshot in latest_snapshots(engine):
            if snapshot.window == "rolling" and (auroc := snapshot.metrics.get("auroc")):
                console.print(
                    f"  {snapshot.site_id} {snapshot.finding}: AUROC {auroc['estimate']:.2f} "
                    f"({auroc['lower']:.2f}-{auroc['upper']:.2f}) on the latest "
                    f"{snapshot.metrics['counts']['n']} labelled studies"
                )
        for alert in alerts_store.list_alerts(engine, limit=20).items:
            console.print(
                f"  alert [{alert.detector}] {alert.explanation}", soft_wrap=True, markup=False
            )
        console.print(f"stream done: {sent} events published, {ingest.stats.stored} stored")
        if exit_when_done:
            server.should_exit = True

    console.print(f"RadSentry demo: API on http://{settings.api.host}:{api_port}/docs")
    if settings.auth.mode == "local":
        console.print("  a token for it: radsentry token --subject you --role auditor")
    streamer = threading.Thread(target=stream, name="radsentry-simulator", daemon=True)
    streamer.start()
    try:
        server.run()
    finally:
        stop.set()
        streamer.join(30)
        scheduler.shutdown(wait=False)
        ingest.stop()
        if broker is not None:
            broker.stop()
        engine.dispose()
    return outcome.get("code", 0)
