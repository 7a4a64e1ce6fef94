"""`radsentry consume` (the ingestion consumer) and `radsentry extract` (the edge extractor)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from monitor.service.runtime import (
    BrokerNotFound,
    console,
    database_url,
    edge_key,
    load_settings,
    open_database,
    require_bootstrap,
)

if TYPE_CHECKING:
    from monitor.service.ingest.edge import Extracted
    from monitor.service.settings import Settings

app = typer.Typer()
"""Top-level commands; the root CLI (``monitor/service/cli.py``) mounts them."""


@app.command()
def consume(
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="Serve this process's Prometheus metrics (ingestion, drift, consumer lag) "
            "and its /healthz and /readyz probes on this port; 0: off.",
        ),
    ] = 9101,
) -> None:
    """Run the ingestion consumer in the foreground until SIGTERM or Ctrl-C (the production
    process; scale out with one process per group of partitions). On either, the batch in
    hand is stored and committed, then the process exits 0."""
    from monitor.service.lifecycle import GracefulStop

    # Settings, the broker and the database first: a command that cannot start says so in a
    # second, before the drift engine (torch) and the consumer are imported.
    settings = load_settings()
    try:
        bootstrap = require_bootstrap(settings)
    except BrokerNotFound as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    # No record_config here: the consumer's role may not write the change log (docs/deploy.md,
    # "Database roles"). Its settings are the ones serve and the scheduler record at start.
    with (
        GracefulStop("consume") as stopping,
        open_database(database_url(settings), migrate=False) as engine,
    ):
        from monitor.service.drift.directions import RegistryDirections
        from monitor.service.drift.store import DriftMonitor, limit_torch_threads
        from monitor.service.health import Health, serve_probes
        from monitor.service.ingest.consumer import PRODUCER_CLOSE_S, Ingestor
        from monitor.service.kafka import make_consumer, make_producer
        from monitor.service.registry import registry_for

        limit_torch_threads()
        health = Health(settings.health.stale_after_s)
        probes = serve_probes(health, metrics_port, settings.api.host) if metrics_port else None
        kafka_consumer = make_consumer(bootstrap, settings.kafka)
        producer = make_producer(bootstrap, settings.kafka)
        try:
            directions = RegistryDirections(partial(registry_for, settings))
            drift = DriftMonitor(settings.drift, directions)
            ingestor = Ingestor(
                engine,
                kafka_consumer,
                producer,
                settings.kafka,
                drift,
                health,
                subgroup_fields=settings.performance.subgroup_fields,
            )
            stats = ingestor.run(stopping.requested)
        finally:
            if probes is not None:
                probes.shutdown()
            kafka_consumer.close(autocommit=False)
            producer.close(timeout=PRODUCER_CLOSE_S)
    console.print(
        f"stopped cleanly: {stats.stored} stored, {stats.duplicates} duplicates skipped, "
        f"{stats.dead_lettered} dead-lettered"
    )


@app.command()
def extract(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or directories (recursive).")],
    file_key: Annotated[
        bool,
        typer.Option(
            "--file-key",
            help="Add file_key to each line: a keyed hash of the file's path, to match lines to "
            "files (the path itself is never written).",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="NAME[@ALIAS|@VERSION]",
            help="Score and embed each image with this registered model version (default alias: "
            "champion) and the projection stored with it; write inference-event/v2 lines "
            "(site: RADSENTRY_EDGE__SITE_ID). Not with --file-key.",
        ),
    ] = None,
) -> None:
    """Extract the PHI-free features of DICOM files, one JSON line per file on stdout.

    Each line holds the study_key, modality, allowlisted metadata, pixel statistics and the
    text fields dropped as possible PHI (names and rules, never values), or the typed error for a
    file that cannot be used. With --model each line is an inference-event/v2 instead, with the
    model's scores and its embedding of the image. The study_key and file_key are keyed with
    the site secret (RADSENTRY_EDGE__HMAC_KEY). Exit status 1 when any file failed.
    """
    from monitor.service.ingest.edge import extract_paths

    settings = load_settings()
    failures = 0
    total = 0
    dropped: Counter[str] = Counter()
    results: Iterator[Extracted]
    if model is None:
        results = extract_paths(paths, edge_key(settings), file_keys=file_key)
    else:
        results = _event_lines(paths, settings, model, file_key)
    for result in results:
        typer.echo(result.line)
        total += 1
        failures += not result.ok
        dropped.update(list(result.phi_dropped))
    console.print(f"{total - failures} of {total} files extracted")
    if dropped:
        fields = ", ".join(f"{keyword} {count}" for keyword, count in sorted(dropped.items()))
        console.print(
            f"{dropped.total()} text fields dropped as possible PHI ({fields}); "
            "see docs/security.md, 'Edge: DICOM free text'",
            highlight=False,
            soft_wrap=True,
        )
    if failures:
        raise typer.Exit(1)


def _event_lines(
    paths: list[Path], settings: Settings, reference: str, file_key: bool
) -> Iterator[Extracted]:
    """`extract --model`'s lines, or exit 2 on a model that cannot be used."""
    from monitor.service.ingest.edge_events import EdgeModelError, event_lines, load_edge_model
    from monitor.service.registry import registry_for
    from retrain.embedding import EmbeddingError

    if file_key:
        console.print(
            "[red]error:[/red] --file-key does not go with --model (events have no file_key)"
        )
        raise typer.Exit(2)
    try:
        edge_model = load_edge_model(registry_for(settings), reference)
    except (EdgeModelError, EmbeddingError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    return event_lines(paths, edge_key(settings), settings.edge.site_id, edge_model)
