"""Mergeable sufficient statistics (issue 21, item 1), checked both ways.

Against the exact computation: AUROC and DeLong's standard error from the 2048-bin histograms
agree with ``_auroc.delong`` on the cases within 1e-3 on several seeded score distributions
(the simulator's model, well and barely separated, rare findings, heavy ties, small windows,
scores at exactly 0 and 1), and every other metric equals ``binary_metrics``'. And the algebra:
merged per-day summaries equal the pooled summary exactly, merge is associative and commutative
(Hypothesis), subtract undoes add, and what cannot be merged or subtracted is refused.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from monitor.performance._auroc import delong
from monitor.performance.metrics import InvalidInputError, PerformanceConfig, binary_metrics
from monitor.performance.sufficient import (
    SCORE_BINS,
    IncompatibleSummariesError,
    NegativeCountError,
    PerformanceSummary,
    SummaryError,
    SummaryKey,
    SummaryLayout,
    at_threshold,
    auroc_binning_bound,
    flat_size,
    histogram_delong,
    merge,
    stacked_counts,
    stacked_deltas,
    stacked_from_bytes,
    stacked_subtract,
    stacked_to_bytes,
    summary_metrics,
)

TOLERANCE = 1e-3
"""Stated agreement of AUROC and its DeLong standard error with the exact values."""
KEY = SummaryKey("cxr", "1.0", "lesion", "site-01")
LAYOUT = SummaryLayout(threshold=0.5)

Cases = tuple[NDArray[np.bool_], NDArray[np.float64]]


def _sigmoid(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    result: NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * logits))
    return result


def logit_normal(
    n: int, prevalence: float, gap: float, intercept: float = 0.0
) -> Callable[[np.random.Generator], Cases]:
    """The simulator's score model: class logits normal, unit spread, means ``gap`` apart."""

    def draw(rng: np.random.Generator) -> Cases:
        labels = rng.random(n) < prevalence
        logits = intercept + gap * np.where(labels, 0.5, -0.5) + rng.standard_normal(n)
        return labels, _sigmoid(logits)

    return draw


def rounded(draw: Callable[[np.random.Generator], Cases], decimals: int) -> Callable[..., Cases]:
    def tied(rng: np.random.Generator) -> Cases:
        labels, scores = draw(rng)
        return labels, np.round(scores, decimals)

    return tied


def at_the_edges(rng: np.random.Generator) -> Cases:
    """A third of the scores exactly 0 or 1 (a saturated model), the rest logit-normal."""
    labels, scores = logit_normal(2000, 0.3, 1.8)(rng)
    edge = rng.random(labels.size) < 1 / 3
    scores[edge] = np.where(rng.random(labels.size) < np.where(labels, 0.7, 0.3), 1.0, 0.0)[edge]
    return labels, scores


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator], Cases]] = {
    "simulator, AUROC 0.90": logit_normal(5000, 0.2, 1.8124),
    "degraded scanner, AUROC 0.70": logit_normal(5000, 0.2, 0.74),
    "barely separated": logit_normal(5000, 0.3, 0.1),
    "well separated": logit_normal(5000, 0.2, 5.0),
    "rare finding, negatives near 0": logit_normal(500, 0.1, 1.8124, intercept=-3.0),
    "large, scores crowd near 0": logit_normal(20000, 0.05, 8.0, intercept=-4.0),
    "small window": logit_normal(40, 0.4, 1.8124),
    "heavy ties, two decimals": rounded(logit_normal(5000, 0.2, 1.8124), 2),
    "heavy ties, one decimal": rounded(logit_normal(3000, 0.3, 1.0), 1),
    "scores at 0 and 1": at_the_edges,
}


def summarise(labels: NDArray[np.bool_], scores: NDArray[np.float64]) -> PerformanceSummary:
    summary = PerformanceSummary(KEY, LAYOUT)
    summary.add(labels, scores)
    return summary


def cases(seed: int, n: int = 600) -> Cases:
    return logit_normal(n, 0.25, 1.8124)(np.random.default_rng(seed))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_auroc_and_delong_se_from_histograms_match_the_exact_values(name: str, seed: int) -> None:
    labels, scores = DISTRIBUTIONS[name](np.random.default_rng(seed))
    exact_auroc, exact_variance = delong(scores[labels], scores[~labels])
    summary = summarise(labels, scores)
    auroc, variance = histogram_delong(summary)
    assert abs(auroc - exact_auroc) <= TOLERANCE
    assert abs(auroc - exact_auroc) <= auroc_binning_bound(summary) + 1e-12
    assert abs(np.sqrt(variance) - np.sqrt(exact_variance)) <= TOLERANCE


def test_histogram_delong_is_exact_delong_on_the_bin_indices() -> None:
    labels, scores = cases(seed=7)
    bins = np.searchsorted(np.linspace(0.0, 1.0, SCORE_BINS + 1)[1:-1], scores).astype(float)
    assert histogram_delong(summarise(labels, scores)) == pytest.approx(
        delong(bins[labels], bins[~labels]), abs=1e-12
    )


def test_scores_with_few_distinct_values_give_the_exact_auroc() -> None:
    labels, scores = rounded(logit_normal(3000, 0.3, 1.0), 2)(np.random.default_rng(3))
    summary = summarise(labels, scores)
    assert auroc_binning_bound(summary) == pytest.approx(
        0.5
        * sum(
            ((scores == v) & labels).sum() * ((scores == v) & ~labels).sum()
            for v in np.unique(scores)
        )
        / (labels.sum() * (~labels).sum())
    )
    assert histogram_delong(summary) == pytest.approx(
        delong(scores[labels], scores[~labels]), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(3))
def test_summary_metrics_agree_with_binary_metrics(seed: int) -> None:
    labels, scores = cases(seed, n=3000)
    exact = binary_metrics(labels, scores, LAYOUT.threshold)
    merged = summary_metrics(summarise(labels, scores))
    assert merged.counts == exact.counts
    for name in ("prevalence", "sensitivity", "specificity", "ppv", "npv"):
        assert getattr(merged, name) == getattr(exact, name)
    assert merged.auroc is not None and exact.auroc is not None
    for field in ("estimate", "lower", "upper"):
        assert getattr(merged.auroc, field) == pytest.approx(
            getattr(exact.auroc, field), abs=TOLERANCE
        )
    assert merged.brier == pytest.approx(exact.brier, abs=1e-9)
    assert merged.ece == pytest.approx(exact.ece, abs=1e-9)
    assert [b.count for b in merged.reliability] == [b.count for b in exact.reliability]
    assert merged.calibration_slope is None and "calibration_slope" in merged.unavailable


def test_guards_and_reasons_are_those_of_binary_metrics() -> None:
    labels, scores = cases(seed=1, n=25)
    exact = binary_metrics(labels, scores, LAYOUT.threshold)
    merged = summary_metrics(summarise(labels, scores))
    exact_reasons = {k: v for k, v in exact.unavailable.items() if "calibration_" not in k}
    assert {k: v for k, v in merged.unavailable.items() if "calibration_" not in k} == (
        exact_reasons
    )
    empty = summary_metrics(PerformanceSummary(KEY, LAYOUT))
    assert empty.counts.n == 0 and empty.auroc is None and empty.brier is None


def test_merged_days_equal_the_pooled_summary_exactly() -> None:
    days = [cases(seed) for seed in range(30)]
    pooled_labels = np.concatenate([labels for labels, _ in days])
    pooled_scores = np.concatenate([scores for _, scores in days])
    merged = merge(summarise(labels, scores) for labels, scores in days)
    assert merged == summarise(pooled_labels, pooled_scores)
    exact = binary_metrics(pooled_labels, pooled_scores, LAYOUT.threshold)
    assert exact.auroc is not None
    metrics = summary_metrics(merged)
    assert metrics.auroc is not None
    assert metrics.auroc.estimate == pytest.approx(exact.auroc.estimate, abs=TOLERANCE)
    assert metrics.brier == pytest.approx(exact.brier, abs=1e-9)


case_lists = st.lists(
    st.tuples(st.booleans(), st.floats(0.0, 1.0, allow_nan=False)), min_size=0, max_size=40
)


def from_list(pairs: list[tuple[bool, float]]) -> PerformanceSummary:
    labels = np.array([label for label, _ in pairs], dtype=bool)
    return summarise(labels, np.array([score for _, score in pairs], dtype=np.float64))


@settings(max_examples=60, deadline=None)
@given(case_lists, case_lists, case_lists)
def test_merge_is_associative_and_commutative(
    a: list[tuple[bool, float]], b: list[tuple[bool, float]], c: list[tuple[bool, float]]
) -> None:
    x, y, z = from_list(a), from_list(b), from_list(c)
    assert merge([merge([x, y]), z]) == merge([x, merge([y, z])]) == merge([z, y, x])
    assert merge([x, y, z]) == from_list(a + b + c)


@settings(max_examples=60, deadline=None)
@given(case_lists, case_lists)
def test_subtract_undoes_add(
    kept: list[tuple[bool, float]], added: list[tuple[bool, float]]
) -> None:
    summary = from_list(kept)
    before = summary.copy()
    extra = from_list(added)
    summary.add(*_arrays(added))
    assert summary == merge([before, extra])
    summary.subtract(*_arrays(added))
    assert summary == before


def _arrays(pairs: list[tuple[bool, float]]) -> Cases:
    return (
        np.array([label for label, _ in pairs], dtype=bool),
        np.array([score for _, score in pairs], dtype=np.float64),
    )


def test_relabel_equals_the_summary_of_the_corrected_labels() -> None:
    labels, scores = cases(seed=2)
    summary = summarise(labels, scores)
    flipped = labels.copy()
    flipped[:50] = ~flipped[:50]
    summary.relabel(scores[:50], labels[:50], flipped[:50])
    assert summary == summarise(flipped, scores)


def test_subtracting_cases_never_added_is_refused_and_changes_nothing() -> None:
    labels, scores = cases(seed=4, n=50)
    summary = summarise(labels, scores)
    before = summary.copy()
    with pytest.raises(NegativeCountError, match="never added"):
        summary.subtract(np.ones(60, dtype=bool), np.full(60, 0.99))
    with pytest.raises(NegativeCountError):
        summary.relabel([0.42], [True], [False])  # no positive scored 0.42
    assert summary == before
    with pytest.raises(InvalidInputError):
        summary.relabel(scores[:1], labels[:1], [2])
    assert summary == before


def test_summaries_of_other_thresholds_keys_or_bins_do_not_merge() -> None:
    labels, scores = cases(seed=5)
    summary = summarise(labels, scores)
    other_threshold = PerformanceSummary(KEY, SummaryLayout(threshold=0.3))
    with pytest.raises(IncompatibleSummariesError, match="thresholds and bins must match"):
        merge([summary, other_threshold])
    with pytest.raises(IncompatibleSummariesError):
        merge([summary, PerformanceSummary(KEY, SummaryLayout(0.5, score_bins=1000))])
    other_finding = SummaryKey("cxr", "1.0", "effusion", "site-01")
    with pytest.raises(IncompatibleSummariesError, match="cannot merge"):
        merge([summary, PerformanceSummary(other_finding, LAYOUT)])
    other_site = SummaryKey("cxr", "1.0", "lesion", "site-02")
    with pytest.raises(IncompatibleSummariesError):
        merge([summary, PerformanceSummary(other_site, LAYOUT)])
    with pytest.raises(IncompatibleSummariesError, match="nothing to merge"):
        merge([])


def test_across_sites_pools_the_fleet() -> None:
    site_one, site_two = cases(seed=6), cases(seed=8)
    other = SummaryKey("cxr", "1.0", "lesion", "site-02")
    second = PerformanceSummary(other, LAYOUT)
    second.add(*site_two)
    fleet = merge([summarise(*site_one), second], across_sites=True)
    assert fleet.key.site_id is None
    assert fleet.n == site_one[0].size + site_two[0].size


def test_metrics_refuse_a_config_the_summary_cannot_serve() -> None:
    summary = summarise(*cases(seed=9))
    with pytest.raises(SummaryError, match="calibration bins"):
        summary_metrics(summary, PerformanceConfig(ece_bins=15))
    with pytest.raises(SummaryError, match="bootstrap"):
        summary_metrics(summary, PerformanceConfig(auroc_ci="bootstrap"))


def test_serialisation_round_trips_through_json() -> None:
    labels, scores = at_the_edges(np.random.default_rng(11))
    key = SummaryKey("cxr", "1.0", "lesion", None, "manufacturer", None)
    summary = PerformanceSummary(key, SummaryLayout(threshold=0.37))
    summary.add(labels, scores)
    stored = json.dumps(summary.to_dict())
    assert PerformanceSummary.from_dict(json.loads(stored)) == summary
    empty = PerformanceSummary(KEY, LAYOUT)
    assert PerformanceSummary.from_dict(json.loads(json.dumps(empty.to_dict()))) == empty


def test_stored_summaries_that_are_not_valid_are_refused() -> None:
    data = summarise(*cases(seed=12)).to_dict()
    with pytest.raises(SummaryError, match="format"):
        PerformanceSummary.from_dict({**data, "format": 99})
    with pytest.raises(SummaryError, match="negative"):
        PerformanceSummary.from_dict({**data, "confusion": [[-1, 0], [0, 0]]})
    with pytest.raises(SummaryError):
        PerformanceSummary.from_dict({**data, "calibration": [[1, 2]]})


def test_storage_bytes_round_trip_and_refuse_what_does_not_fit() -> None:
    summary = summarise(*cases(seed=13))
    blob = summary.to_bytes()
    assert PerformanceSummary.from_bytes(KEY, LAYOUT, blob) == summary
    empty = PerformanceSummary(KEY, LAYOUT)
    assert PerformanceSummary.from_bytes(KEY, LAYOUT, empty.to_bytes()) == empty
    with pytest.raises(SummaryError, match="expected"):  # another layout's bins
        PerformanceSummary.from_bytes(KEY, SummaryLayout(threshold=0.5, score_bins=1024), blob)
    with pytest.raises(SummaryError, match="not a stored"):
        PerformanceSummary.from_bytes(KEY, LAYOUT, b"not zlib")
    negative = zlib.compress(np.full(flat_size(LAYOUT), -1, "<i8").tobytes())  # format 1
    with pytest.raises(SummaryError, match="negative"):
        PerformanceSummary.from_bytes(KEY, LAYOUT, negative)


def test_re_scoring_at_another_threshold_is_exact_on_bin_edges() -> None:
    labels, scores = cases(seed=14)
    at_half = summarise(labels, scores)
    moved = at_threshold(at_half, 0.25)  # 512 / 2048: a bin edge
    direct = PerformanceSummary(KEY, SummaryLayout(threshold=0.25))
    direct.add(labels, scores)
    assert moved.layout == direct.layout
    if not np.isin(scores, [0.25]).any():  # a score exactly on the edge sits in the bin below
        assert np.array_equal(moved.confusion, direct.confusion)
    assert np.array_equal(moved.histogram, direct.histogram)
    with pytest.raises(SummaryError):
        at_threshold(at_half, 1.5)


def test_stacked_updates_give_the_bytes_of_summary_by_summary_updates() -> None:
    """The batch transaction's update of many rows at once (``stacked_*``) against the
    per-summary path it replaced: decode, add the new cases, relabel the corrected ones,
    encode. Equal bytes, rows at several thresholds, scores on bin edges and at 0 and 1."""
    rng = np.random.default_rng(21)
    thresholds = (0.5, 0.37, 0.25)
    n_rows = 12
    row_thresholds = [thresholds[row % 3] for row in range(n_rows)]
    before = []
    for row in range(n_rows):  # rows already holding cases, one of them empty
        summary = PerformanceSummary(KEY, SummaryLayout(threshold=row_thresholds[row]))
        if row:
            summary.add(*at_the_edges(rng))
        before.append(summary)
    labels, scores = at_the_edges(rng)
    scores[::7] = rng.choice([*thresholds, 1 / 2048, 0.1], size=scores[::7].size)  # on edges
    rows = rng.integers(0, n_rows, size=labels.size)
    new, moved = slice(0, labels.size // 2), slice(labels.size // 2, None)
    old_labels = labels[moved].copy()  # the corrected cases, first counted with these labels
    for summary_row, summary in enumerate(before):
        mine = rows[moved] == summary_row
        summary.add(old_labels[mine], scores[moved][mine])
    blobs = [summary.to_bytes() for summary in before]
    expected = []
    for row, summary in enumerate(before):
        summary = PerformanceSummary.from_bytes(KEY, summary.layout, blobs[row])
        mine_new, mine_moved = rows[new] == row, rows[moved] == row
        summary.add(labels[new][mine_new], scores[new][mine_new])
        summary.relabel(scores[moved][mine_moved], old_labels[mine_moved], ~old_labels[mine_moved])
        expected.append(summary)
    case_thresholds = np.array([row_thresholds[row] for row in rows])
    stacked = stacked_from_bytes(LAYOUT, blobs)
    stacked += stacked_deltas(
        LAYOUT, n_rows, rows[new], labels[new], scores[new], case_thresholds[new]
    )
    removed = stacked_deltas(
        LAYOUT, n_rows, rows[moved], old_labels, scores[moved], case_thresholds[moved]
    )
    stacked_subtract(stacked, removed, LAYOUT, list(range(n_rows)))
    stacked += stacked_deltas(
        LAYOUT, n_rows, rows[moved], ~old_labels, scores[moved], case_thresholds[moved]
    )
    assert stacked_to_bytes(stacked, LAYOUT) == [summary.to_bytes() for summary in expected]
    assert stacked_counts(stacked, LAYOUT).tolist() == [summary.n for summary in expected]


def test_stacked_updates_refuse_what_the_summaries_refuse() -> None:
    summary = summarise(*cases(seed=22, n=50))
    stacked = stacked_from_bytes(LAYOUT, [summary.to_bytes()])
    kept = stacked.copy()
    never_added = stacked_deltas(LAYOUT, 1, [0], [True], [0.42], [0.5])
    with pytest.raises(NegativeCountError, match="never added"):
        stacked_subtract(stacked, never_added, LAYOUT, ["row 0"])
    assert np.array_equal(stacked, kept)
    with pytest.raises(InvalidInputError):
        stacked_deltas(LAYOUT, 1, [0], [2], [0.5], [0.5])
    with pytest.raises(InvalidInputError):
        stacked_deltas(LAYOUT, 1, [0], [1], [1.5], [0.5])
    with pytest.raises(InvalidInputError, match="threshold"):
        stacked_deltas(LAYOUT, 1, [0], [1], [0.5], [1.5])
    with pytest.raises(SummaryError, match="outside"):
        stacked_deltas(LAYOUT, 1, [1], [1], [0.5], [0.5])
    with pytest.raises(SummaryError, match="expected"):
        stacked_from_bytes(SummaryLayout(threshold=0.5, score_bins=1024), [summary.to_bytes()])
    with pytest.raises(SummaryError, match="not a stored"):
        stacked_from_bytes(LAYOUT, [b"not zlib"])
