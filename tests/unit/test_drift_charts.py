"""Reference-vs-current charts (monitor/service/drift/charts.py) and the feature glossary."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.drift.features import CATEGORICAL_METADATA, NUMERIC_METADATA
from monitor.pixel_names import PIXEL_STAT_NAMES
from monitor.service.drift import charts, glossary


def shares(chart: charts.Chart, series: str) -> list[float]:
    """Each bar's share, read back from its tooltip ("reference: 12.5% ...")."""
    return [
        float(bar.title.split(": ")[1].split("%")[0]) / 100
        for bar in chart.bars
        if bar.series == series
    ]


def test_a_histogram_shares_its_bins_and_each_side_sums_to_one() -> None:
    rng = np.random.default_rng(0)
    reference, current = rng.normal(0, 1, 1000), rng.normal(2, 1, 100)
    chart = charts.numeric_chart(reference, current)
    assert len(chart.bars) == 2 * charts.BINS
    assert sum(shares(chart, "reference")) == pytest.approx(1, abs=0.01)
    assert sum(shares(chart, "current")) == pytest.approx(1, abs=0.01)
    # The window moved right: its share lies in the upper half of the bins, the reference's not.
    upper = slice(charts.BINS // 2, None)
    assert sum(shares(chart, "current")[upper]) > 0.8 > sum(shares(chart, "reference")[upper])
    assert all(bar.y >= 0 and bar.y + bar.height <= chart.height for bar in chart.bars)


def test_an_outlier_falls_in_the_outer_bin_and_missing_values_are_left_out() -> None:
    reference = np.r_[np.linspace(0, 1, 200), np.nan]
    current = np.r_[np.linspace(0, 1, 99), 1e9]
    chart = charts.numeric_chart(reference, current)
    assert len(chart.bars) == 2 * charts.BINS
    assert shares(chart, "current")[-1] >= 0.01
    assert "to 1e+09" not in chart.caption


def test_few_distinct_values_give_one_bar_per_value() -> None:
    chart = charts.numeric_chart(np.full(50, 14.0), np.r_[np.full(30, 10.0), np.full(20, 14.0)])
    assert [label.text for label in chart.labels if label.anchor == "end"] == ["10", "14"]
    assert shares(chart, "reference") == [0.0, 1.0]
    assert shares(chart, "current") == [0.6, 0.4]


def test_categories_beyond_the_largest_are_pooled_and_missing_is_shown() -> None:
    reference = [f"vendor {i}" for i in range(12)] * 10 + [None] * 10
    current = ["vendor 0"] * 90 + [None] * 10
    chart = charts.categorical_chart(reference, current)
    names = [label.text for label in chart.labels if label.anchor == "end"]
    assert names[0] == "vendor 0" and len(names) == charts.CATEGORIES_SHOWN + 2
    assert names[-2:] == ["other (4 values)", "(missing)"]
    assert sum(shares(chart, "reference")) == pytest.approx(1, abs=0.01)


def test_a_long_label_is_shortened_and_an_empty_side_is_said() -> None:
    chart = charts.categorical_chart(["x" * 60], ["x" * 60])
    assert max(len(label.text) for label in chart.labels) <= 28
    empty = charts.numeric_chart(np.array([np.nan]), np.array([1.0]))
    assert empty.bars == () and empty.caption == "No values in the reference to draw."
    nothing = charts.missing_chart(0.0, float("nan"))
    assert nothing.bars == () and nothing.caption == "No values in the current sample to draw."
    missing = charts.missing_chart(0.0, 1.0)
    assert (shares(missing, "reference"), shares(missing, "current")) == ([0.0], [1.0])


def test_every_feature_has_a_meaning_of_its_own() -> None:
    names = [*PIXEL_STAT_NAMES, *NUMERIC_METADATA, *CATEGORICAL_METADATA, "lesion"]
    meanings = [glossary.describe(name, ("lesion",)) for name in names]
    assert "A monitored feature." not in meanings
    assert len(set(meanings)) == len(meanings)
    assert "brightness bin 1 of 8" in glossary.describe("hist_0")
    assert glossary.describe("p01").startswith("The 1st percentile")
