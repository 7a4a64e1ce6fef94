"""`radsentry simulate` (synthetic multi-site studies) and `radsentry demo` (the whole loop)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from monitor.events import describe_errors
from monitor.service.demo.stages import Stage
from monitor.service.runtime import (
    BrokerNotFound,
    console,
    exit_process,
    load_settings,
    require_bootstrap,
    terminal_foreground,
)
from monitor.service.settings import Settings

if TYPE_CHECKING:
    from monitor.simulate import SimulationConfig
    from monitor.simulate.stream import StudyEmbedder, StudyScorer


app = typer.Typer()
"""Top-level commands; the root CLI (``monitor/service/cli.py``) mounts them."""


SitesOption = Annotated[int, typer.Option(min=1, max=99, help="Number of simulated sites.")]


StudiesOption = Annotated[int, typer.Option(min=1, help="Studies per site.")]


SeedOption = Annotated[
    int | None, typer.Option(help="Seed; the same seed and --start give identical events.")
]


ChangeSiteOption = Annotated[
    str | None, typer.Option(help="Site that switches to a degraded scanner, e.g. site-02.")
]


ChangeAtOption = Annotated[
    int | None, typer.Option(help="Study index at that site from which the new scanner is used.")
]


ChangeFromOption = Annotated[
    datetime | None,
    typer.Option(help="Or: event time (UTC) from which that site uses the new scanner."),
]


ContentShiftOption = Annotated[
    list[str] | None,
    typer.Option(
        help="A content shift KIND:SITE[:FROM_INDEX[:SHARE]] (kinds: lateral, paediatric, "
        "harder, positioning, scanner; default from study 0, share 0.3), e.g. "
        "lateral:site-02:150:0.3; repeatable (docs/simulate.md).",
    ),
]


class Scores(StrEnum):
    AUTO = "auto"
    CHAMPION = "champion"
    SCORE_MODEL = "score-model"


ScoresOption = Annotated[
    Scores,
    typer.Option(
        help="Where the events' scores come from: the registry's champion if there is one "
        "(auto), the champion or an error, or the parametric score model.",
    ),
]


def _scorer(settings: Settings, scores: Scores, model_name: str) -> StudyScorer | None:
    from monitor.service.demo.simulation import NoChampion, champion_scorer

    try:
        scorer = champion_scorer(settings, model_name, scores.value)
    except NoChampion as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if scorer is not None:
        console.print(f"scores from {model_name} version {scorer.version} (champion)")
    return scorer


def _embedder(settings: Settings, model_name: str) -> StudyEmbedder:
    from monitor.service.demo.simulation import NoChampion, champion_embedder

    try:
        embedder = champion_embedder(settings, model_name)
    except NoChampion as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"embeddings from {embedder.embedding_id}", highlight=False)
    return embedder


def _simulation_config(
    sites: int,
    studies: int,
    seed: int | None,
    change_site: str | None,
    change_at: int | None,
    start: datetime | None,
    change_from: datetime | None = None,
    content_shifts: list[str] | None = None,
) -> SimulationConfig:
    from monitor.simulate import SimulationConfig  # pydicom: not at `radsentry --help`
    from monitor.simulate.content import parse_content_shift

    if change_at is not None and change_from is not None:
        raise typer.BadParameter("give --change-at or --change-from, not both")
    now = datetime.now(UTC).replace(microsecond=0)
    schedule = {
        "seed": seed if seed is not None else secrets.randbelow(2**31),
        "sites": sites,
        "studies_per_site": studies,
        "start": _as_utc(start or now),
    }
    try:
        if content_shifts:
            schedule["content_shifts"] = tuple(map(parse_content_shift, content_shifts))
        config = SimulationConfig.model_validate(schedule)
        if start is None:
            # Without --start the stream ends now: a "live" simulation is never dated in the
            # future (the label of the last study comes days after it).
            config = config.ending_at(now)
            schedule["start"] = config.start
        if change_site in config.site_ids() and change_from is not None:
            change_at = config.first_index_at(change_site, _as_utc(change_from))
        if change_site is not None or change_at is not None:
            change = {"change_site": change_site, "change_at_index": change_at}
            config = SimulationConfig.model_validate(schedule | change)
    except ValidationError as exc:
        raise typer.BadParameter(describe_errors(exc)) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return config


def _as_utc(moment: datetime) -> datetime:
    # A time given without an offset on the command line is taken as UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@app.command()
def simulate(
    sites: SitesOption = 3,
    studies: StudiesOption = 200,
    seed: SeedOption = None,
    change_site: ChangeSiteOption = None,
    change_at: ChangeAtOption = None,
    change_from: ChangeFromOption = None,
    content_shift: ContentShiftOption = None,
    start: Annotated[
        datetime | None,
        typer.Option(help="Event time of the first studies (default: the stream ends now)."),
    ] = None,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 0,
    jsonl: Annotated[
        Path | None, typer.Option(help="Write the events to this file instead of Kafka.")
    ] = None,
    scores: ScoresOption = Scores.AUTO,
    embeddings: Annotated[
        bool,
        typer.Option(
            help="Emit inference-event/v2 with each image's embedding by the champion and its "
            "stored projection (needs a champion that has one)."
        ),
    ] = False,
) -> None:
    """Write synthetic DICOM studies for N sites, extract them at the 'edge', score them and
    publish their inference events and delayed label events (see docs/simulate.md)."""
    from monitor.service.demo.simulation import output_dir, publish_simulation, write_jsonl
    from monitor.simulate import simulate as simulated_events

    settings = load_settings()
    config = _simulation_config(
        sites, studies, seed, change_site, change_at, start, change_from, content_shift
    )
    scorer = _scorer(settings, scores, config.model_name)
    embedder = _embedder(settings, config.model_name) if embeddings else None
    console.print(f"simulating {sites} sites x {studies} studies, seed {config.seed}")
    if jsonl is not None:
        events = simulated_events(config, output_dir(settings, config.seed), scorer, embedder)
        written = write_jsonl(events, jsonl)
        console.print(f"wrote {written} events to {jsonl}")
        return
    try:
        bootstrap = require_bootstrap(settings)
    except BrokerNotFound as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sent = publish_simulation(
        settings, config, bootstrap, rate=rate or None, scorer=scorer, embedder=embedder
    )
    console.print(f"published {sent} events to {','.join(bootstrap)}")


@app.command()
def demo(
    sites: SitesOption = 3,
    studies: StudiesOption = 300,
    seed: SeedOption = None,
    change_site: ChangeSiteOption = "site-02",
    change_at: ChangeAtOption = 150,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 50,
    port: Annotated[int | None, typer.Option(help="API port (default from settings).")] = None,
    until: Annotated[
        Stage | None,
        typer.Option(
            help="Stop after this stage and exit (headless runs); default: every "
            "stage, then keep serving until Ctrl-C."
        ),
    ] = None,
    exit_when_done: Annotated[
        bool, typer.Option(help="Same as --until stream (the stream alone, then exit).")
    ] = False,
    scores: ScoresOption = Scores.AUTO,
    fresh: Annotated[
        bool,
        typer.Option(
            help="Start over: delete what earlier demo runs stored (the database's tables, the "
            "embedded MLflow store, the simulated studies) instead of resuming."
        ),
    ] = False,
) -> None:
    """The whole loop on one machine (bundled broker, embedded PostgreSQL, local MLflow): the
    initial model, simulated sites with a scanner change at one of them, drift and performance
    alerts, a retrain, the candidate in MLflow, the PCCP gate, then waiting for two approvals.
    Ctrl-C stops everything (exit status 0). Run again, it resumes where the previous run stopped
    (same options), or starts over with --fresh."""
    # Ctrl-C reaches the demo alone, not make around it (terminal_foreground); before
    # run_demo's own stop handling is set up, it is a KeyboardInterrupt. Either way: status 0.
    with terminal_foreground():
        try:
            from monitor.service.demo.run import DEMO_SEED, run_demo
            from retrain.initial import InitialConfig

            settings = load_settings()
            config = _simulation_config(
                sites, studies, DEMO_SEED if seed is None else seed, change_site, change_at, None
            )
            # The deployed population is the development cohort's (same prevalence): only the
            # scanner changes, the story the demo tells and the shift retraining can repair.
            config = config.model_copy(update={"prevalence": InitialConfig().prevalence})
            code = run_demo(
                settings,
                config,
                rate=rate or None,
                port=port,
                until=Stage.STREAM if exit_when_done else until,
                scores=scores.value,
                fresh=fresh,
            )
        except KeyboardInterrupt:
            console.print("stopped (Ctrl-C)")
            code = 0
    exit_process(code)
