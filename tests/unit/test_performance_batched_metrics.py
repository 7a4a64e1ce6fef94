"""The tracker computes the metrics of many summaries at once: the same numbers as one at a
time, and ``BinaryMetrics.as_dict`` is ``dataclasses.asdict``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from monitor.performance.metrics import (
    BinaryMetrics,
    PerformanceConfig,
    binary_metrics,
    delong_interval,
)
from monitor.performance.sufficient import (
    PerformanceSummary,
    SummaryKey,
    SummaryLayout,
    histogram_delong,
    summaries_metrics,
    summary_metrics,
)

KEY = SummaryKey("cxr-lesion", "1.0.0", "lesion", "site-01")


def _summary(n: int, seed: int, threshold: float = 0.5) -> PerformanceSummary:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = 1.0 / (1.0 + np.exp(-rng.normal(1.5 * labels - 1.2, 1.0)))
    summary = PerformanceSummary(KEY, SummaryLayout(threshold=threshold))
    summary.add(labels, scores)
    return summary


def _mixed() -> list[PerformanceSummary]:
    """Large and small windows (some metrics unavailable), another threshold, an empty one."""
    sizes = [5000, 3, 40, 0, 700, 25, 120_000] + [300 + 17 * i for i in range(40)]
    summaries = [_summary(n, seed) for seed, n in enumerate(sizes)]
    return [*summaries, _summary(800, 99, threshold=0.3)]


def test_many_summaries_give_what_each_gives_alone() -> None:
    summaries = _mixed()
    together = summaries_metrics(summaries)
    assert len(together) == len(summaries)
    for summary, metrics in zip(summaries, together, strict=True):
        alone = summary_metrics(summary)
        assert metrics.as_dict() == alone.as_dict()
        assert list(metrics.unavailable) == list(alone.unavailable)  # same order of reasons


def test_the_batched_auroc_is_the_single_histogram_delong() -> None:
    config = PerformanceConfig()
    summaries = _mixed()
    for summary, metrics in zip(summaries, summaries_metrics(summaries, config), strict=True):
        if metrics.auroc is None:
            assert "auroc" in metrics.unavailable
            continue
        expected = delong_interval(*histogram_delong(summary), config.confidence_level)
        for got, want in zip(
            (metrics.auroc.estimate, metrics.auroc.lower, metrics.auroc.upper),
            (expected.estimate, expected.lower, expected.upper),
            strict=True,
        ):
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_no_summaries_give_no_metrics() -> None:
    assert summaries_metrics([]) == []


@pytest.mark.parametrize(
    "metrics",
    [
        binary_metrics([0, 1, 1, 0] * 50, np.linspace(0.0, 1.0, 200), 0.5),
        binary_metrics([], [], 0.5),
        summary_metrics(_summary(5000, 1)),
        summary_metrics(_summary(4, 2)),
    ],
    ids=["exact", "empty", "summary", "small summary"],
)
def test_as_dict_is_dataclasses_asdict(metrics: BinaryMetrics) -> None:
    plain = metrics.as_dict()
    assert plain == dataclasses.asdict(metrics)
    assert list(plain) == list(dataclasses.asdict(metrics))
    assert type(plain["reliability"]) is type(dataclasses.asdict(metrics)["reliability"])
    plain["unavailable"]["x"] = "y"  # a copy, as asdict's
    assert "x" not in metrics.unavailable
