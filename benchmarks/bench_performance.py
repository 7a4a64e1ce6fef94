"""Recompute every performance metric with intervals for 100 sites x 3 findings x 5,000 cases.

Target (docs/benchmarks.md): under 10 s on one core, bootstrap included. The workload is 300
windows of 5,000 labelled cases each (three findings with prevalence 5%, 15% and 30%; per-site
separation and miscalibration drawn at random), one thread for numpy/BLAS. Timed, each for all
300 windows:

(a) ``binary_metrics`` with the default config: DeLong AUROC interval, Wilson intervals,
    Brier, ECE + reliability bins, logistic calibration slope and intercept;
(b) the same with ``auroc_ci="bootstrap"`` (stratified, ``--resamples`` resamples, vectorised);
(c) ``subgroup_metrics`` over sex, age band, manufacturer and modality (13 subgroups), DeLong;

and, for the ADR on the AUROC interval (docs/adr/0008-delong-auroc-intervals.md), the AUROC
interval alone: DeLong, our stratified bootstrap, and ``scipy.stats.bootstrap`` (percentile,
statistic vectorised over resamples with ``rankdata``); scipy's is timed on ``--scipy-windows``
windows and scaled to 300. BLAS and OpenMP thread pools are limited to one thread
(``threadpoolctl``). Before timing the script checks AUROC against scikit-learn and that
the bootstrap and DeLong intervals agree.

    .venv/bin/python -m benchmarks.bench_performance
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from monitor.performance._auroc import bootstrap_aurocs, delong
from monitor.performance.metrics import PerformanceConfig, binary_metrics
from monitor.performance.subgroups import subgroup_metrics

N_SITES, PREVALENCES, N_CASES, THRESHOLD, SEED = 100, (0.05, 0.15, 0.30), 5000, 0.3, 0


@dataclass(frozen=True)
class Window:
    labels: NDArray[np.bool_]
    scores: NDArray[np.float64]
    groups: dict[str, list[str | None]]


def make_windows(n_sites: int, rng: np.random.Generator) -> list[Window]:
    """One 5,000-case window per site and finding, scores mildly miscalibrated per site."""
    windows = []
    for _site in range(n_sites):
        separation, slope = rng.uniform(1.0, 2.5), rng.uniform(0.8, 1.2)
        for prevalence in PREVALENCES:
            labels = rng.random(N_CASES) < prevalence
            logits = rng.normal(size=N_CASES) + separation * labels
            logits += np.log(prevalence / (1 - prevalence)) - separation * prevalence
            scores = 1.0 / (1.0 + np.exp(-slope * logits))
            groups: dict[str, list[str | None]] = {
                "sex": list(rng.choice(["F", "M"], N_CASES)),
                "age_band": list(rng.choice(["18-39", "40-64", "65+"], N_CASES)),
                "manufacturer": list(rng.choice(["GE", "Philips", "Siemens", "Agfa"], N_CASES)),
                "modality": list(rng.choice(["CR", "DX"], N_CASES, p=[0.3, 0.7])),
            }
            windows.append(Window(labels, scores, groups))
    return windows


def timed(run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(np.median(cpus))


def scipy_bootstrap_interval(window: Window, resamples: int) -> tuple[float, float]:
    """``scipy.stats.bootstrap`` percentile interval of AUROC (paired cases, not stratified)."""

    def auroc(labels: NDArray[np.float64], scores: NDArray[np.float64], axis: int) -> object:
        ranks = stats.rankdata(scores, axis=axis)
        positives = labels.sum(axis=axis)
        negatives = labels.shape[axis] - positives
        rank_sum = (ranks * labels).sum(axis=axis)
        return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)

    result = stats.bootstrap(
        (window.labels.astype(np.float64), window.scores),
        auroc,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        batch=100,
        method="percentile",
        rng=np.random.default_rng(SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def check(windows: list[Window], resamples: int) -> None:
    """Refuse to time anything that computes the wrong numbers."""
    window = windows[0]
    metrics = binary_metrics(window.labels, window.scores, THRESHOLD)
    assert metrics.auroc is not None
    assert abs(metrics.auroc.estimate - roc_auc_score(window.labels, window.scores)) < 1e-12
    config = PerformanceConfig(auroc_ci="bootstrap", n_bootstrap=resamples)
    bootstrap = binary_metrics(window.labels, window.scores, THRESHOLD, config).auroc
    assert bootstrap is not None
    assert abs(bootstrap.lower - metrics.auroc.lower) < 0.01
    assert abs(bootstrap.upper - metrics.auroc.upper) < 0.01


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=N_SITES)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scipy-windows", type=int, default=3)
    args = parser.parse_args()
    windows = make_windows(args.sites, np.random.default_rng(SEED))
    check(windows, args.resamples)
    delong_config = PerformanceConfig()
    bootstrap_config = PerformanceConfig(auroc_ci="bootstrap", n_bootstrap=args.resamples)
    rows = {
        "all metrics, DeLong AUROC interval (default)": timed(
            lambda: [binary_metrics(w.labels, w.scores, THRESHOLD, delong_config) for w in windows],
            args.repeat,
        ),
        f"all metrics, bootstrap AUROC interval ({args.resamples} resamples)": timed(
            lambda: [
                binary_metrics(w.labels, w.scores, THRESHOLD, bootstrap_config) for w in windows
            ],
            args.repeat,
        ),
        "subgroups: sex, age band, manufacturer, modality (13 per window), DeLong": timed(
            lambda: [
                subgroup_metrics(w.labels, w.scores, THRESHOLD, w.groups, delong_config)
                for w in windows
            ],
            args.repeat,
        ),
    }
    auroc_rows = auroc_only(windows, args)
    report(windows, args, rows, auroc_rows)


def auroc_only(windows: list[Window], args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """The AUROC interval alone, three ways; scipy's on a few windows, scaled to all."""
    rng = np.random.default_rng(SEED)
    split = [(w.scores[w.labels], w.scores[~w.labels]) for w in windows]
    few = windows[: args.scipy_windows]
    scale = len(windows) / len(few)
    wall, cpu = timed(lambda: [scipy_bootstrap_interval(w, args.resamples) for w in few], 1)
    return {
        "DeLong": timed(lambda: [delong(p, n) for p, n in split], args.repeat),
        f"our stratified bootstrap, {args.resamples} resamples": timed(
            lambda: [bootstrap_aurocs(p, n, args.resamples, rng) for p, n in split], args.repeat
        ),
        f"scipy.stats.bootstrap (percentile), {args.resamples} resamples, "
        f"{len(few)} windows x {scale:.0f}": (wall * scale, cpu * scale),
    }


def report(
    windows: list[Window],
    args: argparse.Namespace,
    rows: dict[str, tuple[float, float]],
    auroc_rows: dict[str, tuple[float, float]],
) -> None:
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"numpy {np.__version__}, {len(windows)} windows x {N_CASES} cases, "
        f"median of {args.repeat}, load average {os.getloadavg()[0]:.1f}"
    )
    for title, table in (("All metrics", rows), ("AUROC interval only", auroc_rows)):
        print(
            f"\n{title}\n\n| what | wall s | CPU s | ms per window (wall) |\n|---|---:|---:|---:|"
        )
        for name, (wall, cpu) in table.items():
            print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / len(windows) * 1e3:.1f} |")
    delong_wall = next(iter(rows.values()))[0]
    bootstrap_wall = list(rows.values())[1][0]
    print(f"\nbootstrap / DeLong (all metrics): {bootstrap_wall / delong_wall:.1f}x")
    auroc_walls = list(auroc_rows.values())
    print(f"our bootstrap / DeLong (AUROC only): {auroc_walls[1][0] / auroc_walls[0][0]:.0f}x")
    print(f"scipy bootstrap / our bootstrap: {auroc_walls[2][0] / auroc_walls[1][0]:.0f}x")


if __name__ == "__main__":
    # One core, as the target says: BLAS/OpenMP pools (statsmodels' fits) limited to one thread.
    with threadpool_limits(limits=1):
        main()
