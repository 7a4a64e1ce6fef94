"""Running the simulator against a broker or into a file (``simulate`` and ``demo``), scored
by the registry's champion when it has one."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from monitor.events import Event, to_json
from monitor.service.errors import NotFound
from monitor.service.kafka import make_producer
from monitor.service.publish import publish
from monitor.service.registry import registry_for
from monitor.service.settings import Settings
from monitor.simulate import SimulationConfig, simulate
from monitor.simulate.stream import StudyEmbedder, StudyScorer
from retrain.mlflow_names import CHAMPION

if TYPE_CHECKING:
    from monitor.simulate.model_scores import TrainedModelEmbedder, TrainedModelScorer

ScoresChoice = Literal["auto", "champion", "score-model"]


class NoChampion(NotFound):
    """``--scores champion`` was asked for and the registry has none."""


def output_dir(settings: Settings, seed: int) -> Path:
    """Where the synthetic DICOM files go: one folder per run, named by its seed."""
    return settings.data_dir / "simulated" / f"seed-{seed}"


def publish_simulation(
    settings: Settings,
    config: SimulationConfig,
    bootstrap: list[str],
    *,
    rate: float | None = None,
    stop: threading.Event | None = None,
    scorer: StudyScorer | None = None,
    embedder: StudyEmbedder | None = None,
) -> int:
    """Render, extract, score (``scorer``, or the score model), embed (``embedder``, if given:
    inference-event/v2) and publish every simulated event; returns how many were sent."""
    producer = make_producer(bootstrap, settings.kafka)
    try:
        events = simulate(config, output_dir(settings, config.seed), scorer, embedder)
        return publish(producer, events, settings.kafka, rate=rate, stop=stop)
    finally:
        producer.close()


def write_jsonl(events: Iterable[Event], path: Path) -> int:
    """Write events one JSON per line (the input format of backtests)."""
    written = 0
    with path.open("wb") as out:
        for event in events:
            out.write(to_json(event) + b"\n")
            written += 1
    return written


def champion_scorer(
    settings: Settings, model_name: str, choice: ScoresChoice = "auto"
) -> TrainedModelScorer | None:
    """The scorer the simulator should use: the champion's model, or None for the score model.

    ``auto`` uses the champion when the registry has one (an embedded store that was never
    created is not created just to look); ``champion`` insists; ``score-model`` never looks.
    """
    if choice == "score-model":
        return None
    embedded = settings.mlflow.tracking_uri is None
    if choice == "auto" and embedded and not (settings.data_dir / "mlflow.db").exists():
        return None
    from monitor.simulate.model_scores import TrainedModelScorer

    registry = registry_for(settings)
    version = registry.version_by_alias(model_name, CHAMPION)
    if version is None:
        if choice == "champion":
            raise NoChampion(f"{model_name} has no champion; run `radsentry train-initial`")
        return None
    return TrainedModelScorer(registry.load_model(model_name, version.version), version.version)


def champion_embedder(settings: Settings, model_name: str) -> TrainedModelEmbedder:
    """The champion's model and projection as the simulator's embedder (``simulate
    --embeddings``); NoChampion when there is no champion or it has no projection."""
    from monitor.simulate.model_scores import TrainedModelEmbedder
    from retrain.tracking import TrackingError

    registry = registry_for(settings)
    version = registry.version_by_alias(model_name, CHAMPION)
    if version is None:
        raise NoChampion(f"{model_name} has no champion; run `radsentry train-initial`")
    try:
        projection = registry.load_projection(model_name, version.version)
    except TrackingError as exc:
        raise NoChampion(str(exc)) from None
    trained = registry.load_model(model_name, version.version)
    return TrainedModelEmbedder(trained, projection, model_name, version.version)
