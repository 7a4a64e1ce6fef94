"""Sequential detection across windows: a CUSUM on each feature's standardised effect.

One window at a time, a moderate change that persists can stay under every window's threshold
for weeks. A CUSUM accumulates it: with ``z`` a window's effect standardised by the reference's
chunk-to-chunk mean and spread (``monitor.drift.calibration``), each feature keeps
``S = max(0, S + z - k)``, and the detector drifts when the largest ``S`` reaches ``h``. A
sustained shift of ``d`` spreads adds about ``d - k`` per window and crosses ``h`` within a few
windows; a one-window blip adds once and decays.

``h`` is not guessed: it is computed so that the in-control average run length (the mean number
of checks to a false alarm) is at least ``arl0_checks``. The in-control ``z`` are the
reference's own standardised chunk effects, which are skewed (they are distances), so no normal
approximation is used. :func:`decision_interval` simulates ``runs`` CUSUM paths of every
feature at once, drawing each feature's ``z`` from its chunk values (features independent), and
takes the smallest ``h`` on a fine grid whose estimated run length, censored at
``horizon_factor * arl0_checks`` and so underestimated, reaches the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from monitor.drift.base import DetectorConfig, DriftResult
from monitor.drift.calibration import OVERALL


class SequentialConfig(DetectorConfig):
    """The CUSUM's settings (``EngineConfig.sequential``; needs learned thresholds)."""

    k: float = Field(default=0.5, ge=0.0)
    """Allowance per window, in reference chunk spreads: half the smallest shift to detect fast."""
    arl0_checks: float = Field(default=500.0, ge=10.0)
    """In-control average run length, in checks, per (stream, detector)."""
    runs: int = Field(default=400, ge=50)
    horizon_factor: float = Field(default=4.0, ge=1.0)
    seed: int = 0


def standardised(values: Sequence[float], mean: float, sd: float) -> NDArray[np.float64]:
    return np.asarray((np.asarray(values, dtype=np.float64) - mean) / sd, dtype=np.float64)


def decision_interval(
    chunk_z: Mapping[str, NDArray[np.float64]], config: SequentialConfig
) -> float | None:
    """The smallest ``h`` whose simulated in-control run length reaches ``config.arl0_checks``
    (None without a feature to watch). See the module docstring."""
    features = [z for z in chunk_z.values() if z.size > 0]
    if not features:
        return None
    rng = np.random.default_rng(config.seed)
    horizon = int(config.horizon_factor * config.arl0_checks)
    counts = np.array([values.size for values in features])
    padded = np.zeros((len(features), int(counts.max())))
    for row, values in enumerate(features):
        padded[row, : values.size] = values
    columns = np.arange(len(features))
    statistic = np.zeros((config.runs, len(features)))
    peak = np.empty((config.runs, horizon))  # max over features of S, per run and step
    for step in range(horizon):
        picks = (rng.random((config.runs, len(features))) * counts).astype(np.int64)
        statistic = np.maximum(0.0, statistic + padded[columns, picks] - config.k)
        peak[:, step] = statistic.max(axis=1)
    running = np.maximum.accumulate(peak, axis=1)
    grid = np.linspace(0.0, float(running[:, -1].max()) + 1.0, 2000)
    # Run length for each h: the first step at which the running peak reaches it (censored).
    lengths = np.stack([np.searchsorted(row, grid, side="left") + 1 for row in running]).clip(
        max=horizon
    )
    average = lengths.mean(axis=0)
    reached = np.flatnonzero(average >= config.arl0_checks)
    return float(grid[reached[0]]) if reached.size else float(grid[-1])


def update(
    sums: dict[str, float],
    result: DriftResult,
    moments: Mapping[str, tuple[float, float]],
    k: float,
    cap: float,
) -> float:
    """Add one check's standardised effects to ``sums`` (feature -> S, changed in place) and
    return the largest ``S``; ``moments`` gives each watched feature's chunk (mean, sd).

    Each ``S`` is capped at ``cap`` (the decision interval ``h``): the first crossing, and so
    the false-alarm rate, is that of the plain CUSUM, but once a shift stops the statistic
    falls below ``h`` at the first window without it, so the episode can end instead of
    waiting for a large sum to drain."""
    effects = {a.feature: a.effect_size for a in result.attributions if a.p_value is not None}
    if not effects:  # a multivariate result: its overall effect
        effects = {OVERALL: result.effect_size}
    for feature, (mean, sd) in moments.items():
        if feature in effects and sd > 0:
            z = (effects[feature] - mean) / sd
            sums[feature] = min(cap, max(0.0, sums.get(feature, 0.0) + z - k))
    return max(sums.values(), default=0.0)
