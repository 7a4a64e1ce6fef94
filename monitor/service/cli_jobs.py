"""The retraining and audit commands of the `radsentry` CLI: retrain, train-initial,
scheduler, audit verify, audit export.

Registered on the app by ``cli.py`` (``register_job_commands``); kept apart so that each file
stays readable.
"""

from __future__ import annotations

import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from monitor.service import change_log
from monitor.service.cli_dashboards import dashboards_app
from monitor.service.cli_pccp import pccp_app
from monitor.service.config_log import record_config
from monitor.service.db import make_engine, upgrade
from monitor.service.health import Health, serve_probes
from monitor.service.runtime import load_settings
from monitor.service.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

console = Console(stderr=True)


audit_app = typer.Typer(help="The change log: verify its hash chain, export it for auditors.")


def register_job_commands(app: typer.Typer) -> None:
    """Add the retraining and audit commands to ``app``."""
    app.command()(retrain)
    app.command("train-initial")(train_initial)
    app.command()(scheduler)
    app.add_typer(audit_app, name="audit")
    app.add_typer(pccp_app, name="pccp")
    app.add_typer(dashboards_app, name="dashboards")


class ExportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


PublicKeyOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        help="PEM public key of the checkpoint signer (default: derived from the signing key).",
    ),
]


@audit_app.command("verify")
def audit_verify(public_key: PublicKeyOption = None) -> None:
    """Recompute the change log's hash chain and check its signed checkpoints; exit 1 naming
    the first entry that does not match or the checkpoint that does not hold."""
    from monitor.service.change_log_signing import verify_checkpoints

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        result = change_log.verify(engine)
        problems = verify_checkpoints(engine, _public_key(settings, public_key))
    finally:
        engine.dispose()
    if not result.ok:
        console.print(
            f"[red]change log broken at entry {result.first_bad_seq}:[/red] {result.problem} "
            f"({result.entries} entries before it verified)"
        )
        raise typer.Exit(1)
    if problems:
        console.print("[red]checkpoints:[/red] " + "; ".join(problems))
        raise typer.Exit(1)
    console.print(f"change log intact: {result.entries} entries, head {result.head_hash}")


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the change log's head now (Ed25519; the scheduler does it daily) and print the
    checkpoint as JSON."""
    from monitor.service.change_log_signing import CheckpointError, checkpoint, signing_key

    settings = load_settings()
    key = signing_key(settings)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        signed = checkpoint(engine, key)
    except CheckpointError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    if signed is None:
        console.print("nothing to sign: the log is empty or its head is already signed")
        return
    typer.echo(signed.to_json())


def _public_key(settings: Settings, path: Path | None) -> Ed25519PublicKey:
    from monitor.service.change_log_signing import load_public_key, signing_key

    if path is not None:
        return load_public_key(path.read_bytes())
    return signing_key(settings).public_key()


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option(help="File to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="JSON lines or CSV.")] = (
        ExportFormat.JSON
    ),
) -> None:
    """Write the whole change log for auditors (JSON lines or CSV, hashes included)."""
    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        out.write_text(change_log.export(engine, fmt.value), encoding="utf-8")
    finally:
        engine.dispose()
    console.print(f"wrote the change log to {out}")


def retrain(
    model: Annotated[str, typer.Option(help="Registered model name, e.g. cxr-lesion.")],
    requested_by: Annotated[str, typer.Option("--by", help="Who asks (recorded).")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")],
) -> None:
    """Request a retrain of MODEL (recorded with who and why, like POST /models/{name}/retrain);
    the retraining job serves pending requests. Which model serves does not change."""
    from monitor.service.retrain_store import request_manual

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        row = request_manual(engine, model, requested_by, reason)
    finally:
        engine.dispose()
    console.print(f"retrain request {row.request_id} for {model}: {row.status}", soft_wrap=True)


def train_initial(
    seed: Annotated[int, typer.Option(min=0, help="Seed of the synthetic cohort.")] = 0,
    sites: Annotated[int, typer.Option(min=1, max=99, help="Pre-deployment sites.")] = 3,
    studies: Annotated[int, typer.Option(min=2, help="Development studies per site.")] = 500,
    test_studies: Annotated[int, typer.Option(min=0, help="Held-out studies per site.")] = 100,
    epochs: Annotated[int | None, typer.Option(min=1, help="Most epochs (default 30).")] = None,
) -> None:
    """Train the initial model (v1) on a synthetic pre-deployment cohort, log it to MLflow and
    make it the champion; from then on `simulate` and `demo` score with it. Refused when the
    model already has a champion (only a PCCP promotion replaces one)."""
    from monitor.service.registry import ChampionExists, record_initial, register_initial
    from retrain.initial import InitialConfig

    settings = load_settings()
    config = InitialConfig(
        seed=seed, sites=sites, studies_per_site=studies, test_studies_per_site=test_studies
    )
    if epochs is not None:
        config = config.model_copy(
            update={"train": config.train.model_copy(update={"max_epochs": epochs})}
        )
    console.print(f"rendering {sites} sites x {studies + test_studies} studies and training")
    try:
        registered = register_initial(settings, config)
    except ChampionExists as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        record_initial(engine, registered)
    finally:
        engine.dispose()
    result = registered.model.result
    console.print(
        f"{config.model_name} version {registered.version.version} is the champion "
        f"(run {registered.version.run_id}; best epoch {result.best_epoch} of "
        f"{len(result.history)}; {settings.mlflow_tracking_uri})",
        soft_wrap=True,
    )
    if (test := registered.model.test) is not None and test.auroc is not None:
        console.print(f"held-out AUROC {test.auroc:.3f} on {test.cases} studies")


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
    `serve --no-jobs` beside it."""
    from monitor.service.scheduler import default_jobs, run_scheduler

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        record_config(engine, settings, actor="radsentry-scheduler")
    finally:
        engine.dispose()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
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
        run_scheduler(settings.database_url, stop, jobs, health=health)
    finally:
        if probes is not None:
            probes.shutdown()
