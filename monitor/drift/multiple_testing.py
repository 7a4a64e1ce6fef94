"""One test per feature, combined across features under a multiple-testing correction.

A window with k features is k hypothesis tests. Testing each at 5% would raise a false alarm on
about ``1 - 0.95**k`` of all unchanged windows (34% with 8 features), so the per-feature p-values
are adjusted before they are compared with the threshold:

* ``"bonferroni"`` controls the family-wise error rate: the chance that *any* unchanged feature
  is flagged stays at or below the threshold. Conservative when features are many.
* ``"fdr_bh"`` (Benjamini-Hochberg) controls the false-discovery rate: among the features flagged,
  the expected share of unchanged ones stays at or below the threshold. More power when several
  features shift together, at the price of more window-level false alarms.

The univariate detectors (KS, chi-square, missingness, model scores) share the settings and the
decision rule defined here, so "drift" means the same thing for all of them: adjusted p-value at
or below the threshold *and* an effect size at or above the practical-significance floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field

from monitor.drift.base import DetectorConfig, DriftResult, FeatureAttribution

Correction = Literal["bonferroni", "fdr_bh"]


def adjust(p_values: ArrayLike, method: Correction) -> NDArray[np.float64]:
    """Adjust per-feature p-values for the number of features tested.

    ``"bonferroni"``: ``min(1, p * k)``, which controls the family-wise error rate.
    ``"fdr_bh"``: Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``),
    which control the false-discovery rate. Either way a feature is significant at level
    ``alpha`` exactly when its adjusted p-value is at most ``alpha``. Order is preserved.

    Raises ValueError for a p-value outside [0, 1] or an array that is not one-dimensional.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be one-dimensional, got shape {p.shape}")
    if p.size == 0:
        return p
    if np.isnan(p).any() or (p < 0.0).any() or (p > 1.0).any():
        raise ValueError("p-values must lie in [0, 1]")
    if method == "bonferroni":
        return np.minimum(1.0, p * p.size)
    if method == "fdr_bh":
        # Imported here: the settings import this module's config (docs/benchmarks.md, "CLI start").
        from scipy.stats import false_discovery_control

        return np.asarray(false_discovery_control(p, method="bh"), dtype=np.float64)
    raise ValueError(f"unknown correction {method!r}")


class FeatureTestConfig(DetectorConfig):
    """Settings shared by the detectors that run one test per feature.

    A feature drifts when its adjusted p-value is at most ``p_value_threshold`` and its effect
    size is at least ``min_effect_size``: with thousands of studies a window becomes
    significant for differences too small to matter, and the floor keeps those quiet.
    """

    p_value_threshold: float = Field(default=0.05, gt=0.0, lt=1.0)
    correction: Correction = "bonferroni"
    min_effect_size: float = Field(default=0.1, ge=0.0)
    min_window: int = Field(default=20, ge=1)
    """Fewest values a window needs (rows, or per feature non-missing values) to be tested."""
    min_reference: int = Field(default=50, ge=1)
    """Fewest values the reference needs (rows, or per feature non-missing values)."""

    def too_few(self, n_reference: int, n_window: int) -> str | None:
        """Why a feature with these counts cannot be tested, or None when it can."""
        if n_reference < self.min_reference:
            return (
                f"{n_reference} non-missing values in the reference "
                f"(at least {self.min_reference} needed)"
            )
        if n_window < self.min_window:
            return (
                f"{n_window} non-missing values in the window (at least {self.min_window} needed)"
            )
        return None


@dataclass(frozen=True, slots=True)
class FeatureTest:
    """One feature's test before correction: unadjusted p-value, effect size, and its wording."""

    feature: str
    statistic: float
    p_value: float
    effect_size: float
    effect_size_name: str
    explanation: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The window-level outcome of a set of per-feature tests."""

    is_drift: bool
    statistic: float
    """Largest per-feature statistic."""
    p_value: float
    """Smallest adjusted p-value."""
    effect_size: float
    """Largest effect among drifting features, or among all tested features when none drifts."""
    effect_size_name: str
    attributions: tuple[FeatureAttribution, ...]
    """Drifting features first, then the other tested ones, each by effect size (largest first);
    then one entry per skipped feature (p-value None, statistic and effect size 0)."""

    def to_result(
        self,
        detector: str,
        config: FeatureTestConfig,
        n_reference: int,
        n_window: int,
        statistic: float | None = None,
    ) -> DriftResult:
        """The detector's result; ``statistic`` overrides the largest per-feature statistic."""
        return DriftResult(
            detector=detector,
            is_drift=self.is_drift,
            statistic=self.statistic if statistic is None else statistic,
            effect_size=self.effect_size,
            effect_size_name=self.effect_size_name,
            n_reference=n_reference,
            n_window=n_window,
            config_fingerprint=config.fingerprint(),
            p_value=self.p_value,
            threshold=config.p_value_threshold,
            attributions=self.attributions,
        )


def decide(
    tests: Sequence[FeatureTest], skipped: Sequence[FeatureAttribution], config: FeatureTestConfig
) -> Decision:
    """Correct the p-values across ``tests``, apply the threshold and effect floor, and rank.

    Raises ValueError when ``tests`` is empty: callers raise InsufficientDataError first, since
    only they know why no feature could be tested.
    """
    if not tests:
        raise ValueError("no feature was tested")
    adjusted = adjust([test.p_value for test in tests], config.correction)
    drifting = [
        bool(p <= config.p_value_threshold and test.effect_size >= config.min_effect_size)
        for test, p in zip(tests, adjusted, strict=True)
    ]
    # Python's sort is stable, so equal effects keep the caller's (feature) order.
    order = sorted(range(len(tests)), key=lambda i: (not drifting[i], -tests[i].effect_size))
    leading = tests[order[0]]
    return Decision(
        is_drift=any(drifting),
        statistic=max(test.statistic for test in tests),
        p_value=float(adjusted.min()),
        effect_size=leading.effect_size,
        effect_size_name=leading.effect_size_name,
        attributions=tuple(_attribution(tests[i], float(adjusted[i])) for i in order)
        + tuple(skipped),
    )


def skipped_feature(feature: str, reason: str) -> FeatureAttribution:
    """The attribution of a feature that could not be tested (too few values, say)."""
    return FeatureAttribution(
        feature=feature,
        statistic=0.0,
        effect_size=0.0,
        p_value=None,
        explanation=f"{feature}: not tested, {reason}",
    )


def _attribution(test: FeatureTest, adjusted_p: float) -> FeatureAttribution:
    return FeatureAttribution(
        feature=test.feature,
        statistic=test.statistic,
        effect_size=test.effect_size,
        p_value=adjusted_p,
        explanation=test.explanation,
        p_value_raw=test.p_value,
    )
