"""The ``radsentry`` command line."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from monitor.service.api import create_app
from monitor.service.db import make_engine, upgrade
from monitor.service.ingest import Ingestor
from monitor.service.kafka import make_consumer, make_producer
from monitor.service.logging import configure_logging
from monitor.service.runtime import (
    BrokerNotFound,
    ConsumerThread,
    configured_bootstrap,
    require_bootstrap,
    start_broker_if_needed,
)
from monitor.service.settings import Settings

app = typer.Typer(
    name="radsentry",
    help="RadSentry: watch deployed medical-imaging AI models site by site.\n\n"
    "Settings come from RADSENTRY_* environment variables (see README). With none set, "
    "everything runs on embedded defaults: a SQLite file and a bundled Kafka-protocol broker "
    "under ./.radsentry.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.logging)
    return settings


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) to the latest revision."""
    settings = _settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    console.print(f"database at revision head: {engine.url.render_as_string(hide_password=True)}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    consumer: Annotated[
        bool, typer.Option(help="Also run the ingestion consumer in this process.")
    ] = True,
    migrate_db: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Upgrade the schema at start.")
    ] = True,
) -> None:
    """Run the API (and by default the consumer). Starts the bundled broker if no cluster is
    configured and none is running."""
    settings = _settings()
    engine = make_engine(settings.database_url)
    if migrate_db:
        upgrade(engine)
    bootstrap, broker = start_broker_if_needed(settings)
    ingest = ConsumerThread(settings, engine, bootstrap).start() if consumer else None
    api = create_app(settings, engine=engine, bootstrap=lambda: bootstrap)
    console.print(
        f"RadSentry API on http://{host or settings.api.host}:{port or settings.api.port}/docs "
        f"(broker {','.join(bootstrap)}, database {engine.url.get_backend_name()})"
    )
    try:
        uvicorn.run(
            api, host=host or settings.api.host, port=port or settings.api.port, log_level="warning"
        )
    finally:
        if ingest is not None:
            ingest.stop()
        if broker is not None:
            broker.stop()
        engine.dispose()


@app.command()
def consume() -> None:
    """Run the ingestion consumer in the foreground until SIGTERM or Ctrl-C (the production
    process; scale out with one process per group of partitions)."""
    settings = _settings()
    try:
        bootstrap = require_bootstrap(settings)
    except BrokerNotFound as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    engine = make_engine(settings.database_url)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    kafka_consumer = make_consumer(bootstrap, settings.kafka)
    producer = make_producer(bootstrap, settings.kafka)
    try:
        stats = Ingestor(engine, kafka_consumer, producer, settings.kafka).run(stop)
    finally:
        kafka_consumer.close(autocommit=False)
        producer.close()
        engine.dispose()
    console.print(
        f"stopped cleanly: {stats.stored} stored, {stats.duplicates} duplicates skipped, "
        f"{stats.dead_lettered} dead-lettered"
    )


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Directory for the JSON Schema files.")] = Path(
        "docs/schemas"
    ),
) -> None:
    """Write the JSON Schemas of the event contract (generated from the models)."""
    from monitor.schemas import write_schemas

    for path in write_schemas(out):
        console.print(f"wrote {path}")


@app.command()
def broker(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")
    ] = None,
) -> None:
    """Run the bundled Kafka-protocol broker in the foreground (development and tests)."""
    from monitor.service.broker import EmbeddedBroker

    settings = _settings()
    if configured_bootstrap(settings):
        console.print("a broker is already configured or running; nothing to do")
        raise typer.Exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedBroker(port, state_dir=settings.data_dir) as running:
        console.print(f"bundled broker on {running.bootstrap}; Ctrl-C stops it")
        stop.wait()
