"""Sequential detection across windows: a CUSUM on each feature's standardised evidence.

One window at a time, a moderate change that persists can stay under every window's threshold
for weeks. A CUSUM accumulates it: each watched feature keeps ``S = max(0, S + z - k)`` over its
checks, and the detector drifts when the largest ``S`` reaches ``h``. A sustained shift adds
about ``z - k`` per window and crosses ``h`` within a few windows; a one-window blip adds once
and decays.

**What ``z`` is.** Two standardisations of the same check, and the smaller of them:

* ``z_effect = (effect - mean) / sd``, the window's effect against the reference's
  chunk-to-chunk mean and spread (``monitor.drift.calibration``): on a wandering site, how far
  beyond its usual week-to-week movement the feature moved;
* ``z_test = Φ⁻¹(1 - p)``, the feature's own p-value (before the correction across features) as
  a standard normal score: how surprising the window is if nothing changed at all.

Taking the minimum needs both kinds of evidence, as the window rule does (significant *and*
beyond the learned threshold).

**Why ``h`` is computed, not guessed.** With no change (an exchangeable stream) a valid test's
p-value is uniform, or larger for a conservative test (KS with ties, Fisher), so ``z_test`` is
standard normal or stochastically smaller, and ``z <= z_test``. Each feature's CUSUM therefore
crosses no sooner than a CUSUM on N(0, 1) increments, whose run length Siegmund's approximation
gives in closed form. ``h`` is the smallest interval at which that run length reaches
``n * arl0_checks`` for ``n`` watched features, so by the union bound the chance that any of
them crosses within ``t`` checks is at most about ``t / arl0_checks``. Two approximations remain
and are measured on real streams (docs/benchmarks.md): every window is compared with the same
reference sample (a small positive correlation between checks, of order window / reference),
and chi-square p-values of sparse categories can be slightly liberal.

An earlier version drew the in-control ``z`` from the reference's chunk effects instead. With
13 weeks of reference that is 40-90 values, too few to estimate a 1-in-500 tail, and the live
windows' effects ran above them: 20 alerts in 1,092 exchangeable windows against a bound of 2.7.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from pydantic import Field

from monitor.drift.base import DetectorConfig, DriftResult
from monitor.drift.calibration import OVERALL

# scipy is imported in the functions that call it: the service settings import this module's
# config, so every `radsentry` command would pay for it (docs/benchmarks.md, "CLI start").

Z_CAP: Final = 8.0
"""Standardised evidence is clipped to ±8: a p-value of 0 or an effect of many spreads adds a
large but finite step, and one extreme window cannot carry the sum for weeks."""


class SequentialConfig(DetectorConfig):
    """The CUSUM's settings (``EngineConfig.sequential``; needs learned thresholds)."""

    k: float = Field(default=0.5, ge=0.0)
    """Allowance per window, in standard units: half the smallest sustained shift to find fast."""
    arl0_checks: float = Field(default=500.0, ge=10.0)
    """In-control average run length, in checks, per (stream, detector), all features together."""


def siegmund_arl(h: float, k: float) -> float:
    """Siegmund's approximation of the in-control average run length of a one-sided CUSUM with
    allowance ``k`` and interval ``h`` on N(0, 1) increments (Siegmund 1985, eq. 2.56)."""
    b = h + 1.166
    if k == 0.0:
        return b * b
    x = 2.0 * k * b
    if x > 700.0:  # beyond any run length we could ask for (exp overflows)
        return math.inf
    return (math.exp(x) - x - 1.0) / (2.0 * k * k)


def decision_interval(n_features: int, config: SequentialConfig) -> float | None:
    """The smallest ``h`` whose in-control run length on N(0, 1) increments reaches
    ``n_features * config.arl0_checks`` (None with no feature to watch); see the module
    docstring for why that bounds the false-alarm rate of ``min(z_effect, z_test)``."""
    if n_features <= 0:
        return None
    target = n_features * config.arl0_checks
    high = 1.0
    while siegmund_arl(high, config.k) < target:
        high *= 2.0
    if siegmund_arl(0.0, config.k) >= target:
        return 0.0
    from scipy.optimize import brentq

    return float(brentq(lambda h: siegmund_arl(h, config.k) - target, 0.0, high))


def z_test(p_value: float) -> float:
    """A p-value as a standard normal score, ``Φ⁻¹(1 - p)``, clipped to ±:data:`Z_CAP`."""
    from scipy.stats import norm

    return float(min(Z_CAP, max(-Z_CAP, norm.isf(min(max(p_value, 0.0), 1.0)))))


def evidence(result: DriftResult, moments: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Each watched feature's ``z = min(z_effect, z_test)`` for one check; ``moments`` gives the
    feature's chunk (mean, sd). A feature the check did not test adds nothing."""
    tests: dict[str, tuple[float, float | None]] = {
        a.feature: (a.effect_size, a.p_value_raw if a.p_value_raw is not None else a.p_value)
        for a in result.attributions
        if a.p_value is not None
    }
    if not tests:  # a multivariate result: its overall effect and test
        tests = {OVERALL: (result.effect_size, result.p_value)}
    found = {}
    for feature, (mean, sd) in moments.items():
        effect, p_value = tests.get(feature, (None, None))
        if effect is None or p_value is None or sd <= 0:
            continue
        z_effect = min(Z_CAP, max(-Z_CAP, (effect - mean) / sd))
        found[feature] = min(z_effect, z_test(p_value))
    return found


def update(
    sums: dict[str, float],
    result: DriftResult,
    moments: Mapping[str, tuple[float, float]],
    k: float,
    cap: float,
) -> float:
    """Add one check's evidence (:func:`evidence`) to ``sums`` (feature -> S, changed in place)
    and return the largest ``S``.

    Each ``S`` is capped at ``cap`` (the decision interval ``h``): the first crossing, and so
    the false-alarm rate, is that of the plain CUSUM, but once a shift stops the statistic
    falls below ``h`` at the first window without it, so the episode can end instead of
    waiting for a large sum to drain."""
    for feature, z in evidence(result, moments).items():
        sums[feature] = min(cap, max(0.0, sums.get(feature, 0.0) + z - k))
    return max(sums.values(), default=0.0)


def crossing(sums: Mapping[str, float], h: float | None) -> tuple[str, ...]:
    """The features whose sums have reached ``h``, largest first (the overall key left out)."""
    if h is None:
        return ()
    found = sorted(
        ((s, f) for f, s in sums.items() if s >= h and f != OVERALL), key=lambda x: -x[0]
    )
    return tuple(feature for _, feature in found)
