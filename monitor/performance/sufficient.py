"""Mergeable sufficient statistics of labelled predictions (issue 21, item 1; library only).

A :class:`PerformanceSummary` holds, for one :class:`SummaryKey` (site, model, version, finding,
subgroup value) and one time bucket, everything :func:`summary_metrics` needs, and nothing per
case:

* per label class, a histogram of the scores over ``SCORE_BINS`` (2048) equal-width bins of
  [0, 1]: the AUROC and DeLong's variance are computed from it with every pair of cases in the
  same bin counted as a tie (one half, as the Mann-Whitney statistic counts real ties);
* the confusion counts at the operating threshold (a case is predicted positive when
  ``score >= threshold``), so the threshold belongs to the :class:`SummaryLayout`;
* per class and calibration bin (``sklearn.calibration_curve``'s assignment, as
  :func:`monitor.performance._calibration.reliability_bins`): the count, the sum of the scores
  and the sum of their squares, giving the reliability bins, the ECE and the Brier score.

Every field is an integer array (score sums in fixed point, units of 2**-32), so ``add``,
``subtract`` and :func:`merge` are exact: merging per-day summaries gives bit for bit the summary
of the pooled cases, in any order and grouping.

Why 2048 bins: binning only changes the order of a positive and a negative that share a bin, so
``|AUROC from bins - exact AUROC| <= auroc_binning_bound()`` (half the share of pairs sharing a
bin), and in practice far less because the errors cancel. The largest error measured by
``benchmarks/bench_sufficient_resolution.py`` on the simulator's score model (AUROC 0.70 to near
1, rare findings whose negatives crowd near 0, 500 to 20,000 cases) is 4.4e-4 for the AUROC and
1.2e-4 for its DeLong standard error at 2048 bins, against 1.8e-3 at 500 bins and 6.6e-4 at
1000: 2048 keeps the 1e-3 tolerance with a margin of two. A power of two makes every bin edge an
exact binary fraction, so a score's bin does not depend on rounding. Two histograms of 2048
int64 are 32 KiB in memory; ``to_dict`` stores only the non-empty bins.

Hand-written: the histograms are two ``numpy.bincount`` calls, and no maintained library keeps
DeLong's variance mergeable (see ``_auroc.py`` for DeLong itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Final, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitor.performance import _summary_bytes
from monitor.performance._calibration import ReliabilityBin, expected_calibration_error
from monitor.performance.metrics import (
    BinaryMetrics,
    ConfusionCounts,
    Interval,
    PerformanceConfig,
    PerformanceError,
    _class_shortfall,
    delong_interval,
    validated,
    wilson_intervals_of,
)

SCORE_BINS: Final = 2048
"""Bins of the per-class score histograms (see the module docstring for why)."""
FIXED_POINT: Final = 2**32
"""Score sums are integers in units of 1 / FIXED_POINT: exact under add, subtract and merge."""
FORMAT_VERSION: Final = 1
"""Version of :meth:`PerformanceSummary.to_dict`'s layout."""
_INT = np.int64
_FLOAT_EXACT_CASES: Final = 2**21
_DELONG_CHUNK: Final = 32
"""Histograms stacked per array pass: enough to amortise numpy's per-call cost, few enough
to stay in cache (32 x 2 x 2048 float64 = 1 MiB)."""
Counts = NDArray[np.int64]
Deltas = tuple[Counts, Counts, Counts]


class SummaryError(PerformanceError, ValueError):
    """A summary operation that would give a wrong or meaningless summary."""


class IncompatibleSummariesError(SummaryError):
    """Summaries of different keys, thresholds or bins, which cannot be merged."""


class NegativeCountError(SummaryError):
    """Subtracting cases the summary does not hold."""


@dataclass(frozen=True, slots=True)
class SummaryKey:
    """What a summary describes. ``site_id`` None: pooled over all sites of the model."""

    model_name: str
    model_version: str
    finding: str
    site_id: str | None
    subgroup_field: str | None = None
    """None for all cases; else the metadata field the subgroup is a value of."""
    subgroup_value: str | None = None
    """The subgroup's value; None with a field set is the cases missing that field."""


@dataclass(frozen=True, slots=True)
class SummaryLayout:
    """What makes two summaries' numbers comparable: both must have the same to merge."""

    threshold: float
    score_bins: int = SCORE_BINS
    calibration_bins: int = 10
    """Equal to ``PerformanceConfig.ece_bins`` of the config the metrics are computed with."""


class PerformanceSummary:
    """Sufficient statistics of one key and bucket; ``add`` and ``subtract`` change it in place.

    Arrays (read them, do not write them): ``histogram[label, bin]``, ``confusion[label,
    predicted]`` and ``calibration[label, quantity, bin]`` with quantity 0 the count, 1 the
    fixed-point score sum, 2 the fixed-point sum of squared scores.
    """

    __slots__ = ("calibration", "confusion", "histogram", "key", "layout")

    def __init__(self, key: SummaryKey, layout: SummaryLayout) -> None:
        _check_layout(layout)
        self.key = key
        self.layout = layout
        self.histogram: Counts = np.zeros((2, layout.score_bins), dtype=_INT)
        self.confusion: Counts = np.zeros((2, 2), dtype=_INT)
        self.calibration: Counts = np.zeros((2, 3, layout.calibration_bins), dtype=_INT)

    @property
    def n(self) -> int:
        """Cases summarised."""
        return int(self.confusion.sum())

    def add(self, labels: ArrayLike, scores: ArrayLike) -> None:
        """Count cases (labels 0/1, scores in [0, 1]); InvalidInputError for bad input."""
        for array, delta in zip(self._arrays(), self._deltas(labels, scores), strict=True):
            array += delta

    def subtract(self, labels: ArrayLike, scores: ArrayLike) -> None:
        """Remove cases counted before; NegativeCountError (nothing changed) if not held.

        The summary cannot tell which cases it holds, only that no count goes below zero:
        subtract exactly the (label, score) pairs that were added.
        """
        self._apply(removed=self._deltas(labels, scores))

    def relabel(self, scores: ArrayLike, old_labels: ArrayLike, new_labels: ArrayLike) -> None:
        """Label corrections: each case's old contribution out, its new one in; all or nothing."""
        self._apply(
            removed=self._deltas(old_labels, scores), added=self._deltas(new_labels, scores)
        )

    def _apply(self, removed: Deltas, added: Deltas | None = None) -> None:
        names = ("score histogram", "confusion counts", "calibration sums")
        for name, array, delta in zip(names, self._arrays(), removed, strict=True):
            if (array < delta).any():
                raise NegativeCountError(
                    f"subtracting {int(delta.sum())} cases from {self.key}: the {name} would go "
                    "negative, so some of them were never added"
                )
        for array, minus, plus in zip(self._arrays(), removed, added or removed, strict=True):
            array -= minus
            if added is not None:
                array += plus

    def copy(self) -> PerformanceSummary:
        clone = PerformanceSummary(self.key, self.layout)
        for mine, theirs in zip(clone._arrays(), self._arrays(), strict=True):
            mine += theirs
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PerformanceSummary):
            return NotImplemented
        return (self.key, self.layout) == (other.key, other.layout) and all(
            np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays(), strict=True)
        )

    def __repr__(self) -> str:
        return f"PerformanceSummary({self.key}, {self.layout}, n={self.n})"

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict: non-empty histogram bins as ``[bin, count]`` pairs, the rest dense."""
        key, layout = self.key, self.layout
        return {
            "format": FORMAT_VERSION,
            "key": {name: getattr(key, name) for name in _KEY_FIELDS},
            "layout": {name: getattr(layout, name) for name in _LAYOUT_FIELDS},
            "histogram": [
                np.column_stack([np.flatnonzero(row), row[row != 0]]).tolist()
                for row in self.histogram
            ],
            "confusion": self.confusion.tolist(),
            "calibration": self.calibration.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PerformanceSummary:
        """The summary :meth:`to_dict` wrote; SummaryError for another format or bad counts."""
        if data.get("format") != FORMAT_VERSION:
            raise SummaryError(f"summary format {data.get('format')!r}, {FORMAT_VERSION} expected")
        key, layout, histogram = data.get("key"), data.get("layout"), data.get("histogram")
        if not (isinstance(key, Mapping) and isinstance(layout, Mapping)):
            raise SummaryError("not a stored performance summary: no key or layout")
        if not (isinstance(histogram, list) and len(histogram) == 2):
            raise SummaryError("not a stored performance summary: two histograms expected")
        try:
            summary = cls(SummaryKey(**key), SummaryLayout(**layout))
            for label, pairs in enumerate(histogram):
                index = np.asarray(pairs, dtype=_INT).reshape(-1, 2)
                summary.histogram[label, index[:, 0]] = index[:, 1]
            summary.confusion[...] = np.asarray(data["confusion"], dtype=_INT)
            summary.calibration[...] = np.asarray(data["calibration"], dtype=_INT)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise SummaryError(f"not a stored performance summary: {error}") from error
        if any((array < 0).any() for array in summary._arrays()):
            raise SummaryError("a stored performance summary holds a negative count")
        return summary

    def to_bytes(self) -> bytes:
        """The counts in the storage format (``_summary_bytes``: format 2, a sparse or dense
        histogram in its narrowest integer type, no compression; key and layout are the
        caller's to keep)."""
        flat = np.concatenate([a.ravel() for a in self._arrays()])
        return _summary_bytes.encode(flat, self.histogram.size)

    @classmethod
    def from_bytes(cls, key: SummaryKey, layout: SummaryLayout, blob: bytes) -> PerformanceSummary:
        """The summary :meth:`to_bytes` wrote for ``key`` and ``layout`` (format 2, or the
        zlib-compressed format 1 of rows written before); SummaryError when the blob does not
        fit the layout or holds a negative count."""
        return summaries_from_bytes([key], [layout], [blob])[0]

    @classmethod
    def _of_counts(cls, key: SummaryKey, layout: SummaryLayout, counts: Counts) -> Self:
        """The summary whose arrays are views of ``counts`` (``to_bytes`` order; the summary
        owns it from now on): no copy, for the 3,400 rows a full refresh decodes."""
        summary = cls.__new__(cls)
        _check_layout(layout)
        bins, coarse = layout.score_bins, layout.calibration_bins
        summary.key, summary.layout = key, layout
        summary.histogram = counts[: 2 * bins].reshape(2, bins)
        summary.confusion = counts[2 * bins : 2 * bins + 4].reshape(2, 2)
        summary.calibration = counts[2 * bins + 4 :].reshape(2, 3, coarse)
        return summary

    def _arrays(self) -> Deltas:
        return self.histogram, self.confusion, self.calibration

    def _deltas(self, labels: ArrayLike, scores: ArrayLike) -> Deltas:
        """What the cases add to each array."""
        positive, score = validated(labels, scores, self.layout.threshold)
        label = positive.astype(_INT)
        bins = self.layout.score_bins
        fine = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], score)
        histogram = np.bincount(label * bins + fine, minlength=2 * bins).reshape(2, bins)
        predicted = (score >= self.layout.threshold).astype(_INT)
        confusion = np.bincount(label * 2 + predicted, minlength=4).reshape(2, 2)
        return histogram, confusion, self._calibration_delta(label, score)

    def _calibration_delta(self, label: Counts, score: NDArray[np.float64]) -> Counts:
        coarse = self.layout.calibration_bins
        edges = np.linspace(0.0, 1.0, coarse + 1)[1:-1]
        slot = label * coarse + np.searchsorted(edges, score)
        quantities = (
            np.ones_like(label),
            np.rint(score * FIXED_POINT).astype(_INT),
            np.rint(score * score * FIXED_POINT).astype(_INT),
        )
        delta = np.zeros((3, 2 * coarse), dtype=_INT)
        # bincount sums in float64, exact while every sum stays below 2**53: each value is
        # below 2**32, so batches up to 2**21 cases; larger ones group int64 sums with add.at.
        exact_in_float = len(slot) < _FLOAT_EXACT_CASES
        for row, values in enumerate(quantities):
            if exact_in_float:
                delta[row] = np.bincount(slot, weights=values, minlength=2 * coarse).astype(_INT)
            else:
                np.add.at(delta[row], slot, values)
        return delta.reshape(3, 2, coarse).transpose(1, 0, 2).copy()


# --- many summaries at once: the batch transaction's update ----------------------------------
#
# A batch changes a few hundred stored summaries (every day, subgroup value and the totals its
# cases fall in). Decoding each into a PerformanceSummary, adding its few cases with numpy calls
# sized for one summary and encoding it again cost about 1 ms a row; the functions below work on
# all rows of a batch as one int64 matrix, one row per summary in ``to_bytes`` order (histogram,
# confusion, calibration), and give the same bytes (docs/benchmarks.md, "Labelled replay:
# vectorised statistics").


def flat_size(layout: SummaryLayout) -> int:
    """Counts of one summary in :meth:`PerformanceSummary.to_bytes` order."""
    return 2 * layout.score_bins + 4 + 6 * layout.calibration_bins


def stacked_from_bytes(layout: SummaryLayout, blobs: Sequence[bytes]) -> Counts:
    """The counts of :meth:`PerformanceSummary.to_bytes` blobs of ``layout``'s bins (either
    storage format), one row each; SummaryError when a blob does not fit the layout or holds
    a negative count."""
    size = flat_size(layout)
    stacked = np.empty((len(blobs), size), dtype=_INT)
    for index, blob in enumerate(blobs):
        try:
            _summary_bytes.decode_into(blob, stacked[index], 2 * layout.score_bins)
        except _summary_bytes.NegativeCountError as error:
            raise SummaryError(str(error)) from error
        except _summary_bytes.EncodingError as error:
            raise SummaryError(f"not a stored performance summary: {error}") from error
    return stacked


def summaries_from_bytes(
    keys: Sequence[SummaryKey], layouts: Sequence[SummaryLayout], blobs: Sequence[bytes]
) -> list[PerformanceSummary]:
    """:meth:`PerformanceSummary.from_bytes` of each (key, layout, blob), decoded together
    (layouts that differ in their threshold only; SummaryError otherwise)."""
    if not blobs:
        return []
    bins = {replace(layout, threshold=0.5) for layout in layouts}
    if len(bins) != 1:
        raise IncompatibleSummariesError(
            f"summaries of several bin layouts: {sorted(map(str, bins))}"
        )
    stacked = stacked_from_bytes(layouts[0], blobs)
    return [
        PerformanceSummary._of_counts(key, layout, counts)
        for key, layout, counts in zip(keys, layouts, stacked, strict=True)
    ]


def stacked_to_bytes(stacked: Counts, layout: SummaryLayout) -> list[bytes]:
    """Each row as :meth:`PerformanceSummary.to_bytes` writes the summary of those counts
    (``layout``'s bins)."""
    return [_summary_bytes.encode(row, 2 * layout.score_bins) for row in stacked]


def stacked_counts(stacked: Counts, layout: SummaryLayout) -> Counts:
    """Cases summarised per row (:attr:`PerformanceSummary.n`)."""
    start = 2 * layout.score_bins
    result: Counts = stacked[:, start : start + 4].sum(axis=1)
    return result


def stacked_deltas(
    layout: SummaryLayout,
    n_rows: int,
    rows: ArrayLike,
    labels: ArrayLike,
    scores: ArrayLike,
    thresholds: ArrayLike,
) -> Counts:
    """What cases add to the summaries of ``n_rows`` rows: case ``i`` goes to row ``rows[i]``
    with its label, score and operating threshold (``layout``'s bins; its threshold unused).
    The same counts, case by case, as :meth:`PerformanceSummary.add`; InvalidInputError for
    bad labels, scores or thresholds."""
    threshold = np.asarray(thresholds, dtype=np.float64)
    row = np.asarray(rows, dtype=np.intp)
    if threshold.shape != row.shape or not np.isfinite(threshold).all():
        raise SummaryError("one finite threshold and one row per case")
    bad = (threshold < 0.0) | (threshold > 1.0)
    positive, score = validated(labels, scores, float(threshold[bad][0]) if bad.any() else 0.5)
    if score.shape != row.shape:
        raise SummaryError(f"{row.size} rows for {score.size} cases")
    if row.size and (row.min() < 0 or row.max() >= n_rows):
        raise SummaryError(f"a case's row lies outside the {n_rows} rows")
    label = positive.astype(_INT)
    bins, coarse = layout.score_bins, layout.calibration_bins
    fine = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], score)
    predicted = (score >= threshold).astype(_INT)
    slot = np.searchsorted(np.linspace(0.0, 1.0, coarse + 1)[1:-1], score)
    size = flat_size(layout)
    start = row.astype(_INT) * size
    confusion_at, calibration_at = start + 2 * bins, start + 2 * bins + 4 + label * 3 * coarse
    ones = np.ones_like(label)
    index = np.concatenate(
        [
            start + label * bins + fine,
            confusion_at + label * 2 + predicted,
            calibration_at + slot,
            calibration_at + coarse + slot,
            calibration_at + 2 * coarse + slot,
        ]
    )
    values = np.concatenate(
        [
            ones,
            ones,
            ones,
            np.rint(score * FIXED_POINT).astype(_INT),
            np.rint(score * score * FIXED_POINT).astype(_INT),
        ]
    )
    stacked = np.zeros(n_rows * size, dtype=_INT)
    np.add.at(stacked, index, values)  # int64 sums: exact for any number of cases
    return stacked.reshape(n_rows, size)


def stacked_subtract(
    stacked: Counts, removed: Counts, layout: SummaryLayout, keys: Sequence[object]
) -> None:
    """``stacked -= removed`` row by row, as :meth:`PerformanceSummary.subtract` does it:
    NegativeCountError (nothing changed) when a count would go below zero, naming the first
    such row's key (``keys[row]``) and array."""
    short = stacked < removed
    if short.any():
        row, column = (int(i) for i in np.argwhere(short)[0])
        bins = 2 * layout.score_bins
        name = (
            "score histogram"
            if column < bins
            else "confusion counts"
            if column < bins + 4
            else "calibration sums"
        )
        cases = int(removed[row, bins : bins + 4].sum())
        raise NegativeCountError(
            f"subtracting {cases} cases from {keys[row]}: the {name} would go negative, so "
            "some of them were never added"
        )
    stacked -= removed


def _check_layout(layout: SummaryLayout) -> None:
    if layout.score_bins < 2 or layout.calibration_bins < 2:
        raise SummaryError("a summary needs at least two score and two calibration bins")
    if not 0.0 <= layout.threshold <= 1.0:
        raise SummaryError(f"threshold must lie in [0, 1], got {layout.threshold}")


_KEY_FIELDS: Final = tuple(f.name for f in fields(SummaryKey))
_LAYOUT_FIELDS: Final = tuple(f.name for f in fields(SummaryLayout))


def merge(
    summaries: Iterable[PerformanceSummary], *, across_sites: bool = False
) -> PerformanceSummary:
    """The summary of all the given summaries' cases (any order, any grouping: exact).

    All must share the layout (threshold and bins) and the key; with ``across_sites`` the site
    may differ and the result's ``site_id`` is None (fleet-wide). IncompatibleSummariesError
    otherwise, and for no summaries at all.
    """
    summaries = list(summaries)
    if not summaries:
        raise IncompatibleSummariesError("nothing to merge: at least one summary is needed")
    first = summaries[0]
    key = replace(first.key, site_id=None) if across_sites else first.key
    result = PerformanceSummary(key, first.layout)
    for summary in summaries:
        theirs = replace(summary.key, site_id=None) if across_sites else summary.key
        if summary.layout != first.layout:
            raise IncompatibleSummariesError(
                f"cannot merge {summary.layout} into {first.layout}: thresholds and bins must match"
            )
        if theirs != key:
            raise IncompatibleSummariesError(f"cannot merge {summary.key} into {first.key}")
        for mine, their_array in zip(result._arrays(), summary._arrays(), strict=True):
            mine += their_array
    return result


def histogram_delong(summary: PerformanceSummary) -> tuple[float, float]:
    """AUROC and DeLong's variance from the histograms (cases in one bin tie).

    The same structural components as ``_auroc.structural_components``, one value per bin: a
    positive in bin b outscores the negatives below b and ties the ones in b (``V10``); a
    negative is outscored by the positives above b and ties the ones in b (``V01``). Needs at
    least two cases per class.
    """
    negatives, positives = summary.histogram.astype(np.float64)
    m, k = positives.sum(), negatives.sum()
    if m < 2 or k < 2:
        raise SummaryError(f"DeLong needs two cases per class, got {m:.0f} and {k:.0f}")
    v10 = (np.cumsum(negatives) - 0.5 * negatives) / k
    v01 = (m - np.cumsum(positives) + 0.5 * positives) / m
    auroc = float(positives @ v10 / m)
    var10 = float(positives @ (v10 - auroc) ** 2 / (m - 1))
    var01 = float(negatives @ (v01 - auroc) ** 2 / (k - 1))
    return auroc, var10 / m + var01 / k


def auroc_binning_bound(summary: PerformanceSummary) -> float:
    """Largest possible |AUROC from the histograms - exact AUROC|: half the share of
    (positive, negative) pairs in one bin, the only pairs whose order binning hides."""
    negatives, positives = summary.histogram.astype(np.float64)
    pairs = positives.sum() * negatives.sum()
    return float(0.5 * (positives @ negatives) / pairs) if pairs else 0.0


def reliability_from_summary(summary: PerformanceSummary) -> tuple[ReliabilityBin, ...]:
    """The reliability bins ``reliability_bins`` gives on the summarised cases (the same
    divisions, in Python floats: a refresh makes some 30,000 bins)."""
    sums = _CalibrationSums.of([summary])
    return _reliability_bins(sums.counts[0], sums.score_sums[0], sums.positives[0])


def brier_from_summary(summary: PerformanceSummary) -> float:
    """``mean((s - y)^2) = (sum s^2 - 2 sum_{y=1} s + positives) / n``, to about 1e-9 (the
    fixed-point rounding of each score and square). NaN for an empty summary."""
    return _CalibrationSums.of([summary]).brier(0)


@dataclass(frozen=True, slots=True)
class _CalibrationSums:
    """Per summary, the calibration sums the reliability bins and the Brier score are made of:
    integer sums over the label classes, taken for many summaries in one array pass (per
    summary, numpy's per-call cost was most of it). Integer sums are exact, so each value is
    the one the summary alone gives."""

    counts: list[list[int]]
    score_sums: list[list[float]]
    """Per calibration bin, the scores' sum (fixed point divided out)."""
    positives: list[list[int]]
    squares: list[int]
    positive_scores: list[int]
    positive_cases: list[int]

    @classmethod
    def of(cls, summaries: Sequence[PerformanceSummary]) -> _CalibrationSums:
        """The sums of summaries that share their calibration bins."""
        calibration = np.stack([summary.calibration for summary in summaries])
        both = calibration.sum(axis=1)  # [summary, quantity, bin]: the two classes together
        return cls(
            counts=both[:, 0].tolist(),
            score_sums=(both[:, 1] / FIXED_POINT).tolist(),
            positives=calibration[:, 1, 0].tolist(),
            squares=both[:, 2].sum(axis=1).tolist(),
            positive_scores=calibration[:, 1, 1].sum(axis=1).tolist(),
            positive_cases=calibration[:, 1, 0].sum(axis=1).tolist(),
        )

    def brier(self, index: int) -> float:
        n = sum(self.counts[index])
        if n == 0:
            return float("nan")
        squares, positive_scores = self.squares[index], self.positive_scores[index]
        positives = self.positive_cases[index]
        return (squares - 2 * positive_scores + positives * FIXED_POINT) / FIXED_POINT / n


def _reliability_bins(
    counts: list[int], score_sums: list[float], positives: list[int]
) -> tuple[ReliabilityBin, ...]:
    bins = len(counts)
    return tuple(
        ReliabilityBin(
            lower=i / bins,
            upper=(i + 1) / bins,
            count=count,
            mean_score=score_sums[i] / count if count else None,
            observed_rate=positives[i] / count if count else None,
        )
        for i, count in enumerate(counts)
    )


def summary_counts(summary: PerformanceSummary) -> ConfusionCounts:
    """The confusion counts at the layout's threshold."""
    (tn, fp), (fn, tp) = summary.confusion.tolist()
    return ConfusionCounts(
        n=tn + fp + fn + tp, positives=tp + fn, negatives=tn + fp, tp=tp, fp=fp, tn=tn, fn=fn
    )


def summary_metrics(
    summary: PerformanceSummary, config: PerformanceConfig | None = None
) -> BinaryMetrics:
    """:func:`monitor.performance.metrics.binary_metrics` from a (merged) summary.

    Same guards, Wilson intervals and reasons. Differences: the AUROC (DeLong only) is that of
    the binned scores; the calibration slope and intercept are unavailable (a logistic fit
    needs each score, which the summary does not keep). SummaryError when the config's
    ``ece_bins`` differ from the summary's calibration bins or it asks for bootstrap intervals.
    """
    return summaries_metrics([summary], config)[0]


def summaries_metrics(
    summaries: Sequence[PerformanceSummary], config: PerformanceConfig | None = None
) -> list[BinaryMetrics]:
    """:func:`summary_metrics` of each summary, computed together: one Wilson call for all
    proportions and one array pass for all DeLong AUROCs (the tracker computes the metrics of
    every subgroup value of a window at once; per summary, the fixed costs dominated)."""
    config = config or PerformanceConfig()
    if not summaries:
        return []
    for summary in summaries:
        _check_config(summary, config)
    counts = [summary_counts(summary) for summary in summaries]
    unavailable: list[dict[str, str]] = [{} for _ in summaries]
    wilson = wilson_intervals_of(counts, config, unavailable)
    delong = _delong_of(summaries, counts, config)
    sums = _CalibrationSums.of(summaries)
    fingerprint = config.fingerprint()
    results = []
    for index, summary in enumerate(summaries):
        window, reasons, intervals = counts[index], unavailable[index], wilson[index]
        reliability = _summary_reliability(sums, index, window, config, reasons)
        reason = "not kept in sufficient statistics (needs each score)"
        reasons["calibration_slope"] = f"calibration slope: {reason}"
        reasons["calibration_intercept"] = f"calibration intercept: {reason}"
        brier = None
        if window.n < config.min_cases:
            reasons["brier"] = f"Brier score: {window.n} cases, at least {config.min_cases} needed"
        else:
            brier = sums.brier(index)
        results.append(
            BinaryMetrics(
                counts=window,
                threshold=summary.layout.threshold,
                confidence_level=config.confidence_level,
                config_fingerprint=fingerprint,
                prevalence=intervals["prevalence"],
                auroc=_summary_auroc(delong.get(index), window, config, reasons),
                sensitivity=intervals["sensitivity"],
                specificity=intervals["specificity"],
                ppv=intervals["ppv"],
                npv=intervals["npv"],
                brier=brier,
                ece=expected_calibration_error(reliability) if reliability else None,
                calibration_slope=None,
                calibration_intercept=None,
                reliability=reliability,
                unavailable=reasons,
            )
        )
    return results


def _check_config(summary: PerformanceSummary, config: PerformanceConfig) -> None:
    if config.ece_bins != summary.layout.calibration_bins:
        raise SummaryError(
            f"config has {config.ece_bins} calibration bins, the summary "
            f"{summary.layout.calibration_bins}"
        )
    if config.auroc_ci != "delong":
        raise SummaryError("a summary gives DeLong intervals only: the bootstrap needs the cases")


def _delong_of(
    summaries: Sequence[PerformanceSummary],
    counts: Sequence[ConfusionCounts],
    config: PerformanceConfig,
) -> dict[int, tuple[float, float]]:
    """:func:`histogram_delong` of the summaries with enough cases of each class, by index,
    over their stacked histograms at once."""
    chosen = [i for i, window in enumerate(counts) if _class_shortfall(window, config) is None]
    by_bins: dict[int, list[int]] = {}
    for i in chosen:
        by_bins.setdefault(summaries[i].layout.score_bins, []).append(i)
    found: dict[int, tuple[float, float]] = {}
    chunks = [
        members[start : start + _DELONG_CHUNK]
        for members in by_bins.values()
        for start in range(0, len(members), _DELONG_CHUNK)
    ]
    for members in chunks:
        stacked = np.stack([summaries[i].histogram for i in members]).astype(np.float64)
        negatives, positives = stacked[:, 0], stacked[:, 1]
        m, k = positives.sum(axis=1), negatives.sum(axis=1)
        if (m < 2).any() or (k < 2).any():
            raise SummaryError("DeLong needs two cases per class")
        v10 = (np.cumsum(negatives, axis=1) - 0.5 * negatives) / k[:, None]
        v01 = (m[:, None] - np.cumsum(positives, axis=1) + 0.5 * positives) / m[:, None]
        auroc = np.einsum("ij,ij->i", positives, v10) / m
        var10 = np.einsum("ij,ij->i", positives, (v10 - auroc[:, None]) ** 2) / (m - 1)
        var01 = np.einsum("ij,ij->i", negatives, (v01 - auroc[:, None]) ** 2) / (k - 1)
        variance = var10 / m + var01 / k
        found.update(zip(members, zip(auroc.tolist(), variance.tolist(), strict=True), strict=True))
    return found


def _summary_auroc(
    delong: tuple[float, float] | None,
    counts: ConfusionCounts,
    config: PerformanceConfig,
    unavailable: dict[str, str],
) -> Interval | None:
    shortfall = _class_shortfall(counts, config)
    if shortfall is not None:
        unavailable["auroc"] = f"AUROC: {shortfall}"
        return None
    assert delong is not None  # computed for every summary without a shortfall
    auroc, variance = delong
    return delong_interval(auroc, variance, config.confidence_level)


def _summary_reliability(
    sums: _CalibrationSums,
    index: int,
    counts: ConfusionCounts,
    config: PerformanceConfig,
    unavailable: dict[str, str],
) -> tuple[ReliabilityBin, ...]:
    if counts.n < config.min_calibration_cases:
        reason = f"{counts.n} cases, at least {config.min_calibration_cases} needed"
        unavailable["ece"] = f"ECE: {reason}"
        unavailable["reliability"] = f"reliability diagram: {reason}"
        return ()
    return _reliability_bins(sums.counts[index], sums.score_sums[index], sums.positives[index])


def at_threshold(summary: PerformanceSummary, threshold: float) -> PerformanceSummary:
    """The summary with its confusion counts re-scored at another ``threshold`` from the
    histograms: a bin counts as predicted positive when its lower edge reaches the threshold.
    Exact when no case scores inside the bin that holds the threshold (a case on a bin's
    upper edge belongs to that bin); to the bin's width (1 / ``score_bins``) otherwise."""
    if not 0.0 <= threshold <= 1.0:
        raise SummaryError(f"threshold must lie in [0, 1], got {threshold}")
    result = PerformanceSummary(summary.key, replace(summary.layout, threshold=threshold))
    result.histogram += summary.histogram
    result.calibration += summary.calibration
    bins = summary.layout.score_bins
    first_positive = int(np.ceil(threshold * bins - 1e-9))
    for label in (0, 1):
        row = summary.histogram[label]
        result.confusion[label] = (row[:first_positive].sum(), row[first_positive:].sum())
    return result
