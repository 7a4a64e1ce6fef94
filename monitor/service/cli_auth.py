"""`radsentry token`: a bearer token for the HTTP API in local mode (docs/security.md).

Registered on the app by ``cli.py`` (``register_auth_commands``).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from monitor.service.auth import LocalModeOnly, Role, issue_local_token
from monitor.service.runtime import load_settings

console = Console(stderr=True)

MAX_TTL_S = 30 * 24 * 3600


def register_auth_commands(app: typer.Typer) -> None:
    """Add the token command to ``app``."""
    app.command()(token)


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
        issued = issue_local_token(settings, subject, role, sites, ttl_s=ttl)
    except LocalModeOnly as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    typer.echo(issued)
    console.print(
        f"token for {subject} ({', '.join(sorted(role))}), valid {ttl} s; send it as "
        "`Authorization: Bearer <token>`"
    )
