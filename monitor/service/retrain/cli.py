"""`radsentry retrain` (a retrain request) and `radsentry train-initial` (the initial champion)."""

from __future__ import annotations

from typing import Annotated

import typer

from monitor.service.runtime import console, database_url, load_settings

app = typer.Typer()
"""Top-level commands; the root CLI (``monitor/service/cli.py``) mounts them."""


@app.command()
def retrain(
    model: Annotated[str, typer.Option(help="Registered model name, e.g. cxr-lesion.")],
    requested_by: Annotated[
        str, typer.Option("--by", help="Who asks (recorded as claimed: nothing verifies it).")
    ],
    reason: Annotated[str, typer.Option(help="Why (recorded).")],
) -> None:
    """Request a retrain of MODEL (recorded with who and why, like POST /models/{name}/retrain);
    the retraining job serves pending requests. Which model serves does not change. The --by
    name is recorded as claimed, not verified: it may not approve the result, and it signs
    nothing (signatures go through the API with a token)."""
    from monitor.service.db import engine_scope
    from monitor.service.retrain.store import request_manual
    from pccp.lifecycle import normalised_subject

    try:
        requested_by = normalised_subject(requested_by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from None
    settings = load_settings()
    with engine_scope(database_url(settings)) as engine:
        row = request_manual(engine, model, requested_by, reason, identity="claimed")
    console.print(f"retrain request {row.request_id} for {model}: {row.status}", soft_wrap=True)


@app.command("train-initial")
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
    from monitor.service.db import engine_scope
    from monitor.service.retrain.initial import ChampionExists, record_initial, register_initial
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
    with engine_scope(database_url(settings)) as engine:
        record_initial(engine, registered)
    result = registered.model.result
    console.print(
        f"{config.model_name} version {registered.version.version} is the champion "
        f"(run {registered.version.run_id}; best epoch {result.best_epoch} of "
        f"{len(result.history)}; {settings.mlflow_tracking_uri})",
        soft_wrap=True,
    )
    if (test := registered.model.test) is not None and test.auroc is not None:
        console.print(f"held-out AUROC {test.auroc:.3f} on {test.cases} studies")
