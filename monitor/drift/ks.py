"""Per-feature two-sample Kolmogorov-Smirnov drift test on numeric features.

Each feature is tested on its own (``scipy.stats.ks_2samp``, two-sided), the p-values are
corrected across features (:mod:`monitor.drift.multiple_testing`), and a feature drifts only when
its adjusted p-value is at most the threshold *and* its normalised Wasserstein distance
(``scipy.stats.wasserstein_distance`` divided by the reference standard deviation of that
feature) is at least ``min_effect_size``. The KS statistic says *whether* the distributions
differ; the Wasserstein distance says *by how much*, in units a reader can picture ("half a
standard deviation"), which is what the floor and the ranking need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from monitor.drift import two_sample
from monitor.drift.base import (
    DriftResult,
    FeatureAttribution,
    FeatureMatrix,
    InsufficientDataError,
    NotFittedError,
    register,
    spread,
)
from monitor.drift.multiple_testing import FeatureTest, FeatureTestConfig, decide, skipped_feature

# scipy is imported in the functions that call it: the service settings import this module's
# config, so every `radsentry` command would pay for it (docs/benchmarks.md, "CLI start").

Column = NDArray[np.float64]
ChangeDescription = Callable[[Column, Column], str]
"""(reference values, window values) -> how the feature changed, e.g. "median 118 vs reference
102"; the feature name and the test statistics are added around it."""


class KSConfig(FeatureTestConfig):
    """Settings of the per-feature KS test; stored (as a fingerprint) with every result.

    ``min_effect_size`` is the floor on the Wasserstein distance in reference standard
    deviations. ``min_window`` / ``min_reference`` apply to the rows of a sample and, after
    missing values are dropped, to each feature: a feature below them is skipped, not failed.
    """


_DEFAULT_CONFIG = KSConfig()


def describe_medians(reference: Column, window: Column) -> str:
    """The default change description: window median against reference median."""
    return f"median {np.median(window):.3g} vs reference {np.median(reference):.3g}"


@dataclass(frozen=True, slots=True)
class _FittedReference:
    """What ``fit`` keeps: each feature's non-missing reference values and their spread."""

    names: tuple[str, ...]
    columns: tuple[Column, ...]
    scales: tuple[float, ...]  # standard deviation; 0 for a feature constant in the reference
    n_rows: int
    sorted_columns: tuple[Column, ...]
    """``columns`` sorted, once: every window's Wasserstein distance needs them."""


@register("ks")
class KSDetector:
    """Two-sample KS test per numeric feature, Bonferroni or BH corrected across features.

    Missing values (NaN, and infinities, which no distance can use) are dropped per feature, so
    one incomplete column does not cost the other features their rows.
    """

    name: ClassVar[str]

    def __init__(
        self, config: KSConfig = _DEFAULT_CONFIG, *, describe: ChangeDescription = describe_medians
    ) -> None:
        """``describe`` words a feature's change in the attributions (see ``ChangeDescription``)."""
        self.config = config
        self._describe = describe
        self._reference: _FittedReference | None = None

    def fit(self, reference: FeatureMatrix) -> Self:
        """Keep the reference values of every feature, missing values dropped.

        Raises ValueError when there are no features, InsufficientDataError when the reference
        has fewer than ``min_reference`` rows. A feature with fewer than ``min_reference``
        non-missing values is kept but will be reported as not tested.
        """
        if not reference.names:
            raise ValueError("the reference has no features")
        if len(reference) < self.config.min_reference:
            raise InsufficientDataError(
                f"reference has {len(reference)} rows; at least {self.config.min_reference} "
                "are needed"
            )
        columns = tuple(_present(reference.values[:, i]) for i in range(len(reference.names)))
        self._reference = _FittedReference(
            names=reference.names,
            columns=columns,
            scales=tuple(float(spread(column)) if column.size else 0.0 for column in columns),
            n_rows=len(reference),
            sorted_columns=tuple(np.sort(column) for column in columns),
        )
        return self

    def score(self, window: FeatureMatrix) -> DriftResult:
        """Test a window against the fitted reference, feature by feature.

        ``statistic`` is the largest KS statistic, ``p_value`` the smallest adjusted p-value and
        ``effect_size`` the largest normalised Wasserstein distance among drifting features (of
        all tested features when none drifts). ``n_reference`` and ``n_window`` count rows.

        Raises NotFittedError before ``fit``, ValueError when the feature names differ from the
        reference's, InsufficientDataError when the window has fewer than ``min_window`` rows or
        no feature has enough non-missing values on both sides.
        """
        reference = self._fitted()
        if window.names != reference.names:
            raise ValueError(
                f"window features {window.names} differ from the reference's {reference.names}"
            )
        if len(window) < self.config.min_window:
            raise InsufficientDataError(
                f"window has {len(window)} rows; at least {self.config.min_window} are needed"
            )
        tests: list[FeatureTest] = []
        skipped: list[FeatureAttribution] = []
        for i, name in enumerate(reference.names):
            window_column = _present(window.values[:, i])
            reason = self.config.too_few(reference.columns[i].size, window_column.size)
            if reason is not None:
                skipped.append(skipped_feature(name, reason))
                continue
            tests.append(
                self._test(
                    name,
                    reference.columns[i],
                    window_column,
                    reference.scales[i],
                    reference.sorted_columns[i],
                )
            )
        if not tests:
            raise InsufficientDataError(
                "no feature has enough non-missing values: "
                + "; ".join(item.explanation or item.feature for item in skipped)
            )
        decision = decide(tests, skipped, self.config)
        return decision.to_result(self.name, self.config, reference.n_rows, len(window))

    def _fitted(self) -> _FittedReference:
        if self._reference is None:
            raise NotFittedError("call fit(reference) before score(window)")
        return self._reference

    def _test(
        self, name: str, reference: Column, window: Column, scale: float, ordered: Column
    ) -> FeatureTest:
        """``ordered``: ``reference`` sorted (scipy's numbers, bit for bit, see two_sample)."""
        statistic, p_value = two_sample.ks_2samp(ordered, window)
        effect = _normalised_wasserstein(reference, window, scale, ordered)
        return FeatureTest(
            feature=name,
            statistic=statistic,
            p_value=p_value,
            effect_size=effect,
            effect_size_name="wasserstein_norm",
            explanation=(
                f"{name}: {self._describe(reference, window)} "
                f"(KS {statistic:.2f}, Wasserstein {effect:.2f} sd)"
            ),
        )


def _present(values: NDArray[np.float64]) -> Column:
    """The finite values of one column, as float64."""
    column = np.asarray(values, dtype=np.float64)
    return column[np.isfinite(column)]


def _normalised_wasserstein(
    reference: Column, window: Column, scale: float, ordered: Column
) -> float:
    """Wasserstein distance in reference standard deviations (``ordered``: ``reference``
    sorted).

    A feature constant in the reference has no spread to measure against; the pooled standard
    deviation is used instead, so a move away from the constant still gets a finite, comparable
    size (and a window at the same constant gets 0).
    """
    distance = two_sample.wasserstein_distance(ordered, window)
    if scale == 0.0:
        scale = float(spread(np.concatenate([reference, window])))
    return distance / scale if scale > 0.0 else 0.0
