"""The embedding detector's cost per window against the pixel-statistic MMD, as the engine runs it.

Both with the service defaults (``DetectorSet``: ``max_reference=500``, 100 permutations):

(a) ``mmd`` on the pixel statistics (``PIXEL_STAT_NAMES``, 20 columns);
(b) ``embedding_mmd`` on a 16-component embedding (the projection's default width), scored with
    three known directions (the alignment adds a mean and three dot products);
(c) ``embedding_mmd`` on the 32-component maximum.

Reference 1000 rows (subsampled to 500 for the kernel test) and windows of 100 and 500 rows of
standard-normal values, float64 on the CPU, one torch thread (the consumer's setting). Each
``score`` is timed ``--repeat`` times after one warm-up; the median is printed, with ``fit``.

Then the whole engine (``EngineConfig`` defaults by count: reference 1000, windows of 100, the
online detector off): the same simulated stream as v1 events and as v2 events with a
16-component embedding, the time per window after the reference froze (every window detector
plus the per-event work of 100 events), median over the stream's 20 windows.

    .venv/bin/python -m benchmarks.bench_embedding_mmd --repeat 15
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import torch

from monitor.drift.base import FeatureMatrix
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.drift.directions import Direction, fit_direction
from monitor.drift.embedding_mmd import EmbeddingMMDDetector
from monitor.drift.engine import DriftEngine
from monitor.drift.mmd import MMDDetector
from monitor.events import InferenceEvent, InferenceEventV2
from monitor.pixel_names import PIXEL_STAT_NAMES
from monitor.simulate.features import FeatureStreamConfig, feature_stream

N_REFERENCE, SEED = 1000, 0


def matrix(rows: int, names: tuple[str, ...], seed: int) -> FeatureMatrix:
    return FeatureMatrix(names, np.random.default_rng(seed).normal(size=(rows, len(names))))


def median_ms(call: Callable[[], object], repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def directions(width: int) -> tuple[Direction, ...]:
    rng = np.random.default_rng(SEED)
    return tuple(
        fit_direction(
            f"d{i}", f"towards {i}", rng.normal(size=(50, width)), rng.normal(1, 1, (50, width))
        )
        for i in range(3)
    )


def measure(
    detector: MMDDetector | EmbeddingMMDDetector, width: int, n_window: int, repeat: int
) -> tuple[float, float]:
    """(fit ms, score ms per window) on ``width`` columns."""
    names = tuple(f"c{i:02d}" for i in range(width))
    reference = matrix(N_REFERENCE, names, SEED)
    window = matrix(n_window, names, SEED + 1)
    fit = median_ms(lambda: detector.fit(reference), 3)
    if isinstance(detector, EmbeddingMMDDetector):
        known = directions(width)
        return fit, median_ms(lambda: detector.score(window, known), repeat)
    return fit, median_ms(lambda: detector.score(window), repeat)


def engine_ms_per_window(events: list[InferenceEvent]) -> float:
    """Median time per window of the engine on ``events`` after its reference froze."""
    config = EngineConfig(
        reference_size=1000,
        window=WindowConfig(size=100, min_size=50),
        detectors=DetectorSet(online=None),
    )
    engine = DriftEngine(config)
    for event in events[:1000]:
        engine.process(event)
    times = []
    for start in range(1000, len(events), 100):
        started = time.perf_counter()
        for event in events[start : start + 100]:
            engine.process(event)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def with_embeddings(events: list[InferenceEvent], width: int) -> list[InferenceEvent]:
    vectors = np.random.default_rng(SEED).normal(size=(len(events), width))
    return [
        InferenceEventV2(
            **event.model_dump(exclude={"schema_id"}),
            embedding=vector.tolist(),
            embedding_id=f"{event.model_name}@{event.model_version}/pca{width}-0123456789ab",
        )
        for event, vector in zip(events, vectors, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    defaults = DetectorSet()
    assert defaults.mmd is not None and defaults.embedding_mmd is not None
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}")
    print(f"torch {torch.__version__}, 1 thread, median of {args.repeat}")
    print("| detector | columns | window | fit ms | score ms per window |")
    print("|---|---:|---:|---:|---:|")
    for n_window in (100, 500):
        cases: list[tuple[str, MMDDetector | EmbeddingMMDDetector, int]] = [
            ("mmd (pixel statistics)", MMDDetector(defaults.mmd), len(PIXEL_STAT_NAMES)),
            ("embedding_mmd", EmbeddingMMDDetector(defaults.embedding_mmd), 16),
            ("embedding_mmd", EmbeddingMMDDetector(defaults.embedding_mmd), 32),
        ]
        for label, detector, width in cases:
            fit, score = measure(detector, width, n_window, args.repeat)
            print(f"| {label} | {width} | {n_window} | {fit:.1f} | {score:.1f} |")
    v1 = list(feature_stream(FeatureStreamConfig(n_events=3000, seed=SEED)))
    print("\n| engine, default window detectors | ms per window of 100 |")
    print("|---|---:|")
    print(f"| v1 stream (five detectors) | {engine_ms_per_window(v1):.0f} |")
    v2 = with_embeddings(v1, 16)
    print(f"| v2 stream, 16 components (six detectors) | {engine_ms_per_window(v2):.0f} |")


if __name__ == "__main__":
    main()
