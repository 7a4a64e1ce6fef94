"""The ``radsentry`` command line."""

from __future__ import annotations

import secrets
import signal
import threading
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from monitor.events import describe_errors
from monitor.service.api import create_app
from monitor.service.cli_auth import register_auth_commands
from monitor.service.cli_jobs import register_job_commands
from monitor.service.config_log import record_config
from monitor.service.db import make_engine, upgrade
from monitor.service.demo_stages import Stage
from monitor.service.drift_store import DriftMonitor, limit_torch_threads
from monitor.service.ingest import Ingestor
from monitor.service.jobs import start_jobs
from monitor.service.kafka import make_consumer, make_producer
from monitor.service.runtime import (
    BrokerNotFound,
    ConsumerThread,
    configured_bootstrap,
    edge_key,
    load_settings,
    require_bootstrap,
    start_broker_if_needed,
)
from monitor.service.settings import Settings
from monitor.simulate import SimulationConfig

if TYPE_CHECKING:
    from monitor.simulate.stream import StudyScorer

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


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) to the latest revision."""
    settings = load_settings()
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
    jobs: Annotated[
        bool,
        typer.Option(help="Run the periodic jobs (performance refresh, label expiry) here."),
    ] = True,
) -> None:
    """Run the API (and by default the consumer). Starts the bundled broker if no cluster is
    configured and none is running."""
    settings = load_settings()
    engine = make_engine(settings.database_url)
    if migrate_db:
        upgrade(engine)
    record_config(engine, settings, actor="radsentry-serve")
    bootstrap, broker = start_broker_if_needed(settings)
    ingest = ConsumerThread(settings, engine, bootstrap).start() if consumer else None
    scheduler = start_jobs(engine, settings.performance, settings.retrain) if jobs else None
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
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if ingest is not None:
            ingest.stop()
        if broker is not None:
            broker.stop()
        engine.dispose()


@app.command()
def consume(
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="Serve this process's Prometheus metrics (ingestion, drift, consumer lag) "
            "and its /healthz and /readyz probes on this port; 0: off.",
        ),
    ] = 9101,
) -> None:
    """Run the ingestion consumer in the foreground until SIGTERM or Ctrl-C (the production
    process; scale out with one process per group of partitions)."""
    from monitor.service.health import Health, serve_probes

    settings = load_settings()
    try:
        bootstrap = require_bootstrap(settings)
    except BrokerNotFound as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    engine = make_engine(settings.database_url)
    record_config(engine, settings, actor="radsentry-consume")
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    limit_torch_threads()
    health = Health(settings.health.stale_after_s)
    probes = serve_probes(health, metrics_port, settings.api.host) if metrics_port else None
    kafka_consumer = make_consumer(bootstrap, settings.kafka)
    producer = make_producer(bootstrap, settings.kafka)
    try:
        stats = Ingestor(
            engine, kafka_consumer, producer, settings.kafka, DriftMonitor(settings.drift), health
        ).run(stop)
    finally:
        if probes is not None:
            probes.shutdown()
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
    """Write the JSON Schemas of the event contract and of PCCP plan files (generated from the
    models)."""
    from monitor.schemas import write_schemas
    from pccp.plan import write_plan_schema

    for path in [*write_schemas(out), write_plan_schema(out)]:
        console.print(f"wrote {path}")


@app.command()
def broker(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")
    ] = None,
) -> None:
    """Run the bundled Kafka-protocol broker in the foreground (development and tests)."""
    from monitor.service.broker import EmbeddedBroker

    settings = load_settings()
    if configured_bootstrap(settings):
        console.print("a broker is already configured or running; nothing to do")
        raise typer.Exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedBroker(port, state_dir=settings.data_dir) as running:
        console.print(f"bundled broker on {running.bootstrap}; Ctrl-C stops it")
        stop.wait()


@app.command()
def extract(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or directories (recursive).")],
) -> None:
    """Extract the PHI-free features of DICOM files, one JSON line per file on stdout.

    Each line holds the study_key, modality, allowlisted metadata and pixel statistics, or the
    typed error for a file that cannot be used. The study_key is keyed with the site secret
    (RADSENTRY_EDGE__HMAC_KEY). Exit status 1 when any file failed.
    """
    from monitor.service.edge import extract_paths

    settings = load_settings()
    failures = 0
    total = 0
    for line, ok in extract_paths(paths, edge_key(settings)):
        typer.echo(line)
        total += 1
        failures += not ok
    console.print(f"{total - failures} of {total} files extracted")
    if failures:
        raise typer.Exit(1)


SitesOption = Annotated[int, typer.Option(min=1, max=99, help="Number of simulated sites.")]
StudiesOption = Annotated[int, typer.Option(min=1, help="Studies per site.")]
SeedOption = Annotated[
    int | None, typer.Option(help="Seed; the same seed and --start give identical events.")
]
ChangeSiteOption = Annotated[
    str | None, typer.Option(help="Site that switches to a degraded scanner, e.g. site-02.")
]
ChangeAtOption = Annotated[
    int | None, typer.Option(help="Study index at that site from which the new scanner is used.")
]
ChangeFromOption = Annotated[
    datetime | None,
    typer.Option(help="Or: event time (UTC) from which that site uses the new scanner."),
]


class Scores(StrEnum):
    AUTO = "auto"
    CHAMPION = "champion"
    SCORE_MODEL = "score-model"


ScoresOption = Annotated[
    Scores,
    typer.Option(
        help="Where the events' scores come from: the registry's champion if there is one "
        "(auto), the champion or an error, or the parametric score model.",
    ),
]


def _scorer(settings: Settings, scores: Scores, model_name: str) -> StudyScorer | None:
    from monitor.service.registry import NoChampion, champion_scorer

    try:
        scorer = champion_scorer(settings, model_name, scores.value)
    except NoChampion as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if scorer is not None:
        console.print(f"scores from {model_name} version {scorer.version} (champion)")
    return scorer


def _simulation_config(
    sites: int,
    studies: int,
    seed: int | None,
    change_site: str | None,
    change_at: int | None,
    start: datetime | None,
    change_from: datetime | None = None,
) -> SimulationConfig:
    if change_at is not None and change_from is not None:
        raise typer.BadParameter("give --change-at or --change-from, not both")
    schedule = {
        "seed": seed if seed is not None else secrets.randbelow(2**31),
        "sites": sites,
        "studies_per_site": studies,
        "start": _as_utc(start or datetime.now(UTC).replace(microsecond=0)),
    }
    try:
        config = SimulationConfig.model_validate(schedule)
        if change_site in config.site_ids() and change_from is not None:
            change_at = config.first_index_at(change_site, _as_utc(change_from))
        if change_site is not None or change_at is not None:
            change = {"change_site": change_site, "change_at_index": change_at}
            config = SimulationConfig.model_validate(schedule | change)
    except ValidationError as exc:
        raise typer.BadParameter(describe_errors(exc)) from None
    return config


def _as_utc(moment: datetime) -> datetime:
    # A time given without an offset on the command line is taken as UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@app.command()
def simulate(
    sites: SitesOption = 3,
    studies: StudiesOption = 200,
    seed: SeedOption = None,
    change_site: ChangeSiteOption = None,
    change_at: ChangeAtOption = None,
    change_from: ChangeFromOption = None,
    start: Annotated[
        datetime | None, typer.Option(help="Event time of the first studies (default: now).")
    ] = None,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 0,
    jsonl: Annotated[
        Path | None, typer.Option(help="Write the events to this file instead of Kafka.")
    ] = None,
    scores: ScoresOption = Scores.AUTO,
) -> None:
    """Write synthetic DICOM studies for N sites, extract them at the 'edge', score them and
    publish their inference events and delayed label events (see docs/simulate.md)."""
    from monitor.service.simulation import output_dir, publish_simulation, write_jsonl
    from monitor.simulate import simulate as simulated_events

    settings = load_settings()
    config = _simulation_config(sites, studies, seed, change_site, change_at, start, change_from)
    scorer = _scorer(settings, scores, config.model_name)
    console.print(f"simulating {sites} sites x {studies} studies, seed {config.seed}")
    if jsonl is not None:
        events = simulated_events(config, output_dir(settings, config.seed), scorer)
        written = write_jsonl(events, jsonl)
        console.print(f"wrote {written} events to {jsonl}")
        return
    try:
        bootstrap = require_bootstrap(settings)
    except BrokerNotFound as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sent = publish_simulation(settings, config, bootstrap, rate=rate or None, scorer=scorer)
    console.print(f"published {sent} events to {','.join(bootstrap)}")


@app.command()
def demo(
    sites: SitesOption = 3,
    studies: StudiesOption = 300,
    seed: SeedOption = None,
    change_site: ChangeSiteOption = "site-02",
    change_at: ChangeAtOption = 150,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 50,
    port: Annotated[int | None, typer.Option(help="API port (default from settings).")] = None,
    until: Annotated[
        Stage | None,
        typer.Option(
            help="Stop after this stage and exit (headless runs); default: every "
            "stage, then keep serving until Ctrl-C."
        ),
    ] = None,
    exit_when_done: Annotated[
        bool, typer.Option(help="Same as --until stream (the stream alone, then exit).")
    ] = False,
    scores: ScoresOption = Scores.AUTO,
) -> None:
    """The whole loop on one machine (bundled broker, SQLite, local MLflow): the initial model,
    simulated sites with a scanner change at one of them, drift and performance alerts, a
    retrain, the candidate in MLflow, the PCCP gate, then waiting for two approvals. Ctrl-C
    stops everything."""
    from monitor.service.demo import DEMO_SEED, run_demo
    from retrain.initial import InitialConfig

    settings = load_settings()
    config = _simulation_config(
        sites, studies, DEMO_SEED if seed is None else seed, change_site, change_at, None
    )
    # The deployed population is the development cohort's (same prevalence): only the scanner
    # changes, which is the story the demo tells and the shift retraining can repair.
    config = config.model_copy(update={"prevalence": InitialConfig().prevalence})
    stop_at = Stage.STREAM if exit_when_done else until
    code = run_demo(
        settings,
        config,
        rate=rate or None,
        port=port,
        until=stop_at,
        scores=scores.value,
    )
    raise typer.Exit(code)


@app.command()
def backtest(
    events: Annotated[
        Path,
        typer.Option(
            exists=True, dir_okay=False, help="inference-event/v1 lines (JSONL, may be gzipped)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the alerts, one JSON per line.")],
    reference: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Events to use as the reference of each (site, model, version) in them; other "
            "streams start from their first events.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="EngineConfig as JSON or YAML."),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Stop with exit status 1 at the first invalid line.")
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="label-event/v1 lines: also track performance (RADSENTRY_PERFORMANCE__*) and "
            "write performance alerts.",
        ),
    ] = None,
) -> None:
    """Replay a file of inference events through the drift engine, in event-time order, and
    write the alerts it raises (see docs/drift.md#backtest). Invalid lines are reported by line
    number and skipped; the exit status stays 0 unless --strict."""
    if labels is not None:
        _backtest_with_labels(events, labels, out, reference, config, strict)
        return
    from monitor.service.backtest import (
        BacktestError,
        load_config,
        print_summary,
        rich_progress,
        run_backtest,
    )

    limit_torch_threads()  # as the consumer: small kernels, no thread contention
    try:
        engine_config = load_config(config)
        console.print(f"config fingerprint {engine_config.fingerprint()}", soft_wrap=True)
        with rich_progress(console) as progress:
            summary = run_backtest(
                events,
                out,
                config=engine_config,
                reference_path=reference,
                strict=strict,
                on_progress=progress,
            )
    except (BacktestError, OSError, EOFError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    print_summary(console, summary)
    console.print(f"wrote {summary.alerts} alerts to {out}", soft_wrap=True)


def _backtest_with_labels(
    events: Path, labels: Path, out: Path, reference: Path | None, config: Path | None, strict: bool
) -> None:
    from monitor.service.backtest import BacktestError, load_config
    from monitor.service.backtest_labels import run_backtest_with_labels

    limit_torch_threads()
    try:
        engine_config = load_config(config)
        console.print(f"config fingerprint {engine_config.fingerprint()}", soft_wrap=True)
        summary = run_backtest_with_labels(
            events,
            labels,
            out,
            config=engine_config,
            performance=load_settings().performance,
            reference_path=reference,
            strict=strict,
        )
    except (BacktestError, OSError, EOFError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(
        f"events {summary.events.accepted:,} (invalid {summary.events.invalid}), labels "
        f"{summary.labels.accepted:,} (invalid {summary.labels.invalid}), performance refreshed "
        f"{summary.refreshes} times, {summary.elapsed_s:.1f} s",
        soft_wrap=True,
    )
    for detector, count in sorted(summary.alerts_by_detector.items()):
        console.print(f"  {detector}: {count} alerts", soft_wrap=True)
    console.print(f"wrote {summary.alerts} alerts to {out}", soft_wrap=True)


@app.command()
def report(
    site: Annotated[str, typer.Option(help="Site whose drift report to build.")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="Where to write the HTML page.")],
    model_name: Annotated[str | None, typer.Option(help="Model (default: latest updated).")] = None,
    model_version: Annotated[str | None, typer.Option(help="Model version.")] = None,
) -> None:
    """Write a site's Evidently drift report (reference vs its latest window of events), the
    page `GET /sites/{site_id}/report` serves, from the configured database."""
    from monitor.service.alerts_store import StreamNotFound
    from monitor.service.site_report import site_report

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        key, html = site_report(
            engine, settings.drift, site, model_name=model_name, model_version=model_version
        )
    except StreamNotFound as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    out.write_text(html, encoding="utf-8")
    console.print(f"wrote the drift report of {key} to {out}", soft_wrap=True)


# The retraining commands (retrain, train-initial, scheduler) live in cli_jobs.py.
register_job_commands(app)
register_auth_commands(app)
