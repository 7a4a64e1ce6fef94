"""Online drift detector: calibration time, per-event cost, realised ERT and detection delay.

Default setting: 16 features, window 50, ERT 1000, 4,000 bootstrap streams, a reference of 5,000
events (ADR 0005). Measures, on one core's worth of numpy:

(a) ``fit`` (normal scores + calibration) and ``restore`` from a JSON state with a full window,
    for references of 1,000 / 5,000 / 20,000 events, best of ``--repeat``;
(b) ``update`` per event (mean and 99th percentile over 20,000 events);
(c) the realised ERT: mean run length from a reset to the first alarm on fresh in-control data,
    fed through ``update``, for independent Gaussian features, correlated log-normal ones and
    linear mixtures of skewed sources (whose skew no per-feature transform removes);
(d) how the realised ERT varies from one reference to another (the reference's own estimation
    error), same three kinds, references of 1,000 and 5,000 events: ``--references``, each with
    ``--replay-streams`` streams scored by a vectorised replay of the statistic, which is checked
    against ``update`` before any number is printed; and, as an ablation, Gaussian data with the
    threshold calibrated against the exact reference instead of pseudo-references;
(e) detection delay of a +0.2 sd and a +0.5 sd shift on all 16 features (independent Gaussian),
    the window holding 49 in-control events at the change; alibi-detect's MMDDriftOnline needs a
    median of ~35 events for +0.2 sd at the same ERT and window.

    .venv/bin/python -m benchmarks.bench_online
    .venv/bin/python -m benchmarks.bench_online --streams 100 --references 3   # quicker
    .venv/bin/python -m benchmarks.bench_online --timings-only                 # (a) and (b)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from scipy.stats import chi2

from monitor.drift.base import FeatureMatrix
from monitor.drift.online import (
    OnlineConfig,
    OnlineDriftDetector,
    OnlineState,
    _calibrate,
    _fit_transform,
    _simulate_running_max,
)

N_FEATURES = 16
NAMES = tuple(f"feature_{index}" for index in range(N_FEATURES))
CONFIG = OnlineConfig(ert=1000, window_size=50, n_bootstraps=4000, seed=0)
MIXING = np.eye(N_FEATURES) + 0.3 * np.random.default_rng(1234).standard_normal(
    (N_FEATURES, N_FEATURES)
)
Sampler = Callable[[np.random.Generator, int], NDArray[np.float64]]


def gaussian(rng: np.random.Generator, n_events: int) -> NDArray[np.float64]:
    return rng.standard_normal((n_events, N_FEATURES))


def skewed(rng: np.random.Generator, n_events: int) -> NDArray[np.float64]:
    """Linear mixtures of skewed sources (log-normal, skewness ~1.8): skew survives whitening."""
    return np.exp(0.5 * rng.standard_normal((n_events, N_FEATURES))) @ MIXING


def lognormal(rng: np.random.Generator, n_events: int) -> NDArray[np.float64]:
    """Correlated log-normal features (skewness ~2.3 each): skewed feature by feature."""
    correlated = rng.standard_normal((n_events, N_FEATURES)) @ MIXING
    features: NDArray[np.float64] = np.exp(0.6 * correlated / np.sqrt((MIXING**2).sum(axis=0)))
    return features


SAMPLERS = (("Gaussian", gaussian), ("log-normal", lognormal), ("mixed skewed", skewed))


def reference(sampler: Sampler, n_events: int, seed: int) -> FeatureMatrix:
    return FeatureMatrix(NAMES, sampler(np.random.default_rng(seed), n_events))


def time_fit(repeat: int) -> None:
    print("(a) calibration (fit) and restore from a JSON state with a full window")
    for n_reference in (1000, 5000, 20000):
        ref = reference(gaussian, n_reference, seed=0)
        fits, restores = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            detector = OnlineDriftDetector(CONFIG).fit(ref)
            fits.append(time.perf_counter() - started)
        for event in gaussian(np.random.default_rng(1), 60):
            detector.update(event)
        state_json = detector.state().model_dump_json()
        for _ in range(repeat):
            started = time.perf_counter()
            OnlineDriftDetector.restore(CONFIG, ref, OnlineState.model_validate_json(state_json))
            restores.append(time.perf_counter() - started)
        print(
            f"    n_reference={n_reference:>6}: fit {min(fits):.2f} s, restore "
            f"{min(restores) * 1e3:.0f} ms ({len(state_json):,} B; best of {repeat}); threshold "
            f"{detector.threshold:.2f} (chi2(16) tail {chi2.sf(detector.threshold, 16):.4f} per "
            f"step), simulated ERT {detector.simulated_ert:.0f}"
        )


def time_update(detector: OnlineDriftDetector) -> None:
    events = gaussian(np.random.default_rng(1), 20_000)
    detector.reset()
    durations = np.empty(len(events))
    for index, event in enumerate(events):
        started = time.perf_counter_ns()
        detector.update(event)
        durations[index] = time.perf_counter_ns() - started
    scored = durations[CONFIG.window_size :] / 1e3
    print(
        f"(b) update: mean {scored.mean():.1f} us, p99 {np.percentile(scored, 99):.1f} us "
        f"per event (16 features, window 50, 16 attributions per result)"
    )


def run_length(detector: OnlineDriftDetector, sampler: Sampler, rng: np.random.Generator) -> int:
    detector.reset()
    events = 0
    while True:
        for event in sampler(rng, 500):
            events += 1
            result = detector.update(event)
            if result is not None and result.is_drift:
                return events


def realised_ert(n_streams: int) -> None:
    print(f"(c) realised ERT on fresh data through update() ({n_streams} streams, ERT 1000)")
    for label, sampler in (
        ("Gaussian", gaussian),
        ("log-normal", lognormal),
        ("mixed skewed", skewed),
    ):
        detector = OnlineDriftDetector(CONFIG).fit(reference(sampler, 5000, seed=0))
        rng = np.random.default_rng(2024)
        lengths = [run_length(detector, sampler, rng) for _ in range(n_streams)]
        mean = statistics.fmean(lengths)
        error = statistics.stdev(lengths) / n_streams**0.5
        print(
            f"    {label:<12}: mean run length {mean:.0f} +- {error:.0f} (s.e.), "
            f"median {statistics.median(lengths):.0f}"
        )


def replay_statistics(
    detector: OnlineDriftDetector, events: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The statistic update() would give for each full window of ``events``, vectorised."""
    fitted = detector._fitted
    assert fitted is not None
    window = detector.config.window_size
    whitened = fitted.transform.scores(events) @ fitted.transform.whitening.T
    sums = np.cumsum(whitened, axis=0)
    window_sums = sums[window - 1 :].copy()
    window_sums[1:] -= sums[:-window]
    variance = 1.0 / window + 1.0 / fitted.n_reference
    squared: NDArray[np.float64] = np.einsum("tk,tk->t", window_sums, window_sums)
    return squared / window**2 / variance


def replay_run_length(
    detector: OnlineDriftDetector, sampler: Sampler, rng: np.random.Generator, threshold: float
) -> int:
    window, events = detector.config.window_size, 0
    carried = np.empty((0, N_FEATURES))
    while True:
        block = np.vstack([carried, sampler(rng, 1500)])
        exceeded = np.flatnonzero(replay_statistics(detector, block) > threshold)
        if len(exceeded):
            return events + int(exceeded[0]) + window
        events += len(block) - (window - 1)
        carried = block[-(window - 1) :]


def check_replay(detector: OnlineDriftDetector) -> None:
    events = skewed(np.random.default_rng(3), 3000)
    detector.reset()
    online = [result.statistic for e in events if (result := detector.update(e)) is not None]
    if not np.allclose(online, replay_statistics(detector, events), rtol=1e-9, atol=1e-9):
        raise SystemExit("the vectorised replay disagrees with update(); numbers withheld")


def exact_reference_threshold(detector: OnlineDriftDetector, ref: FeatureMatrix) -> float:
    """The threshold a simulation against the exact reference (no pseudo-references) gives."""
    _, ranks = _fit_transform(np.asarray(ref.values, dtype=np.float64))
    window = detector.config.window_size
    target = detector.config.ert - (window - 1)
    running_max = _simulate_running_max(
        ranks, window, CONFIG.n_bootstraps, target, detector.config.seed, double_bootstrap=False
    )
    return _calibrate(running_max, target)[0]


def ert_across_references(n_references: int, n_streams: int) -> None:
    print(
        f"(d) realised ERT across references ({n_references} references x {n_streams} replayed "
        f"streams each; realised / configured ERT 1000)"
    )
    rows = [(label, sampler, False) for label, sampler in SAMPLERS]
    rows.append(("Gaussian, calibrated on the exact reference", gaussian, True))
    for label, sampler, exact in rows:
        for n_reference in (1000, 5000):
            ratios = []
            for seed in range(n_references):
                config = CONFIG.model_copy(update={"seed": seed})
                ref = reference(sampler, n_reference, 100 + seed)
                detector = OnlineDriftDetector(config).fit(ref)
                check_replay(detector)
                threshold = (
                    exact_reference_threshold(detector, ref) if exact else detector.threshold
                )
                rng = np.random.default_rng(seed)
                lengths = [
                    replay_run_length(detector, sampler, rng, threshold) for _ in range(n_streams)
                ]
                ratios.append(statistics.fmean(lengths) / CONFIG.ert)
            print(
                f"    {label}, n_reference={n_reference}: mean {statistics.fmean(ratios):.3f}, "
                f"sd {statistics.stdev(ratios):.3f} (stream noise ~{n_streams**-0.5:.3f}), "
                f"range {min(ratios):.2f}-{max(ratios):.2f}"
            )


def detection_delay(detector: OnlineDriftDetector, rng: np.random.Generator, shift: float) -> int:
    detector.reset()
    for event in gaussian(rng, CONFIG.window_size - 1):
        detector.update(event)
    delay = 0
    while True:
        for event in gaussian(rng, CONFIG.window_size) + shift:
            delay += 1
            result = detector.update(event)
            if result is not None and result.is_drift:
                return delay


def delays(detector: OnlineDriftDetector, n_streams: int) -> None:
    print(
        f"(e) detection delay, all 16 features shifted ({n_streams} streams, ERT 1000, window 50)"
    )
    rng = np.random.default_rng(8)
    for shift in (0.2, 0.5):
        found = [detection_delay(detector, rng, shift) for _ in range(n_streams)]
        print(
            f"    +{shift} sd: median {statistics.median(found):.0f}, mean "
            f"{statistics.fmean(found):.1f}, 90th percentile {np.percentile(found, 90):.0f} events"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--references", type=int, default=8)
    parser.add_argument("--replay-streams", type=int, default=500)
    parser.add_argument("--delay-streams", type=int, default=500)
    parser.add_argument("--timings-only", action="store_true", help="only (a) and (b)")
    args = parser.parse_args()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.platform()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )
    time_fit(args.repeat)
    gaussian_detector = OnlineDriftDetector(CONFIG).fit(reference(gaussian, 5000, seed=0))
    time_update(gaussian_detector)
    if args.timings_only:
        return
    realised_ert(args.streams)
    ert_across_references(args.references, args.replay_streams)
    delays(gaussian_detector, args.delay_streams)


if __name__ == "__main__":
    main()
