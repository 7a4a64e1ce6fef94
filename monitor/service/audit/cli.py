"""`radsentry audit`: verify the change log's chain and checkpoints, sign its head, export it.

``verify`` and ``export`` only read: they create no database, schema or key
(:func:`~monitor.service.runtime.open_existing_database`). The database layer is imported in
the commands, not here (docs/benchmarks.md, "CLI start").
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from monitor.service.runtime import (
    console,
    database_url,
    existing_database_url,
    load_settings,
    open_existing_database,
)

app = typer.Typer(help="The change log: verify its hash chain, export it for auditors.")


class ExportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


PublicKeyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        exists=True,
        dir_okay=False,
        help="Trust only this PEM public key (repeat for keys before a rotation); default: "
        "the signing key's and RADSENTRY_AUDIT__TRUSTED_PUBLIC_KEYS.",
    ),
]


@app.command("verify")
def audit_verify(
    public_key: PublicKeyOption = None,
    allow_unanchored: Annotated[
        bool, typer.Option(help="Accept a log with no checkpoint yet (a new deployment).")
    ] = False,
) -> None:
    """Recompute the change log's hash chain, check every entry's signature and the signed
    checkpoints with public keys only, and compare the checkpoints with their anchors outside
    the database (RADSENTRY_AUDIT__ANCHOR_DIR); exit 1 naming the first entry that does not
    hold (unsigned, forged, or not matching its hash), or each checkpoint or anchor that does
    not, when the newest checkpoint is older than RADSENTRY_AUDIT__MAX_CHECKPOINT_AGE_H, or
    when there is no checkpoint at all (unless --allow-unanchored)."""
    from monitor.service.audit import store as change_log
    from monitor.service.audit.anchors import problems_of
    from monitor.service.audit.keys import SigningKeyError, keyring, load_public_key, trusted_keys
    from monitor.service.audit.signing import checkpoints, verify_checkpoints

    settings = load_settings()
    try:
        trusted = (
            keyring(*(load_public_key(path.read_bytes()) for path in public_key))
            if public_key
            else trusted_keys(settings)
        )
    except SigningKeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with open_existing_database(existing_database_url(settings)) as engine:
        result = change_log.verify(engine, trusted)
        problems = verify_checkpoints(engine, trusted)
        problems += problems_of(
            engine, settings, allow_unanchored=allow_unanchored, now=datetime.now(UTC)
        )
        covering = [p.seq for p in checkpoints(engine) if p.seq >= result.unsigned_through]
    if not result.ok:
        console.print(f"[red]{result.summary()}[/red]")
        raise typer.Exit(1)
    if problems:
        console.print("[red]checkpoints:[/red] " + "; ".join(problems))
        raise typer.Exit(1)
    console.print(result.summary())
    if result.unsigned_through:
        console.print(
            f"the unsigned entries are covered by signed checkpoint {covering[0]}"
            if covering
            else "the unsigned entries are not covered by a signed checkpoint yet "
            "(`radsentry audit checkpoint`)"
        )


@app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the change log's head now (Ed25519; the scheduler does it daily), anchor it outside
    the database (RADSENTRY_AUDIT__ANCHOR_DIR), and print the checkpoint as JSON."""
    from monitor.service.audit.anchors import sign_and_anchor
    from monitor.service.audit.keys import SigningKeyError, keyring, signing_key, trusted_keys
    from monitor.service.audit.signing import CheckpointError
    from monitor.service.db import engine_scope

    settings = load_settings()
    try:
        key = signing_key(settings)
        trusted = {**trusted_keys(settings), **keyring(key.public_key())}
        with engine_scope(database_url(settings)) as engine:
            signed = sign_and_anchor(engine, key, settings.audit_anchor_dir, trusted)
    except (CheckpointError, SigningKeyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if signed is None:
        console.print("nothing to sign: the log is empty or its head is already signed")
        return
    typer.echo(signed.to_json())


@app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option(help="File to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="JSON lines or CSV.")] = (
        ExportFormat.JSON
    ),
) -> None:
    """Write the whole change log for auditors (JSON lines or CSV, hashes, key ids and
    signatures included)."""
    from monitor.service.audit import store as change_log

    settings = load_settings()
    with open_existing_database(existing_database_url(settings)) as engine:
        out.write_text(change_log.export(engine, fmt.value), encoding="utf-8")
    console.print(f"wrote the change log to {out}")
