"""The embedding detector's cost per window against the pixel-statistic MMD, as the engine runs it.

Both with the service defaults (``DetectorSet``: ``max_reference=500``, 100 permutations):

(a) ``mmd`` on the pixel statistics (``PIXEL_STAT_NAMES``, 36 columns);
(b) ``embedding_mmd`` on a 16-component embedding (the projection's default width), scored with
    three known directions (the alignment adds a mean and three dot products);
(c) ``embedding_mmd`` on the 32-component maximum.

Reference 1000 rows (subsampled to 500 for the kernel test) and windows of 100 and 500 rows of
standard-normal values, float64 on the CPU, one torch thread (the consumer's setting). Each
``score`` is timed ``--repeat`` times after one warm-up; the median is printed, with ``fit``.

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
from monitor.drift.config import DetectorSet
from monitor.drift.directions import Direction, fit_direction
from monitor.drift.embedding_mmd import EmbeddingMMDDetector
from monitor.drift.mmd import MMDDetector
from monitor.pixel_names import PIXEL_STAT_NAMES

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


if __name__ == "__main__":
    main()
