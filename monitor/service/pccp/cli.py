"""The `radsentry pccp` commands: check plans, and run the acceptance gate on candidates.

Approvals, rejections, promotion and rollback are deliberately not here: they are electronic
signatures of authenticated people, so they go through the API (``/candidates/...``) with a
bearer token, never through a command that anyone with database credentials could run.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from monitor.service.runtime import console, database_url, load_settings

app = typer.Typer(help="PCCP change control: check plans, evaluate candidates.")


@app.command("check")
def check() -> None:
    """Validate every plan in the plans folder and print what each governs."""
    from pccp.catalog import load_plans
    from pccp.plan import PlanError

    settings = load_settings()
    try:
        plans = load_plans(settings.plans_dir)
    except PlanError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    for found in plans:
        plan = found.plan
        console.print(
            f"{found.path.name}: {plan.plan_id} {plan.plan_version} governs "
            f"{plan.description.model_name} ({len(plan.protocol.performance_evaluation)} "
            f"criteria, fingerprint {plan.fingerprint()[:12]})",
            soft_wrap=True,
        )


@app.command("evaluate")
def evaluate(
    model: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    version: Annotated[str | None, typer.Option(help="Registered version to evaluate.")] = None,
    pending: Annotated[
        bool, typer.Option("--pending", help="Every candidate the gate has not evaluated.")
    ] = False,
) -> None:
    """Run the acceptance gate: the candidate and the champion on the locked test set, every
    criterion of the plan, the scope guard; the evidence goes to MLflow and the change log.
    A version that is not yet a candidate is proposed first (by the operator's login)."""
    from monitor.service.db import engine_scope
    from monitor.service.pccp import store as candidates_store
    from monitor.service.pccp.jobs import evaluate as run_gate
    from monitor.service.pccp.jobs import evaluate_pending, gate_context
    from monitor.service.registry import registry_for

    if pending == (model is not None or version is not None) or (model is None) != (
        version is None
    ):
        console.print("[red]error:[/red] give --model and --version, or --pending")
        raise typer.Exit(2)
    settings = load_settings()
    try:
        with engine_scope(database_url(settings)) as engine:
            context = gate_context(engine, settings, registry_for(settings))
            if pending:
                rows = evaluate_pending(context, limit=1000)
            else:
                assert model is not None and version is not None
                row = candidates_store.propose(
                    engine,
                    model_name=model,
                    model_version=version,
                    proposed_by=f"cli:{getpass.getuser()}",
                    reason="proposed for evaluation with `radsentry pccp evaluate`",
                )
                rows = [run_gate(context, row.candidate_id)]
    except Exception as exc:  # the CLI's boundary: say what failed, exit 1
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    for row in rows:
        failed = [c["id"] for c in (row.report or {}).get("criteria", []) if not c["passed"]]
        console.print(
            f"{row.model_name} version {row.model_version}: {row.status}"
            + (f" (failed: {', '.join(failed)})" if failed else ""),
            soft_wrap=True,
        )
