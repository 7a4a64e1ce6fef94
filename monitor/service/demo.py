"""``radsentry demo``: everything on embedded defaults plus a simulated stream."""

from __future__ import annotations

import threading
import time

import structlog
import uvicorn
from rich.console import Console

from monitor.service import store
from monitor.service.api import create_app
from monitor.service.db import make_engine, upgrade
from monitor.service.runtime import ConsumerThread, start_broker_if_needed
from monitor.service.settings import Settings
from monitor.service.simulation import publish_simulation
from monitor.simulate import SimulationConfig

log = structlog.get_logger(__name__)
console = Console(stderr=True)


def run_demo(
    settings: Settings,
    config: SimulationConfig,
    *,
    rate: float | None,
    port: int | None,
    exit_when_done: bool,
) -> int:
    """Run until Ctrl-C (or, with ``exit_when_done``, until the stream is stored). Exit code."""
    engine = make_engine(settings.database_url)
    upgrade(engine)
    bootstrap, broker = start_broker_if_needed(settings)
    ingest = ConsumerThread(settings, engine, bootstrap).start()
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
        sent = publish_simulation(settings, config, bootstrap, rate=rate, stop=stop)
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
        console.print(f"stream done: {sent} events published, {ingest.stats.stored} stored")
        if exit_when_done:
            server.should_exit = True

    console.print(f"RadSentry demo: API on http://{settings.api.host}:{api_port}/docs")
    streamer = threading.Thread(target=stream, name="radsentry-simulator", daemon=True)
    streamer.start()
    try:
        server.run()
    finally:
        stop.set()
        streamer.join(30)
        ingest.stop()
        if broker is not None:
            broker.stop()
        engine.dispose()
    return outcome.get("code", 0)
