"""Maximum mean discrepancy (MMD) two-sample drift detector with a batched permutation test.

The test follows alibi-detect's ``MMDDriftTorch`` with its defaults (Gaussian RBF kernel,
bandwidth configured from the reference, 100 permutations) so our numbers can be cross-checked
against it. Every definition below names the alibi-detect source it matches:

* Kernel: ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` (``utils/pytorch/kernels.py``,
  ``GaussianRBF.forward``); squared distances are ``|x|^2 + |y|^2 - 2 x.y`` clipped below at
  1e-30 (``utils/pytorch/distance.py``, ``squared_pairwise_distance``).
* Bandwidth: alibi's ``sigma_median`` applied to the reference against itself, once at fit time
  (its default ``configure_kernel_from_x_ref=True``). With ``n`` reference rows, the ``n * n``
  squared distances (diagonal included) are sorted ascending and
  ``sigma = sqrt(0.5 * sorted[n + (n * n - n) // 2 - 1])``; with distinct rows that is the lower
  median of the ``n (n - 1) / 2`` pairwise squared distances, halved, square-rooted.
* Statistic: the unbiased MMD^2 on the kernel matrix with its diagonal zeroed
  (``mmd2_from_kernel_matrix``): ``sum(K_xx) / (n (n - 1)) + sum(K_yy) / (m (m - 1))
  - 2 mean(K_xy)``.
* p-value: the share of permuted statistics at least as large as the observed one,
  ``mean(mmd2 <= mmd2_permuted)`` over ``n_permutations`` permutations, the observed split not
  counted (``cd/pytorch/mmd.py``, ``MMDDriftTorch.score``). Drift is declared when
  ``p < p_value_threshold`` (``cd/base.py``, ``BaseMMDDrift.predict``): strictly less, because
  with this p-value ``p <= 0.05`` would alarm on 6 of every 101 null windows, not 5.
* Permutations: ``torch.randperm(n + m)`` drawn ``n_permutations`` times in a row, the first
  ``n`` permuted indices forming the reference. We draw from a ``torch.Generator`` seeded with
  ``config.seed``, so after ``torch.manual_seed(seed)`` alibi draws the very same permutations
  and the p-values agree exactly.

Where we differ from alibi: the permuted statistics are evaluated all at once, as one
``(n_permutations + 1, n + m) @ (n + m, n + m)`` product on the kernel matrix, not one
re-indexed copy of it per permutation in a Python loop (benchmarks/bench_mmd.py); ties within
1e-12 count as ties, so samples of identical rows get p = 1 rather than a p-value decided by
rounding; and alibi keeps ``sigma`` in float32, which moves MMD^2 by about 1e-8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from monitor.drift.base import (
    DetectorConfig,
    DriftResult,
    FeatureAttribution,
    FeatureMatrix,
    InsufficientDataError,
    NotFittedError,
    register,
    spread,
)
from monitor.drift.two_sample import wasserstein_distance

if TYPE_CHECKING:
    import torch

# torch and scipy are imported where a detector fits or scores, not here: the service settings
# import MMDConfig, and every `radsentry` command reads the settings (docs/benchmarks.md, "CLI
# start"). The torch arithmetic lives in monitor.drift.mmd_kernel.


class MMDConfig(DetectorConfig):
    """Settings of the MMD permutation test; stored (as a fingerprint) with every result."""

    n_permutations: int = Field(default=100, ge=1)
    p_value_threshold: float = Field(default=0.05, gt=0.0, lt=1.0)
    min_effect_size: float = Field(default=0.0, ge=0.0)
    """Practical-significance floor on MMD^2: a significant but smaller MMD^2 is no drift."""
    min_window: int = Field(default=20, ge=2)
    min_reference: int = Field(default=50, ge=2)
    seed: int = Field(default=0, ge=0)
    max_reference: int | None = Field(default=2000, ge=2)
    """Reference rows kept for the kernel test (a seeded subsample when there are more).

    The kernel matrix is (n + m)^2 float64 values and the permutation product costs
    n_permutations * (n + m)^2: 2000 rows plus a 500-row window is 50 MB and 0.63 G
    multiply-adds, while 20 000 rows would be 3.4 GB. Beyond a few thousand rows the reference
    mean embedding barely changes, so power is set by the window size, not by more reference
    rows.
    """

    @model_validator(mode="after")
    def _reference_cap_above_minimum(self) -> Self:
        if self.max_reference is not None and self.max_reference < self.min_reference:
            raise ValueError(
                f"max_reference ({self.max_reference}) is below min_reference "
                f"({self.min_reference})"
            )
        return self


_DEFAULT_CONFIG = MMDConfig()


@dataclass(frozen=True, slots=True)
class _FittedReference:
    """What ``fit`` keeps: scaling, the standardised reference and the bandwidth."""

    names: tuple[str, ...]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    constant: NDArray[np.bool_]
    standardised: NDArray[np.float64]  # every clean reference row, for the attributions
    points: torch.Tensor  # the rows the kernel test uses (subsampled past max_reference)
    sigma: float
    rows_dropped: int
    column_means: tuple[float, ...]
    """Each ``standardised`` column's mean, for the attributions (once, not per window)."""
    sorted_columns: tuple[NDArray[np.float64], ...]
    """Each ``standardised`` column sorted: every window's Wasserstein distances need them."""


@register("mmd")
class MMDDetector:
    """Multivariate two-sample drift test: MMD^2 with a Gaussian kernel and permutation p-value.

    Every feature is standardised with the reference mean and standard deviation (a constant
    feature is only centred), so no feature dominates the distances by its units. Rows with any
    NaN or infinite value are dropped: ``len(window) - result.n_window`` counts them for a
    window, ``reference_rows_dropped`` for the reference.
    """

    name: ClassVar[str]

    def __init__(self, config: MMDConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self._reference: _FittedReference | None = None

    @property
    def reference_rows_dropped(self) -> int:
        """Reference rows dropped at fit time for a NaN or infinite value."""
        return self._fitted().rows_dropped

    def fit(self, reference: FeatureMatrix) -> Self:
        """Learn the scaling, bandwidth and reference kernel block from a reference sample.

        Raises InsufficientDataError when fewer than ``min_reference`` complete rows remain,
        ValueError when there are no features.
        """
        if not reference.names:
            raise ValueError("the reference has no features")
        clean, dropped = _complete_rows(reference.values)
        if len(clean) < self.config.min_reference:
            raise InsufficientDataError(
                f"reference has {len(clean)} complete rows ({dropped} dropped for missing "
                f"values); at least {self.config.min_reference} are needed"
            )
        mean, std = clean.mean(axis=0), spread(clean, axis=0)
        constant = std == 0.0
        scale = np.where(constant, 1.0, std)
        standardised = (clean - mean) / scale
        from monitor.drift import mmd_kernel

        kept = _subsample(standardised, self.config.max_reference, self.config.seed)
        points = mmd_kernel.as_points(kept)
        sigma = mmd_kernel.median_sigma(points)
        self._reference = _FittedReference(
            names=reference.names,
            mean=mean,
            scale=scale,
            constant=constant,
            standardised=standardised,
            points=points,
            sigma=sigma,
            rows_dropped=dropped,
            column_means=tuple(standardised[:, i].mean() for i in range(standardised.shape[1])),
            sorted_columns=tuple(np.sort(column) for column in standardised.T),
        )
        return self

    def score(self, window: FeatureMatrix) -> DriftResult:
        """Test a window against the fitted reference.

        ``statistic`` and ``effect_size`` are both the unbiased MMD^2; ``n_reference`` is the
        number of reference rows in the kernel test (after dropping and subsampling).
        Attributions rank the features by their Wasserstein distance in reference sd.

        Raises NotFittedError before ``fit``, ValueError when the feature names differ from the
        reference's, InsufficientDataError below ``min_window`` complete rows.
        """
        reference = self._fitted()
        if window.names != reference.names:
            raise ValueError(
                f"window features {window.names} differ from the reference's {reference.names}"
            )
        clean, dropped = _complete_rows(window.values)
        if len(clean) < self.config.min_window:
            raise InsufficientDataError(
                f"window has {len(clean)} complete rows ({dropped} dropped for missing values); "
                f"at least {self.config.min_window} are needed"
            )
        from monitor.drift.mmd_kernel import permutation_test

        standardised = (clean - reference.mean) / reference.scale
        mmd2, p_value = permutation_test(
            reference.points,
            reference.sigma,
            standardised,
            self.config.n_permutations,
            self.config.seed,
        )
        is_drift = p_value < self.config.p_value_threshold and mmd2 >= self.config.min_effect_size
        return DriftResult(
            detector=self.name,
            is_drift=is_drift,
            statistic=mmd2,
            effect_size=mmd2,
            effect_size_name="mmd2",
            n_reference=len(reference.points),
            n_window=len(clean),
            config_fingerprint=self.config.fingerprint(),
            p_value=p_value,
            threshold=self.config.p_value_threshold,
            attributions=_attributions(reference, standardised),
        )

    def _fitted(self) -> _FittedReference:
        if self._reference is None:
            raise NotFittedError("call fit(reference) before score(window)")
        return self._reference


def _complete_rows(values: NDArray[np.float64]) -> tuple[NDArray[np.float64], int]:
    """Rows without NaN or infinity (float64), and how many rows were dropped."""
    values = np.asarray(values, dtype=np.float64)
    complete = np.isfinite(values).all(axis=1)
    return values[complete], int((~complete).sum())


def _subsample(values: NDArray[np.float64], limit: int | None, seed: int) -> NDArray[np.float64]:
    """At most ``limit`` rows, drawn without replacement by a seeded generator, in input order."""
    if limit is None or len(values) <= limit:
        return values
    chosen = np.random.default_rng(seed).choice(len(values), size=limit, replace=False)
    return values[np.sort(chosen)]


def _attributions(
    reference: _FittedReference, window: NDArray[np.float64]
) -> tuple[FeatureAttribution, ...]:
    """Per feature: |mean difference| (statistic) and Wasserstein distance (effect size), both
    in reference standard deviations, sorted by effect size, largest first.

    The Wasserstein distance ranks because it also sees a change of spread or shape, which MMD
    detects but a mean difference misses; it is never smaller than the mean difference.
    """
    attributions = []
    for column, name in enumerate(reference.names):
        shift = float(window[:, column].mean() - reference.column_means[column])
        distance = wasserstein_distance(reference.sorted_columns[column], window[:, column])
        attributions.append(
            FeatureAttribution(
                feature=name,
                statistic=abs(shift),
                effect_size=distance,
                explanation=_explain(name, shift, distance, bool(reference.constant[column])),
            )
        )
    return tuple(sorted(attributions, key=lambda item: item.effect_size, reverse=True))


def _explain(name: str, shift: float, distance: float, constant_in_reference: bool) -> str:
    """One line for people, e.g. ``pixel mean: window mean 1.8 sd above reference (...)``."""
    direction = "above" if shift >= 0 else "below"
    if constant_in_reference:
        # A feature constant in the reference was only centred: its numbers are in raw units.
        return (
            f"{name}: window mean {abs(shift):.3g} {direction} the reference's constant value "
            f"(raw units; Wasserstein distance {distance:.3g})"
        )
    return (
        f"{name}: window mean {abs(shift):.1f} sd {direction} reference "
        f"(Wasserstein distance {distance:.2f})"
    )
