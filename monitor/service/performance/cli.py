"""`radsentry performance`: check the sufficient statistics against the raw rows, rebuild them.

The database layer is imported in the commands, not here (docs/benchmarks.md, "CLI start").
"""

from __future__ import annotations

from typing import Annotated

import typer

from monitor.service.runtime import (
    EXIT_SETTINGS,
    console,
    existing_database_url,
    fail,
    load_settings,
    open_existing_database,
    open_owner_database,
)

app = typer.Typer(
    help="The performance statistics: verify them against the raw rows, rebuild them."
)


@app.command("verify")
def performance_verify() -> None:
    """Recompute every cumulative window (site, model, version, finding) from the raw rows and
    compare counts, confusion matrix and score histograms with the stored statistics, as the
    daily `performance-verify` job does; exit 1 naming each window that differs. Reads only:
    creates nothing."""
    from monitor.service.performance.maintenance import mismatches

    settings = load_settings()
    with open_existing_database(existing_database_url(settings)) as engine:
        found = mismatches(engine)
    for problem in found.problems:
        site_id, model_name, version = problem.stream
        console.print(
            f"[red]differs:[/red] {site_id} {model_name} {version} {problem.finding}: "
            f"{problem.what}",
            soft_wrap=True,
        )
    if found.problems:
        console.print(
            f"{found.mismatched} of {found.windows} windows differ from the raw rows; "
            "`radsentry performance rebuild` counts them again from the raw rows",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(f"{found.windows} windows equal the raw rows")


@app.command("rebuild")
def performance_rebuild(
    yes: Annotated[
        bool, typer.Option("--yes", help="Rebuild without asking (scripts, Kubernetes jobs).")
    ] = False,
) -> None:
    """Replace every performance statistics row with one counted from the raw rows (labelled
    predictions, prediction counts, label delays), under the subgroup fields configured now,
    in one transaction: after `performance verify` reports a difference, or to count past
    cases under a subgroup field just added to RADSENTRY_PERFORMANCE__SUBGROUP_FIELDS.
    Consumers wait for the commit; the API and the refresh read the old rows until then.
    Connects as the schema's owner (RADSENTRY_DATABASE__MIGRATION_URL, else
    RADSENTRY_DATABASE__URL). The next refresh recomputes the snapshots."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import DBAPIError

    from monitor.service.db import INSUFFICIENT_PRIVILEGE
    from monitor.service.performance.maintenance import rebuild_all

    settings = load_settings()
    fields = settings.performance.subgroup_fields
    if not yes:
        typer.confirm(
            "Replace every performance statistics row with a recount of the raw rows "
            f"(subgroup fields: {', '.join(fields) or 'none'})?",
            abort=True,
        )
    with open_owner_database(settings) as engine:
        try:
            cases = rebuild_all(engine, fields, datetime.now(UTC))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                raise
            fail(
                exc,
                [
                    f"{engine.url.username} may not rewrite the performance statistics "
                    f"({str(exc.orig).splitlines()[0]}): nothing was changed; run the rebuild "
                    "as the schema's owner (RADSENTRY_DATABASE__MIGRATION_URL)"
                ],
                EXIT_SETTINGS,
            )
    console.print(
        f"performance statistics rebuilt from the raw rows: {cases} labelled cases counted "
        f"(subgroup fields: {', '.join(fields) or 'none'})",
        soft_wrap=True,
    )
