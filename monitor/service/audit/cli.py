"""`radsentry audit`: verify the change log's chain and checkpoints, sign its head, export it."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from monitor.service.audit import store as change_log
from monitor.service.db import engine_scope
from monitor.service.runtime import console, load_settings
from monitor.service.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


app = typer.Typer(help="The change log: verify its hash chain, export it for auditors.")


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


@app.command("verify")
def audit_verify(
    public_key: PublicKeyOption = None,
    allow_unanchored: Annotated[
        bool, typer.Option(help="Accept a log with no checkpoint yet (a new deployment).")
    ] = False,
) -> None:
    """Recompute the change log's hash chain, check its signed checkpoints, and compare them
    with their anchors outside the database (RADSENTRY_AUDIT__ANCHOR_DIR); exit 1 naming the
    first entry that does not match, or each checkpoint or anchor that does not hold, when the
    newest checkpoint is older than RADSENTRY_AUDIT__MAX_CHECKPOINT_AGE_H, or when there is no
    checkpoint at all (unless --allow-unanchored)."""
    from monitor.service.audit.anchors import problems_of
    from monitor.service.audit.signing import verify_checkpoints

    settings = load_settings()
    with engine_scope(settings.database_url) as engine:
        result = change_log.verify(engine)
        problems = verify_checkpoints(engine, _public_key(settings, public_key))
        problems += problems_of(
            engine, settings, allow_unanchored=allow_unanchored, now=datetime.now(UTC)
        )
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


@app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the change log's head now (Ed25519; the scheduler does it daily), anchor it outside
    the database (RADSENTRY_AUDIT__ANCHOR_DIR), and print the checkpoint as JSON."""
    from monitor.service.audit.anchors import sign_and_anchor
    from monitor.service.audit.signing import CheckpointError, signing_key

    settings = load_settings()
    key = signing_key(settings)
    try:
        with engine_scope(settings.database_url) as engine:
            signed = sign_and_anchor(engine, key, settings.audit_anchor_dir)
    except CheckpointError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if signed is None:
        console.print("nothing to sign: the log is empty or its head is already signed")
        return
    typer.echo(signed.to_json())


def _public_key(settings: Settings, path: Path | None) -> Ed25519PublicKey:
    from monitor.service.audit.signing import load_public_key, signing_key

    if path is not None:
        return load_public_key(path.read_bytes())
    return signing_key(settings).public_key()


@app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option(help="File to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="JSON lines or CSV.")] = (
        ExportFormat.JSON
    ),
) -> None:
    """Write the whole change log for auditors (JSON lines or CSV, hashes included)."""
    settings = load_settings()
    with engine_scope(settings.database_url) as engine:
        out.write_text(change_log.export(engine, fmt.value), encoding="utf-8")
    console.print(f"wrote the change log to {out}")
