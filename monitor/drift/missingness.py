"""Missingness drift: has the share of events missing a field changed?

A field that stops arriving (a scanner upgrade that drops ConvolutionKernel, a PACS route that
strips patient age) is a data-quality finding in its own right, and the other detectors, which
drop missing values, cannot see it. Per field, the missing counts of reference and window form a
2 x 2 table tested with Fisher's exact test (``scipy.stats.fisher_exact``, two-sided): exact at
any count, and defined when neither side has a missing value, where a chi-square test would
divide by a zero expected count. p-values are corrected across fields
(:mod:`monitor.drift.multiple_testing`); the effect size is the absolute difference between the
missing shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from monitor.drift.base import (
    CategoricalColumns,
    DriftResult,
    FeatureMatrix,
    InsufficientDataError,
    NotFittedError,
    register,
)
from monitor.drift.categorical import format_share, rows_in
from monitor.drift.multiple_testing import FeatureTest, FeatureTestConfig, decide

# scipy is imported in the functions that call it: the service settings import this module's
# config, so every `radsentry` command would pay for it (docs/benchmarks.md, "CLI start").

Fields = CategoricalColumns | FeatureMatrix
"""Either kind of sample: a categorical value of None or a numeric NaN is missing."""


class MissingnessConfig(FeatureTestConfig):
    """Settings of the per-field missingness test; stored (as a fingerprint) with every result.

    ``min_effect_size`` is the floor on |window missing share - reference missing share|;
    ``min_window`` / ``min_reference`` count rows (every row says whether a field is missing).
    """


_DEFAULT_CONFIG = MissingnessConfig()


@dataclass(frozen=True, slots=True)
class _FittedReference:
    """What ``fit`` keeps: per field, how many reference rows miss it."""

    names: tuple[str, ...]
    n_missing: tuple[int, ...]
    n_rows: int


@register("missingness")
class MissingnessDetector:
    """Fisher's exact test of the missing share per field, Bonferroni or BH corrected.

    Reference and window may be either kind of sample (categorical columns or a feature matrix)
    as long as they name the same fields.
    """

    name: ClassVar[str]

    def __init__(self, config: MissingnessConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self._reference: _FittedReference | None = None

    def fit(self, reference: Fields) -> Self:
        """Count the reference rows missing each field.

        Raises ValueError for no fields or ragged columns, InsufficientDataError when the
        reference has fewer than ``min_reference`` rows.
        """
        masks = missing_masks(reference)
        n_rows = _rows(masks)
        if n_rows < self.config.min_reference:
            raise InsufficientDataError(
                f"reference has {n_rows} rows; at least {self.config.min_reference} are needed"
            )
        self._reference = _FittedReference(
            names=tuple(masks),
            n_missing=tuple(int(mask.sum()) for mask in masks.values()),
            n_rows=n_rows,
        )
        return self

    def score(self, window: Fields) -> DriftResult:
        """Test a window's missing shares against the reference's, field by field.

        ``statistic`` and ``effect_size`` are the largest |difference in missing share| (the
        effect among drifting fields, or among all when none drifts); each attribution's
        statistic is the signed difference, window minus reference. ``p_value`` is the smallest
        adjusted p-value.

        Raises NotFittedError before ``fit``; ValueError when the fields differ from the
        reference's or the columns are ragged; InsufficientDataError below ``min_window`` rows.
        """
        reference = self._fitted()
        masks = missing_masks(window)
        if set(masks) != set(reference.names):
            raise ValueError(
                f"window fields {sorted(masks)} differ from the reference's "
                f"{sorted(reference.names)}"
            )
        n_rows = _rows(masks)
        if n_rows < self.config.min_window:
            raise InsufficientDataError(
                f"window has {n_rows} rows; at least {self.config.min_window} are needed"
            )
        tests = [
            _fisher(name, n_missing, reference.n_rows, int(masks[name].sum()), n_rows)
            for name, n_missing in zip(reference.names, reference.n_missing, strict=True)
        ]
        decision = decide(tests, (), self.config)
        return decision.to_result(
            self.name,
            self.config,
            reference.n_rows,
            n_rows,
            statistic=max(abs(test.statistic) for test in tests),
        )

    def _fitted(self) -> _FittedReference:
        if self._reference is None:
            raise NotFittedError("call fit(reference) before score(window)")
        return self._reference


def missing_masks(sample: Fields) -> dict[str, NDArray[np.bool_]]:
    """Field name -> one boolean per row, True where the value is missing.

    Raises ValueError for a sample without fields or with ragged columns.
    """
    if isinstance(sample, FeatureMatrix):
        if not sample.names:
            raise ValueError("no features")
        missing = np.isnan(np.asarray(sample.values, dtype=np.float64))
        return {name: missing[:, i] for i, name in enumerate(sample.names)}
    rows_in(sample)  # validates: some columns, all of one length
    return {name: _none_mask(values) for name, values in sample.items()}


def _none_mask(values: Sequence[str | None]) -> NDArray[np.bool_]:
    return np.fromiter((value is None for value in values), dtype=np.bool_, count=len(values))


def _rows(masks: Mapping[str, NDArray[np.bool_]]) -> int:
    return len(next(iter(masks.values())))


def _fisher(
    name: str, ref_missing: int, ref_rows: int, window_missing: int, window_rows: int
) -> FeatureTest:
    """Fisher's exact test on [[missing, present] reference, [missing, present] window]."""
    from scipy.stats import fisher_exact

    table = [[ref_missing, ref_rows - ref_missing], [window_missing, window_rows - window_missing]]
    p_value = float(fisher_exact(table).pvalue)
    reference_share, window_share = ref_missing / ref_rows, window_missing / window_rows
    difference = window_share - reference_share
    return FeatureTest(
        feature=name,
        statistic=difference,
        p_value=p_value,
        effect_size=abs(difference),
        effect_size_name="missing_share_difference",
        explanation=(
            f"{name} missing in {format_share(window_share)} of the window vs "
            f"{format_share(reference_share)} of the reference"
        ),
    )
