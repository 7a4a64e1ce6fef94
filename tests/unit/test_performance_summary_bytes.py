"""The storage bytes of a summary (``_summary_bytes``): format 2, and format 1 still read.

Format 1 is what every row written before 2026-12-07 holds: zlib level 1 of the counts as
little-endian int64 (written here as the code before wrote it). A summary read from either
format is the same summary, counts in every integer width and both histogram layouts
(sparse for few cases, dense for many) round-trip, and bytes that do not fit the layout or
hold a negative count are refused as format 1's were.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from monitor.performance import _summary_bytes
from monitor.performance.sufficient import (
    PerformanceSummary,
    SummaryError,
    SummaryKey,
    SummaryLayout,
    flat_size,
    merge,
    stacked_from_bytes,
    stacked_to_bytes,
)

KEY = SummaryKey("cxr", "1.0", "lesion", "site-01")
LAYOUT = SummaryLayout(threshold=0.5)


def format_1(summary: PerformanceSummary) -> bytes:
    """The bytes ``to_bytes`` wrote before format 2."""
    counts = np.concatenate([summary.histogram.ravel(), summary.confusion.ravel()])
    counts = np.concatenate([counts, summary.calibration.ravel()]).astype("<i8")
    return zlib.compress(counts.tobytes(), 1)


def summary_of(n: int, seed: int, *, ties: bool = False) -> PerformanceSummary:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = 1.0 / (1.0 + np.exp(-rng.normal(np.where(labels, 0.8, -0.8), 1.0)))
    if ties:  # a few scores only: large counts in a few bins
        scores = np.round(scores, 1)
    summary = PerformanceSummary(KEY, LAYOUT)
    summary.add(labels, scores)
    return summary


SUMMARIES = {
    "empty": PerformanceSummary(KEY, LAYOUT),
    "one case": summary_of(1, 1),
    "a day of a subgroup": summary_of(150, 2),
    "a day": summary_of(1_000, 3),
    "a year": summary_of(100_000, 4),
    "tied, counts above 255": summary_of(20_000, 5, ties=True),
    "tied, counts above 65,535": summary_of(700_000, 6, ties=True),
}


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_both_formats_read_back_as_the_same_summary(name: str) -> None:
    summary = SUMMARIES[name]
    new, old = summary.to_bytes(), format_1(summary)
    assert new[0] == _summary_bytes.TAG and old[0] == 0x78
    for blob in (new, old):
        assert PerformanceSummary.from_bytes(KEY, LAYOUT, blob) == summary
    stacked = stacked_from_bytes(LAYOUT, [new, old])
    assert np.array_equal(stacked[0], stacked[1])
    assert stacked_to_bytes(stacked, LAYOUT) == [new, new]


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_a_rollback_writes_back_exactly_the_bytes_the_code_before_wrote(name: str) -> None:
    """``as_format_1`` (migration 0020's downgrade) needs no layout and gives, byte for byte,
    what the code before format 2 wrote for the same summary; format 1 passes through."""
    summary = SUMMARIES[name]
    assert _summary_bytes.as_format_1(summary.to_bytes()) == format_1(summary)
    assert _summary_bytes.as_format_1(format_1(summary)) == format_1(summary)


def test_a_rollback_refuses_bytes_that_are_not_a_summary() -> None:
    blob = SUMMARIES["a day"].to_bytes()
    for broken in (blob[:5], blob[:-3]):
        with pytest.raises(_summary_bytes.EncodingError):
            _summary_bytes.as_format_1(broken)


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_the_histogram_is_stored_sparse_or_dense_whichever_is_shorter(name: str) -> None:
    summary = SUMMARIES[name]
    peak = int(summary.histogram.max())
    width = next(w for w in (1, 2, 4, 8) if peak < 2 ** (8 * w))  # the narrowest unsigned type
    filled = int((summary.histogram != 0).sum())
    rest = 8 * (flat_size(LAYOUT) - 2 * LAYOUT.score_bins)
    sparse, dense = filled * (2 + width), 2 * LAYOUT.score_bins * width  # uint16 bin numbers
    assert len(summary.to_bytes()) == 11 + min(sparse, dense) + rest


def test_a_day_is_stored_sparse_and_a_year_dense() -> None:
    day, year = SUMMARIES["a day of a subgroup"].to_bytes(), SUMMARIES["a year"].to_bytes()
    assert day[1] == 0 and year[1] == 1
    assert SUMMARIES["tied, counts above 65,535"].to_bytes()[2] == 2  # uint32 counts


def test_a_summary_read_from_format_1_merges_with_one_from_format_2() -> None:
    first, second = SUMMARIES["a day"], SUMMARIES["a year"]
    read = [
        PerformanceSummary.from_bytes(KEY, LAYOUT, format_1(first)),
        PerformanceSummary.from_bytes(KEY, LAYOUT, second.to_bytes()),
    ]
    assert merge(read) == merge([first, second])
    read[0].add([1], [0.5])  # a summary read from bytes changes in place like any other
    first_again = PerformanceSummary.from_bytes(KEY, LAYOUT, format_1(first))
    assert read[0].n == first_again.n + 1


def test_bytes_that_do_not_fit_are_refused() -> None:
    blob = SUMMARIES["a day"].to_bytes()
    other_bins = SummaryLayout(threshold=0.5, score_bins=1024)
    for bad, layout, message in [
        (blob, other_bins, "expected"),  # another layout's bins
        (blob[:-1], LAYOUT, "expected"),  # truncated
        (blob[:5], LAYOUT, "header"),
        (bytes([2, 7]) + blob[2:], LAYOUT, "unknown"),
        (b"not zlib", LAYOUT, "not a stored"),
    ]:
        with pytest.raises(SummaryError, match=message):
            PerformanceSummary.from_bytes(KEY, layout, bad)
    negative = np.zeros(flat_size(LAYOUT), dtype=np.int64)
    negative[5] = -3  # a histogram count: stored as int64, refused on reading
    with pytest.raises(SummaryError, match="negative"):
        stacked_from_bytes(LAYOUT, [_summary_bytes.encode(negative, 2 * LAYOUT.score_bins)])
    outside = bytearray(SUMMARIES["one case"].to_bytes())
    outside[11:13] = (5000).to_bytes(2, "little")  # the one filled bin, moved past the end
    with pytest.raises(SummaryError, match="outside"):
        PerformanceSummary.from_bytes(KEY, LAYOUT, bytes(outside))
