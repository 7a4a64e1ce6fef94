"""`radsentry report`: a site's drift report as an HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monitor.service.runtime import console, database_url, load_settings

app = typer.Typer()
"""Top-level commands; the root CLI (``monitor/service/cli.py``) mounts them."""


@app.command()
def report(
    site: Annotated[str, typer.Option(help="Site whose drift report to build.")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="Where to write the HTML page.")],
    model_name: Annotated[str | None, typer.Option(help="Model (default: latest updated).")] = None,
    model_version: Annotated[str | None, typer.Option(help="Model version.")] = None,
    evidently: Annotated[
        bool, typer.Option(help="Write the Evidently appendix instead of the site drift page.")
    ] = False,
) -> None:
    """Write a site's drift page (what changed, since when, how sure: the page
    `GET /sites/{site_id}/drift-report` serves) or, with --evidently, its Evidently appendix
    (`GET /sites/{site_id}/report`), from the configured database."""
    from monitor.service.db import engine_scope
    from monitor.service.drift.site_page import page_html
    from monitor.service.drift.site_report import site_report
    from monitor.service.drift.streams import StreamNotFound

    settings = load_settings()
    try:
        with engine_scope(database_url(settings), migrate=False) as engine:
            if evidently:
                key, html = site_report(
                    engine, settings.drift, site, model_name=model_name, model_version=model_version
                )
                what = f"the Evidently drift report of {key}"
            else:
                html = page_html(
                    engine, settings.drift, site, model_name=model_name, model_version=model_version
                )
                what = f"the drift page of {site}"
    except StreamNotFound as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out.write_text(html, encoding="utf-8")
    console.print(f"wrote {what} to {out}", soft_wrap=True)
