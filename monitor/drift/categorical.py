"""Per-feature chi-square drift test on categorical features (modality, manufacturer, kernel...).

For each feature the reference and window counts form a 2 x K contingency table over the union
of their categories, tested with ``scipy.stats.chi2_contingency`` (no continuity correction);
p-values are corrected across features (:mod:`monitor.drift.multiple_testing`). The effect size
is Cramér's V of the two samples' category *shares* (each side weighted equally) or, when
larger, the share of the window in categories the reference never had.

Why shares: V of the raw 2 x K table depends on the reference-to-window size ratio. The same
change in view mix gives about 0.45 w (w: Cohen's effect size) against a reference four times
the window, but only 0.15 w against a 13-week reference forty-six times a window of 100, so a
fixed floor of 0.1 meant a small change with a short reference and an enormous one with a long
reference. Balanced, V is about 0.5 w at any ratio: 0 for equal shares, 1 for disjoint
categories. The unseen share reads the same at any ratio too.

Rare reference categories are pooled into ``"(other)"`` first, because the chi-square
approximation needs expected counts of about five or more; categories absent from the reference
keep their own columns (their window count makes the column total positive) so they can be
named. Missing values (None) are left out here; the missingness detector tests them.

A 2 x 2 table with an expected count below ``min_expected`` (one category against a pooled
"(other)" that the window expects a fraction of an event in) takes Fisher's exact p-value
(``exact_2x2``): the chi-square's tail is liberal there.

**Ordered categories** (``ordinal``; by default the age band) are tested as an order, not as
unrelated labels: a Mann-Whitney test on the categories' ranks (``scipy.stats.mannwhitneyu``,
two-sided, tie-corrected), with the effect the shift of the mean category index in reference
standard deviations. An older population moves the whole age mix one way; the chi-square
spreads that one-dimensional move over nine degrees of freedom of sampling noise, and a
threshold learned from the noise of nine dimensions hides it (docs/benchmarks.md, "An ordinal
test for the age band"). A window holding a value outside the order is tested by chi-square.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from monitor.drift.base import (
    CategoricalColumns,
    DriftResult,
    FeatureAttribution,
    InsufficientDataError,
    NotFittedError,
    register,
)
from monitor.drift.multiple_testing import FeatureTest, FeatureTestConfig, decide, skipped_feature
from monitor.events import AGE_BANDS

# scipy is imported in the functions that call it: the service settings import this module's
# config, so every `radsentry` command would pay for it (docs/benchmarks.md, "CLI start").

OTHER = "(other)"
_MAX_UNSEEN_NAMED = 3  # beyond this an explanation stops being readable


class ChiSquareConfig(FeatureTestConfig):
    """Settings of the per-feature chi-square test; stored (as a fingerprint) with every result.

    ``min_effect_size`` is the floor on max(Cramér's V, share of the window unseen in the
    reference). ``min_window`` / ``min_reference`` apply to the rows of a sample and, after
    missing values are dropped, to each feature: a feature below them is skipped, not failed.
    """

    min_expected: float = Field(default=5.0, gt=0.0)
    """Reference categories whose expected count (reference share x the smaller sample) falls
    below this are pooled into "(other)" so the chi-square approximation holds."""
    exact_2x2: bool = True
    """A 2 x 2 table (one category against the rest, e.g. a rare pooled "(other)") with an
    expected count below ``min_expected`` gets Fisher's exact p-value instead of the
    chi-square's, which is liberal there (docs/benchmarks.md, "An ordinal test for the age
    band": OpenI's BodyPartExamined)."""
    ordinal: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {"PatientAgeBand": tuple(AGE_BANDS)}
    )
    """Features whose categories have an order (lowest first): tested by Mann-Whitney on the
    categories' ranks, effect the mean rank's shift in reference sd (``mean_shift_sd``). A
    window or reference holding a value outside the order, or a reference with a single
    category, is tested by chi-square instead. ``{}``: every feature by chi-square."""


_DEFAULT_CONFIG = ChiSquareConfig()


def rows_in(columns: CategoricalColumns) -> int:
    """The number of events in a column set.

    Raises ValueError when there are no columns or their lengths differ (a column per field,
    a value per event: a ragged set is a caller's bug, not missing data).
    """
    if not columns:
        raise ValueError("no features")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every feature needs one value per event, got lengths {lengths}")
    return next(iter(lengths.values()))


@dataclass(frozen=True, slots=True)
class _FittedReference:
    """What ``fit`` keeps: each feature's category counts (missing values left out)."""

    names: tuple[str, ...]
    counts: tuple[Counter[str], ...]
    n_rows: int


@dataclass(frozen=True, slots=True)
class _Table:
    """A 2 x K contingency table: row 0 reference, row 1 window, labelled columns."""

    labels: tuple[str, ...]
    counts: NDArray[np.int64]
    n_unseen: int  # the last n_unseen columns hold categories absent from the reference


@register("chi2")
class ChiSquareDetector:
    """Chi-square test of category shares per feature, Bonferroni or BH corrected across them."""

    name: ClassVar[str]

    def __init__(self, config: ChiSquareConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self._reference: _FittedReference | None = None

    def fit(self, reference: CategoricalColumns) -> Self:
        """Count the reference categories of every feature.

        Raises ValueError for no features or ragged columns, InsufficientDataError when the
        reference has fewer than ``min_reference`` rows. A feature with fewer than
        ``min_reference`` non-missing values is kept but will be reported as not tested.
        """
        n_rows = rows_in(reference)
        if n_rows < self.config.min_reference:
            raise InsufficientDataError(
                f"reference has {n_rows} rows; at least {self.config.min_reference} are needed"
            )
        self._reference = _FittedReference(
            names=tuple(reference),
            counts=tuple(_count(values) for values in reference.values()),
            n_rows=n_rows,
        )
        return self

    def score(self, window: CategoricalColumns) -> DriftResult:
        """Test a window against the fitted reference, feature by feature.

        ``statistic`` is the largest chi-square statistic, ``p_value`` the smallest adjusted
        p-value, ``effect_size`` the largest effect among drifting features (of all tested
        features when none drifts), named ``"cramers_v"`` or ``"share_unseen"`` after the
        measure that gave it. ``n_reference`` and ``n_window`` count rows.

        Raises NotFittedError before ``fit``; ValueError when the features differ from the
        reference's or the columns are ragged; InsufficientDataError when the window has fewer
        than ``min_window`` rows or no feature has enough non-missing values on both sides.
        """
        reference = self._fitted()
        if set(window) != set(reference.names):
            raise ValueError(
                f"window features {sorted(window)} differ from the reference's "
                f"{sorted(reference.names)}"
            )
        n_rows = rows_in(window)
        if n_rows < self.config.min_window:
            raise InsufficientDataError(
                f"window has {n_rows} rows; at least {self.config.min_window} are needed"
            )
        tests: list[FeatureTest] = []
        skipped: list[FeatureAttribution] = []
        for name, reference_counts in zip(reference.names, reference.counts, strict=True):
            window_counts = _count(window[name])
            reason = self.config.too_few(reference_counts.total(), window_counts.total())
            if reason is not None:
                skipped.append(skipped_feature(name, reason))
                continue
            order = self.config.ordinal.get(name)
            ordinal = None
            if order is not None:
                ordinal = _ordinal_test(name, order, reference_counts, window_counts)
            if ordinal is not None:
                tests.append(ordinal)
                continue
            table = _contingency_table(reference_counts, window_counts, self.config.min_expected)
            exact = self.config.exact_2x2 and _sparse_2x2(table, self.config.min_expected)
            tests.append(_chi_square(name, table, exact=exact))
        if not tests:
            raise InsufficientDataError(
                "no feature has enough non-missing values: "
                + "; ".join(item.explanation or item.feature for item in skipped)
            )
        decision = decide(tests, skipped, self.config)
        return decision.to_result(self.name, self.config, reference.n_rows, n_rows)

    def _fitted(self) -> _FittedReference:
        if self._reference is None:
            raise NotFittedError("call fit(reference) before score(window)")
        return self._reference


def _count(values: Sequence[str | None]) -> Counter[str]:
    return Counter(value for value in values if value is not None)


def _contingency_table(
    reference: Counter[str], window: Counter[str], min_expected: float
) -> _Table:
    """Reference categories (rare ones pooled into "(other)"), then unseen ones, as columns.

    "Rare" is judged under the null hypothesis alone (reference share x the smaller sample), so
    the window's own counts cannot decide how it is tested. A single rare category is left
    alone: pooling it would only rename it.
    """
    smaller = min(reference.total(), window.total())
    rare = {c for c, n in reference.items() if n / reference.total() * smaller < min_expected}
    if len(rare) < 2:
        rare = set()
    kept = sorted(set(reference) - rare)
    unseen = sorted(set(window) - set(reference), key=lambda c: (-window[c], c))
    labels = [*kept, *([OTHER] if rare else []), *unseen]
    reference_row = [reference[c] for c in kept] + ([_sum(reference, rare)] if rare else [])
    window_row = [window[c] for c in kept] + ([_sum(window, rare)] if rare else [])
    counts = np.array(
        [reference_row + [0] * len(unseen), window_row + [window[c] for c in unseen]],
        dtype=np.int64,
    )
    return _Table(labels=tuple(labels), counts=counts, n_unseen=len(unseen))


def _sum(counts: Counter[str], categories: set[str]) -> int:
    return sum(counts[c] for c in categories)


def _sparse_2x2(table: _Table, min_expected: float) -> bool:
    """Whether ``table`` is 2 x 2 with an expected count below ``min_expected``."""
    if table.counts.shape != (2, 2):
        return False
    counts = table.counts.astype(np.float64)
    expected = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / counts.sum()
    return bool(expected.min() < min_expected)


def _chi_square(name: str, table: _Table, exact: bool = False) -> FeatureTest:
    """Chi-square statistic, p-value and effect size of one feature's table (with ``exact``,
    Fisher's exact p-value of the 2 x 2 table instead of the chi-square's)."""
    if len(table.labels) < 2:
        # One category on both sides: the shares cannot differ, and scipy's V would divide by 0.
        return FeatureTest(
            feature=name,
            statistic=0.0,
            p_value=1.0,
            effect_size=0.0,
            effect_size_name="cramers_v",
            explanation=f"{name}: a single category ({table.labels[0]}) in reference and window",
        )
    from scipy.stats import chi2_contingency

    result = chi2_contingency(table.counts, correction=False)
    statistic, p_value = float(result.statistic), float(result.pvalue)
    if exact:
        from scipy.stats import fisher_exact

        p_value = float(fisher_exact(table.counts).pvalue)
    cramers_v = balanced_cramers_v(table.counts)
    window_row = table.counts[1]
    share_unseen = float(window_row[len(window_row) - table.n_unseen :].sum() / window_row.sum())
    unseen_leads = share_unseen > cramers_v
    return FeatureTest(
        feature=name,
        statistic=statistic,
        p_value=p_value,
        effect_size=share_unseen if unseen_leads else cramers_v,
        effect_size_name="share_unseen" if unseen_leads else "cramers_v",
        explanation=(
            f"{_describe_change(name, table)} "
            f"(chi-square {statistic:.1f}, Cramér's V {cramers_v:.2f})"
        ),
    )


def _ordinal_test(
    name: str, order: tuple[str, ...], reference: Counter[str], window: Counter[str]
) -> FeatureTest | None:
    """Mann-Whitney on the ranks of ordered categories, with the mean rank's shift in reference
    sd as the effect; None when a value lies outside ``order`` or the reference has one
    category (no spread to measure against): the caller then uses the chi-square."""
    if not (set(reference) | set(window)) <= set(order):
        return None
    reference_n = np.array([reference[c] for c in order], dtype=np.float64)
    window_n = np.array([window[c] for c in order], dtype=np.float64)
    ranks = np.arange(len(order), dtype=np.float64)
    reference_mean = float(ranks @ reference_n / reference_n.sum())
    reference_sd = float(np.sqrt(((ranks - reference_mean) ** 2) @ reference_n / reference_n.sum()))
    if reference_sd == 0.0:
        return None
    window_mean = float(ranks @ window_n / window_n.sum())
    from scipy.stats import mannwhitneyu

    result = mannwhitneyu(
        np.repeat(ranks, reference_n.astype(np.int64)),
        np.repeat(ranks, window_n.astype(np.int64)),
        alternative="two-sided",
        method="asymptotic",
    )
    p_value = float(result.pvalue) if np.isfinite(result.pvalue) else 1.0
    effect = abs(window_mean - reference_mean) / reference_sd
    return FeatureTest(
        feature=name,
        statistic=float(result.statistic),
        p_value=p_value,
        effect_size=effect,
        effect_size_name="mean_shift_sd",
        explanation=(
            f"{_describe_order(name, order, reference_n, window_n)} "
            f"(Mann-Whitney p {p_value:.2g}, mean shift {effect:.2f} sd)"
        ),
    )


def _describe_order(
    name: str,
    order: tuple[str, ...],
    reference: NDArray[np.float64],
    window: NDArray[np.float64],
) -> str:
    """The cut of the order where the two samples' shares differ most: "PatientAgeBand 60-69 or
    above: 45% of the window vs 28% of the reference"."""
    # Share at or above each category; the first cut (everything) is the same on both sides.
    above_reference = np.cumsum(reference[::-1])[::-1] / reference.sum()
    above_window = np.cumsum(window[::-1])[::-1] / window.sum()
    i = 1 + int(np.argmax(np.abs(above_window[1:] - above_reference[1:])))
    return (
        f"{name} {order[i]} or above: {format_share(float(above_window[i]))} of the window vs "
        f"{format_share(float(above_reference[i]))} of the reference"
    )


def balanced_cramers_v(counts: NDArray[np.int64]) -> float:
    """Cramér's V of a 2 x K table with each row rescaled to the same total: V of the two
    samples' category shares, whatever their sizes (0 when equal, 1 when disjoint)."""
    shares = counts / counts.sum(axis=1, keepdims=True)
    expected = shares.mean(axis=0)  # each row holds a total of 1; every column total is > 0
    statistic = float((((shares - expected) ** 2) / expected).sum())
    return float(np.sqrt(statistic / 2.0))  # N = 2 and min(rows, columns) - 1 = 1


def _describe_change(name: str, table: _Table) -> str:
    """Name the categories absent from the reference or, if none, the largest share change."""
    reference_shares = table.counts[0] / table.counts[0].sum()
    window_shares = table.counts[1] / table.counts[1].sum()
    if table.n_unseen:
        first_unseen = len(table.labels) - table.n_unseen
        named = range(first_unseen, first_unseen + min(table.n_unseen, _MAX_UNSEEN_NAMED))
        parts = [
            f"{name} = {table.labels[i]}: {format_share(window_shares[i])} of the window, "
            "absent from the reference"
            for i in named
        ]
        more = table.n_unseen - len(named)
        return "; ".join(parts) + (f"; {more} more unseen categories" if more > 0 else "")
    i = int(np.argmax(np.abs(window_shares - reference_shares)))
    return (
        f"{name} = {table.labels[i]}: {format_share(window_shares[i])} of the window vs "
        f"{format_share(reference_shares[i])} of the reference"
    )


def format_share(share: float) -> str:
    """A share as a percentage for explanations; one decimal below 1%, so 0.4% does not read 0%."""
    return f"{share:.1%}" if 0.0 < share < 0.01 else f"{share:.0%}"
