"""`radsentry report`: a site's drift report as an HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monitor.service.runtime import console, load_settings

app = typer.Typer()
"""Top-level commands; the root CLI (``monitor/service/cli.py``) mounts them."""


@app.command()
def report(
    site: Annotated[str, typer.Option(help="Site whose drift report to build.")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="Where to write the HTML page.")],
    model_name: Annotated[str | None, typer.Option(help="Model (default: latest updated).")] = None,
    model_version: Annotated[str | None, typer.Option(help="Model version.")] = None,
) -> None:
    """Write a site's Evidently drift report (reference vs its latest window of events), the
    page `GET /sites/{site_id}/report` serves, from the configured database."""
    from monitor.service.db import engine_scope
    from monitor.service.drift.site_report import site_report
    from monitor.service.drift.streams import StreamNotFound

    settings = load_settings()
    try:
        with engine_scope(settings.database_url, migrate=False) as engine:
            key, html = site_report(
                engine, settings.drift, site, model_name=model_name, model_version=model_version
            )
    except StreamNotFound as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out.write_text(html, encoding="utf-8")
    console.print(f"wrote the drift report of {key} to {out}", soft_wrap=True)
