"""`radsentry backtest`: replay history through the drift engine (and, with labels, the tracker)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monitor.service.logging import warnings_only
from monitor.service.runtime import console, load_settings

app = typer.Typer()
"""Top-level commands; the root CLI (``monitor/service/cli.py``) mounts them."""


@app.command()
def backtest(
    events: Annotated[
        Path,
        typer.Option(
            exists=True, dir_okay=False, help="inference-event/v1 lines (JSONL, may be gzipped)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the alerts, one JSON per line.")],
    reference: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Events to use as the reference of each (site, model, version) in them; other "
            "streams start from their first events.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="EngineConfig as JSON or YAML."),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Stop with exit status 1 at the first invalid line.")
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="label-event/v1 lines: also track performance (RADSENTRY_PERFORMANCE__*) and "
            "write performance alerts.",
        ),
    ] = None,
) -> None:
    """Replay a file of inference events through the drift engine, in event-time order, and
    write the alerts it raises (see docs/drift.md#backtest). Invalid lines are reported by line
    number and skipped; the exit status stays 0 unless --strict."""
    if labels is not None:
        _backtest_with_labels(events, labels, out, reference, config, strict)
        return
    from monitor.service.backtest.replay import (
        BacktestError,
        freeze_start_up_objects,
        load_config,
        print_summary,
        rich_progress,
        run_backtest,
    )
    from monitor.service.drift.store import limit_torch_threads

    limit_torch_threads()  # as the consumer: small kernels, no thread contention
    freeze_start_up_objects()
    try:
        engine_config = load_config(config)
        console.print(f"config fingerprint {engine_config.fingerprint()}", soft_wrap=True)
        with rich_progress(console) as progress:
            summary = run_backtest(
                events,
                out,
                config=engine_config,
                reference_path=reference,
                strict=strict,
                on_progress=progress,
            )
    except (BacktestError, OSError, EOFError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    print_summary(console, summary)
    console.print(f"wrote {summary.alerts} alerts to {out}", soft_wrap=True)


def _backtest_with_labels(
    events: Path, labels: Path, out: Path, reference: Path | None, config: Path | None, strict: bool
) -> None:
    """The replay with labels: a progress bar instead of the service's INFO lines (an alert or
    refresh each), then the performance alerts' table and the totals."""
    from monitor.service.backtest.labels import run_backtest_with_labels, summary_tables
    from monitor.service.backtest.replay import (
        BacktestError,
        freeze_start_up_objects,
        load_config,
        rich_progress,
    )
    from monitor.service.drift.store import limit_torch_threads

    limit_torch_threads()
    performance = load_settings().performance  # configures logging: before it is quietened
    freeze_start_up_objects()
    try:
        engine_config = load_config(config)
        console.print(f"config fingerprint {engine_config.fingerprint()}", soft_wrap=True)
        with warnings_only(), rich_progress(console) as progress:
            summary = run_backtest_with_labels(
                events,
                labels,
                out,
                config=engine_config,
                performance=performance,
                reference_path=reference,
                strict=strict,
                on_progress=progress,
            )
    except (BacktestError, OSError, EOFError) as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(*summary_tables(summary))
    console.print(f"wrote {summary.alerts} alerts to {out}", soft_wrap=True)
