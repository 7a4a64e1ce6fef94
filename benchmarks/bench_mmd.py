"""MMD permutation test: our batched detector against the alibi-style loop over permutations.

Reference 1000x16 and window 500x16 standard-normal rows (the window shifted by 0.03 sd), Gaussian
kernel with the median bandwidth, 100 permutations, float64 on the CPU. Timed, ``--repeat`` runs
each, median kept:

(a) ``MMDDetector.score`` on the fitted detector: standardise, kernel blocks, all permutations
    in one matrix product, p-value, per-feature attributions;
(b) the naive baseline, as alibi-detect's ``MMDDriftTorch.score`` does it: build the full
    (n + m)^2 kernel matrix, then per permutation in a Python loop draw ``torch.randperm``,
    re-index the matrix and recompute MMD^2 from its blocks.

Both draw the same permutations from the same seed, so they must agree on MMD^2 (to 1e-9) and
on the p-value (exactly); that is checked before any number is printed.

    .venv/bin/python -m benchmarks.bench_mmd --repeat 7 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from monitor.drift.base import FeatureMatrix
from monitor.drift.mmd import MMDConfig, MMDDetector

N_REFERENCE, N_WINDOW, N_FEATURES, N_PERMUTATIONS, SEED = 1000, 500, 16, 100, 0
SHIFT = 0.03  # small enough that the p-value is not 0, so "both agree" means something


def naive_mmd2(kernel: torch.Tensor, n_window: int) -> torch.Tensor:
    """Unbiased MMD^2 from a kernel matrix whose diagonal is zero, reference rows first."""
    n_ref = kernel.shape[0] - n_window
    k_xx, k_yy = kernel[:-n_window, :-n_window], kernel[-n_window:, -n_window:]
    k_xy = kernel[-n_window:, :-n_window]
    return (
        k_xx.sum() / (n_ref * (n_ref - 1))
        + k_yy.sum() / (n_window * (n_window - 1))
        - 2.0 * k_xy.mean()
    )


def naive_test(reference: torch.Tensor, window: torch.Tensor, sigma: float) -> tuple[float, float]:
    """The alibi-style permutation test: one re-indexed kernel matrix per permutation."""
    pooled = torch.cat([reference, window])
    kernel = torch.exp(-torch.cdist(pooled, pooled).pow(2) / (2.0 * sigma**2))
    kernel.fill_diagonal_(0.0)
    observed = naive_mmd2(kernel, len(window))
    generator = torch.Generator().manual_seed(SEED)
    permuted = []
    for _ in range(N_PERMUTATIONS):
        order = torch.randperm(len(pooled), generator=generator)
        permuted.append(naive_mmd2(kernel[order][:, order], len(window)))
    p_value = (observed <= torch.stack(permuted)).double().mean()
    return float(observed), float(p_value)


def naive_inputs(
    reference: FeatureMatrix, window: FeatureMatrix
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Both samples standardised with the reference moments, and the median-heuristic sigma
    (half the lower median squared distance between reference rows), as the detector's fit."""
    mean, std = reference.values.mean(axis=0), reference.values.std(axis=0)
    scaled_ref = torch.from_numpy((reference.values - mean) / std)
    scaled_window = torch.from_numpy((window.values - mean) / std)
    pairs = torch.pdist(scaled_ref).pow(2).sort().values
    sigma = float((pairs[(len(pairs) - 1) // 2] / 2.0) ** 0.5)
    return scaled_ref, scaled_window, sigma


def median_seconds(work: Callable[[], object], repeat: int) -> float:
    work()  # warm-up: thread pools, allocator
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    rng = np.random.default_rng(SEED)
    names = tuple(f"f{i}" for i in range(N_FEATURES))
    reference = FeatureMatrix(names, rng.normal(size=(N_REFERENCE, N_FEATURES)))
    window = FeatureMatrix(names, rng.normal(size=(N_WINDOW, N_FEATURES)) + SHIFT)
    config = MMDConfig(n_permutations=N_PERMUTATIONS, seed=SEED)
    detector = MMDDetector(config).fit(reference)

    scaled_ref, scaled_window, sigma = naive_inputs(reference, window)
    ours = detector.score(window)
    naive_statistic, naive_p_value = naive_test(scaled_ref, scaled_window, sigma)
    assert abs(ours.statistic - naive_statistic) < 1e-9, (ours.statistic, naive_statistic)
    assert ours.p_value == naive_p_value, (ours.p_value, naive_p_value)

    ours_s = median_seconds(lambda: detector.score(window), args.repeat)
    naive_s = median_seconds(lambda: naive_test(scaled_ref, scaled_window, sigma), args.repeat)
    print(
        f"reference {N_REFERENCE}x{N_FEATURES}, window {N_WINDOW}x{N_FEATURES}, "
        f"{N_PERMUTATIONS} permutations; MMD^2 {ours.statistic:.6f}, p {ours.p_value:.2f} "
        f"(both agree); median of {args.repeat} runs"
    )
    print()
    print("| MMD permutation test | median ms |")
    print("|---|---:|")
    print(f"| MMDDetector.score (one batched matmul, + attributions) | {ours_s * 1000:.1f} |")
    print(f"| naive loop over permutations (alibi-style) | {naive_s * 1000:.1f} |")
    print(f"\nspeed-up: {naive_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
