"""The ``radsentry`` command line: the platform's commands (serve, scheduler, migrate, token,
schemas, broker), and every domain's commands mounted from its ``cli.py``.

Importing this module, and every domain's ``cli.py``, imports no heavy library (torch, scipy,
MLflow, Evidently, FastAPI, SQLAlchemy, Kafka): each command imports what it needs when it
runs, so that ``radsentry --help``, ``radsentry token`` and ``radsentry audit verify`` start in
well under a second (docs/benchmarks.md, "CLI start"; tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from monitor.service.audit import cli as audit_cli
from monitor.service.audit.keys import sign_entries_with
from monitor.service.backtest import cli as backtest_cli
from monitor.service.demo import cli as demo_cli
from monitor.service.drift import cli as drift_cli
from monitor.service.grafana import cli as grafana_cli
from monitor.service.ingest import cli as ingest_cli
from monitor.service.pccp import cli as pccp_cli
from monitor.service.performance import cli as performance_cli
from monitor.service.retrain import cli as retrain_cli
from monitor.service.runtime import console, database_url, load_settings, run_options
from monitor.service.settings import Settings
from monitor.service.tokens import LocalModeOnly, Role, issue_local_token

app = typer.Typer(
    name="radsentry",
    help="RadSentry: watch deployed medical-imaging AI models site by site.\n\n"
    "Settings come from RADSENTRY_* environment variables (see README). With none set, "
    "everything runs on embedded defaults: a PostgreSQL server and a Kafka-protocol broker "
    "of RadSentry's own, their data under ./.radsentry.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _every_command(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the traceback of an error at start (a setting, the database) instead "
            "of its one line.",
        ),
    ] = False,
) -> None:
    run_options.debug = debug
    # Commands that write the change log sign its entries with the audit key of the settings
    # they run with, read at the first entry (commands that write none never read it).
    sign_entries_with(Settings)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) to the latest revision, connected as the
    schema's owner (RADSENTRY_DATABASE__MIGRATION_URL, else RADSENTRY_DATABASE__URL). On
    PostgreSQL, then grant RADSENTRY_DATABASE__RUNTIME_ROLE and __CONSUMER_ROLE exactly what
    their components need (docs/deploy.md, "Database roles")."""
    from monitor.service.db import upgrade
    from monitor.service.roles import RoleSetupError, grant_roles, take_ownership
    from monitor.service.runtime import open_owner_database
    from monitor.service.scheduler import create_job_store

    settings = load_settings()
    runtime_role, consumer_role = settings.database.runtime_role, settings.database.consumer_role
    with open_owner_database(settings) as engine:
        granting = bool(runtime_role or consumer_role)
        try:
            # Ownership first, so that the upgrade runs as the owner of everything.
            taken = take_ownership(engine, runtime_role, consumer_role) if granting else []
            upgrade(engine)
            create_job_store(engine)
            report = grant_roles(engine, runtime_role, consumer_role) if granting else None
        except RoleSetupError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    console.print(f"database at revision head: {engine.url.render_as_string(hide_password=True)}")
    if report is not None:
        for moved in [*taken, *report.taken_over]:
            console.print(f"ownership taken over by {report.owner}: {moved}")
        for grants in report.granted:
            console.print(grants.summary(), soft_wrap=True)
    else:
        console.print(
            f"no RADSENTRY_DATABASE__RUNTIME_ROLE: every component connects as "
            f'{engine.url.username}, which owns the schema (docs/deploy.md, "Database roles")'
        )


@app.command()
def downgrade(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="The revision to take the schema back to: the older release's head."
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Downgrade without asking (scripts, Kubernetes jobs).")
    ] = False,
) -> None:
    """Take the database schema back to revision TO before rolling the service back to an older
    release, connected as the schema's owner. Run it with this (the newer) release: only it
    knows how to undo its own revisions. Each revision's downgrade runs, newest first; 0020's
    writes the performance statistics back in the format the code before it reads, and older
    ones drop what they added, data included (docs/operations.md, "Rolling back a release")."""
    from alembic import command
    from alembic.util.exc import CommandError

    from monitor.service.db import alembic_config, schema_revisions
    from monitor.service.runtime import open_owner_database

    settings = load_settings()
    with open_owner_database(settings) as engine:
        current, _head = schema_revisions(engine)
        if not yes:
            typer.confirm(f"Downgrade the database schema from {current} to {to}?", abort=True)
        try:
            command.downgrade(alembic_config(engine), to)
        except CommandError as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
    console.print(f"database at revision {to} (was {current}); roll the service back to it now")


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
    configured and none is running. SIGTERM or Ctrl-C: the API finishes its requests, the
    consumer its batch (committed), the jobs their run, the bundled broker stops; exit 0
    (docs/operations.md, "Starting and stopping")."""
    from monitor.service.lifecycle import GracefulStop, PortTaken, port_taken
    from monitor.service.runtime import EXIT_SETTINGS, fail, open_database

    # Settings and the database first: a command that cannot start says so in a second,
    # before the API, the consumer and the drift engine are imported (several seconds).
    settings = load_settings()
    host, port = host or settings.api.host, port or settings.api.port
    if port_taken(host, port):
        taken = f"{host}:{port} is in use (another `radsentry serve` or demo still running?)"
        fail(
            PortTaken(taken),
            [f"{taken}: stop it, or serve on another port (--port, RADSENTRY_API__PORT)"],
            EXIT_SETTINGS,
        )
    with (
        GracefulStop("serve") as stopping,
        open_database(database_url(settings), migrate=migrate_db) as engine,
    ):
        from monitor.service.api import create_app
        from monitor.service.audit.config import record_config
        from monitor.service.ingest.consumer import ConsumerThread
        from monitor.service.jobs import start_jobs
        from monitor.service.lifecycle import STOP_BOUND_S, api_server
        from monitor.service.limits import server_limits
        from monitor.service.runtime import start_broker_if_needed

        record_config(engine, settings, actor="radsentry-serve")
        bootstrap, broker = start_broker_if_needed(settings)
        if broker is not None:
            stopping.on_abandon(broker.stop)
        ingest = ConsumerThread(settings, engine, bootstrap).start() if consumer else None
        if ingest is not None:
            stopping.on_stop(ingest.stop_event.set)
        scheduler = start_jobs(engine, settings.performance, settings.retrain) if jobs else None
        api = create_app(settings, engine=engine, bootstrap=lambda: bootstrap)
        server = api_server(api, host, port, server_limits(settings.api.max_header_bytes))
        stopping.on_stop(server.request_exit)
        console.print(
            f"RadSentry API on http://{host}:{port}/docs "
            f"(broker {','.join(bootstrap)}, database {engine.url.get_backend_name()})"
        )
        try:
            server.run()
        finally:
            # In this order: the consumer and jobs may still write, the broker goes last.
            if ingest is not None:
                ingest.stop(timeout=STOP_BOUND_S)
            if scheduler is not None:
                scheduler.shutdown(wait=True)
            if broker is not None:
                broker.stop()
    console.print("stopped cleanly")


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
    from monitor.service.runtime import configured_bootstrap

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


MAX_TTL_S = 30 * 24 * 3600


@app.command()
def token(
    subject: Annotated[str, typer.Option(help="Who the token is for; recorded as the actor.")],
    role: Annotated[
        list[Role], typer.Option("--role", help="A role of the token (repeat for several).")
    ],
    site: Annotated[
        list[str] | None,
        typer.Option("--site", help="A site a site manager may read (repeat for several)."),
    ] = None,
    ttl: Annotated[
        int, typer.Option(min=60, max=MAX_TTL_S, help="Seconds until the token expires.")
    ] = 3600,
    name: Annotated[
        str | None,
        typer.Option(
            help="The printed name shown with this person's signatures (default: the subject)."
        ),
    ] = None,
) -> None:
    """Print a local-mode bearer token for the API (RADSENTRY_AUTH__MODE=local, the embedded
    default), signed with this data dir's secret. In oidc mode the identity provider issues
    tokens and this command refuses."""
    sites = site or []
    if role == [Role.SITE_MANAGER] and not sites:
        console.print("[red]error:[/red] a site manager needs at least one --site")
        raise typer.Exit(2)
    settings = load_settings()
    try:
        issued = issue_local_token(settings, subject, role, sites, ttl_s=ttl, name=name)
    except (LocalModeOnly, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    typer.echo(issued)
    console.print(
        f"token for {subject} ({', '.join(sorted(role))}), valid {ttl} s; send it as "
        "`Authorization: Bearer <token>`"
    )


@app.command()
def scheduler(
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="Serve this process's Prometheus metrics (retraining jobs, performance, audit "
            "chain) and its /healthz and /readyz probes on this port; 0: off.",
        ),
    ] = 9102,
) -> None:
    """Run the periodic jobs (performance refresh, retrain-trigger scan, retraining job,
    nightly drift reports) with APScheduler's job store in the database. Start one or more
    replicas: a PostgreSQL advisory lock lets one lead and the others stand by. Run
    `serve --no-jobs` beside it. SIGTERM or Ctrl-C: running jobs finish, the lock is
    released; exit 0."""
    from monitor.service.audit.config import record_config
    from monitor.service.audit.jobs import verify_change_log
    from monitor.service.lifecycle import GracefulStop
    from monitor.service.runtime import open_database

    settings = load_settings()
    with GracefulStop("scheduler") as stopping:
        with open_database(database_url(settings)) as engine:
            record_config(engine, settings, actor="radsentry-scheduler")
            # The audit gauges hold from the start, not from the first audit-verify run.
            verify_change_log(engine, settings)
        _run_scheduler(settings, stopping.requested, metrics_port)
    console.print("stopped cleanly")


def _run_scheduler(settings: Settings, stop: threading.Event, metrics_port: int) -> None:
    from monitor.service.health import Health, serve_probes
    from monitor.service.scheduler import default_jobs, run_scheduler

    jobs = default_jobs(
        settings.data_dir / "reports",
        refresh_s=settings.performance.refresh_s,
        retrain_scan_s=settings.retrain.scan_s,
        retrain_jobs_s=settings.retrain.jobs_s,
        checkpoint_hour=settings.audit.checkpoint_hour,
        gate_s=settings.pccp.gate_s,
        audit_verify_s=settings.audit.verify_s,
    )
    health = Health(settings.health.stale_after_s)
    probes = serve_probes(health, metrics_port, settings.api.host) if metrics_port else None
    console.print(f"scheduler: {', '.join(job.id for job in jobs)}", soft_wrap=True)
    try:
        run_scheduler(database_url(settings), stop, jobs, health=health)
    finally:
        if probes is not None:
            probes.shutdown()


for domain_app in (ingest_cli.app, demo_cli.app, backtest_cli.app, drift_cli.app, retrain_cli.app):
    app.add_typer(domain_app)
app.add_typer(audit_cli.app, name="audit")
app.add_typer(pccp_cli.app, name="pccp")
app.add_typer(performance_cli.app, name="performance")
app.add_typer(grafana_cli.app, name="dashboards")

if __name__ == "__main__":  # `python -m monitor.service.cli`, which pasteable_cli may print
    app()
