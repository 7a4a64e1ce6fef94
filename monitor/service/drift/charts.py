"""Reference-vs-current charts as geometry: bars and labels that a template draws as inline SVG.

Values in, a :class:`Chart` out; the site drift page's template turns it into ``<rect>`` and
``<text>`` elements, so every label is escaped by Jinja2's autoescape like the rest of the page.
Not matplotlib: one of its small SVG figures costs about 50 ms and 13 KB (and its import
0.4 s) on the 2-core box, against well under a millisecond and 2-4 KB here, and a drift page
can hold forty-six plots (docs/benchmarks.md, "Site drift page vs the Evidently page").

Shares, not counts, so a 1,000-event reference and a 100-event window compare by shape.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

Series = Literal["reference", "current"]

WIDTH: Final = 460
BINS: Final = 20
DISCRETE_MAX: Final = 12
"""A numeric feature with at most this many distinct values is drawn as one bar per value."""
CATEGORIES_SHOWN: Final = 8
_LABEL_CHARS: Final = 28
_PLOT_LEFT, _PLOT_TOP, _PLOT_HEIGHT = 40.0, 22.0, 120.0
_CATEGORY_LEFT, _ROW = 190.0, 26.0


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar; ``title`` is its tooltip (the exact share)."""

    x: float
    y: float
    width: float
    height: float
    series: Series
    title: str


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float
    text: str
    anchor: Literal["start", "middle", "end"] = "middle"


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart of ``width`` x ``height`` user units; ``caption`` says what it shows in words."""

    width: float
    height: float
    bars: tuple[Bar, ...]
    labels: tuple[Label, ...]
    caption: str
    axis_y: float | None = None
    """Where the horizontal axis line is drawn (histograms); None for horizontal bar charts."""


def numeric_chart(reference: NDArray[np.float64], current: NDArray[np.float64]) -> Chart:
    """Histogram of both samples over shared bins (missing values left out).

    Bins span the 1st to 99th percentile of both samples together; values beyond fall in the
    outer bins, so one outlier does not squeeze every other bar into one. Few distinct values
    (bit depth, a handful of kVp settings) give one bar per value instead.
    """
    reference, current = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if not len(reference) or not len(current):
        return _empty(_missing_side(len(reference), len(current)))
    both = np.concatenate([reference, current])
    distinct = np.unique(both)
    if len(distinct) <= DISCRETE_MAX:
        counts_reference = Counter(reference.tolist())
        counts_current = Counter(current.tolist())
        labels = [(f"{value:.4g}", float(value)) for value in distinct.tolist()]
        return _category_chart(
            [(text, counts_reference[v], counts_current[v]) for text, v in labels],
            len(reference),
            len(current),
            "one bar per value",
        )
    low, high = (float(v) for v in np.percentile(both, [1, 99]))
    if low == high:
        low, high = float(distinct[0]), float(distinct[-1])
    edges = np.linspace(low, high, BINS + 1)
    shares = [
        np.histogram(np.clip(sample, low, high), bins=edges)[0] / len(sample)
        for sample in (reference, current)
    ]
    return _histogram(edges, shares[0], shares[1])


def categorical_chart(reference: Sequence[str | None], current: Sequence[str | None]) -> Chart:
    """Share of each category in both samples: the largest ones, then "other" and "missing"."""
    if not reference or not current:
        return _empty(_missing_side(len(reference), len(current)))
    counts_reference, counts_current = Counter(reference), Counter(current)
    missing = (counts_reference.pop(None, 0), counts_current.pop(None, 0))
    n_reference, n_current = len(reference), len(current)

    def largest_share(name: str | None) -> float:
        return max(counts_reference[name] / n_reference, counts_current[name] / n_current)

    names = sorted({*counts_reference, *counts_current}, key=lambda n: (-largest_share(n), n))
    rows = [(str(n), counts_reference[n], counts_current[n]) for n in names[:CATEGORIES_SHOWN]]
    rest = names[CATEGORIES_SHOWN:]
    if rest:
        rows.append(
            (
                f"other ({len(rest)} values)",
                sum(counts_reference[n] for n in rest),
                sum(counts_current[n] for n in rest),
            )
        )
    if any(missing):
        rows.append(("(missing)", *missing))
    return _category_chart(rows, n_reference, n_current, "share of events per value")


def missing_chart(reference_missing: float, current_missing: float) -> Chart:
    """The share of events missing a field, in the reference and in the current sample (NaN:
    a sample without events)."""
    if math.isnan(reference_missing) or math.isnan(current_missing):
        sides = (int(not math.isnan(reference_missing)), int(not math.isnan(current_missing)))
        return _empty(_missing_side(*sides))
    return _category_chart(
        [("missing", round(reference_missing * 1000), round(current_missing * 1000))],
        1000,
        1000,
        "share of events missing the field",
    )


def _histogram(
    edges: NDArray[np.float64], reference: NDArray[np.float64], current: NDArray[np.float64]
) -> Chart:
    top = max(float(reference.max()), float(current.max()), 1e-12)
    step = (WIDTH - _PLOT_LEFT - 10) / (len(edges) - 1)
    bars: list[Bar] = []
    for i, (share_reference, share_current) in enumerate(zip(reference, current, strict=True)):
        x = _PLOT_LEFT + i * step
        span = f"{edges[i]:.4g} to {edges[i + 1]:.4g}"
        sides: tuple[tuple[float, Series, float], ...] = (
            (0.08, "reference", float(share_reference)),
            (0.5, "current", float(share_current)),
        )
        for offset, series, share in sides:
            height = _PLOT_HEIGHT * share / top
            bars.append(
                Bar(
                    round(x + offset * step, 1),
                    round(_PLOT_TOP + _PLOT_HEIGHT - height, 1),
                    round(0.42 * step, 1),
                    round(height, 1),
                    series,
                    f"{series}: {share:.1%} of events from {span}",
                )
            )
    base = _PLOT_TOP + _PLOT_HEIGHT
    labels = [
        Label(_PLOT_LEFT, base + 14, f"{edges[0]:.4g}", "start"),
        Label(_PLOT_LEFT + step * (len(edges) - 1) / 2, base + 14, f"{np.median(edges):.4g}"),
        Label(WIDTH - 10, base + 14, f"{edges[-1]:.4g}", "end"),
        Label(_PLOT_LEFT - 4, _PLOT_TOP + 4, f"{top:.0%}", "end"),
        Label(_PLOT_LEFT - 4, base, "0%", "end"),
    ]
    caption = (
        f"Histogram of shares of events, {len(edges) - 1} bins from {edges[0]:.4g} to "
        f"{edges[-1]:.4g} (values beyond fall in the outer bins)."
    )
    return Chart(WIDTH, base + 22, tuple(bars), tuple(labels), caption, axis_y=base)


def _category_chart(
    rows: Sequence[tuple[str, int, int]], n_reference: int, n_current: int, what: str
) -> Chart:
    width = WIDTH - _CATEGORY_LEFT - 52
    bars: list[Bar] = []
    labels: list[Label] = []
    for i, (name, count_reference, count_current) in enumerate(rows):
        y = 6 + i * _ROW
        short = name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"
        labels.append(Label(_CATEGORY_LEFT - 6, y + 15, short, "end"))
        sides: tuple[tuple[float, Series, float], ...] = (
            (0.0, "reference", count_reference / n_reference),
            (11.0, "current", count_current / n_current),
        )
        for offset, series, share in sides:
            length = round(width * share, 1)
            bars.append(
                Bar(_CATEGORY_LEFT, y + offset, length, 10.0, series, f"{series}: {share:.1%}")
            )
            labels.append(
                Label(_CATEGORY_LEFT + length + 4, y + offset + 9, f"{share:.0%}", "start")
            )
    caption = f"Bars: {what}, reference (grey) and current sample (blue)."
    return Chart(WIDTH, 12 + len(rows) * _ROW, tuple(bars), tuple(labels), caption)


def _missing_side(n_reference: int, n_current: int) -> str:
    side = "reference" if not n_reference else "current sample"
    if not n_reference and not n_current:
        side = "reference or the current sample"
    return f"No values in the {side} to draw."


def _empty(caption: str) -> Chart:
    return Chart(WIDTH, 30, (), (Label(10, 20, caption, "start"),), caption)
