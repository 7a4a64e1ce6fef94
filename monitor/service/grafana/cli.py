"""The `radsentry dashboards` commands: write the Grafana dashboards' JSON, or push them into
a running Grafana (docs/dashboards.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dashboards import FOLDER
from monitor.service.runtime import console

app = typer.Typer(help="Grafana dashboards: export their JSON, push them to Grafana.")


@app.command("export")
def export(
    out: Annotated[Path, typer.Option(file_okay=False, help="Folder for <uid>.json files.")],
) -> None:
    """Build every dashboard and write it as <uid>.json (what Grafana's file provisioning
    mounts; `make dashboards` writes dashboards/generated/ this way)."""
    from dashboards.build import write_all

    for path in write_all(out):
        console.print(f"wrote {path}", soft_wrap=True)


@app.command("push")
def push(
    url: Annotated[str, typer.Option(help="Grafana's base URL, e.g. https://grafana.example.org")],
    token_env: Annotated[
        str,
        typer.Option(
            help="Name of the environment variable holding a service-account token "
            "(Editor rights on the folder); the token never goes on the command line."
        ),
    ],
    folder: Annotated[str, typer.Option(help="Folder title (created when missing).")] = FOLDER,
) -> None:
    """Upsert every dashboard into Grafana: same uids, overwrite, into FOLDER. Safe to rerun."""
    from dashboards.build import build_all
    from monitor.service.grafana.push import (
        GrafanaPushError,
        GrafanaTokenRefused,
        GrafanaUnreachable,
        push_dashboards,
    )

    token = os.environ.get(token_env, "")
    if not token:
        console.print(f"[red]error:[/red] environment variable {token_env} is not set or empty")
        raise typer.Exit(2)
    try:
        result = push_dashboards(url, token, build_all(), folder)
    except GrafanaUnreachable as exc:
        console.print(f"[red]error:[/red] Grafana at {url} is unreachable: {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    except GrafanaTokenRefused as exc:
        console.print(
            f"[red]error:[/red] Grafana refused the token in {token_env} (HTTP {exc.status})",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except GrafanaPushError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    verb = "created" if result.folder_created else "found"
    console.print(f"folder {folder!r} {verb} (uid {result.folder_uid})", soft_wrap=True)
    for uid in result.dashboards:
        console.print(f"saved {uid}", soft_wrap=True)
