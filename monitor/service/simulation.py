"""Running the simulator against a broker or into a file (``simulate`` and ``demo``)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from monitor.events import Event, to_json
from monitor.service.kafka import make_producer
from monitor.service.publish import publish
from monitor.service.settings import Settings
from monitor.simulate import SimulationConfig, simulate
from monitor.simulate.stream import StudyScorer


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
) -> int:
    """Render, extract, score (``scorer``, or the score model) and publish every simulated
    event; returns how many were sent."""
    producer = make_producer(bootstrap, settings.kafka)
    try:
        events = simulate(config, output_dir(settings, config.seed), scorer)
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
