"""How far AUROC and its DeLong standard error from score histograms are from the exact values.

For each histogram resolution, the largest |error| over seeded windows of the simulator's score
model (class logits normal with unit spread: AUROC 0.90, the degraded scanner's 0.70, barely
and well separated, a rare finding whose negatives crowd near 0; 500, 5,000 and 20,000 cases
at prevalence 10%, 20% and 5%; five seeds each). Numbers quoted in
``monitor/performance/sufficient.py`` and docs/performance.md ("Sufficient statistics").

    PYTHONPATH=. .venv/bin/python -m benchmarks.bench_sufficient_resolution
"""

from __future__ import annotations

import numpy as np

from monitor.performance._auroc import delong
from monitor.performance.sufficient import (
    PerformanceSummary,
    SummaryKey,
    SummaryLayout,
    histogram_delong,
)

RESOLUTIONS = (500, 1000, 2048, 4096)
SCENARIOS = {  # name: (logit intercept, logit gap between class means)
    "AUROC 0.90": (0.0, 1.8124),
    "AUROC 0.70": (0.0, 0.74),
    "barely separated": (0.0, 0.1),
    "well separated": (0.0, 5.0),
    "rare finding": (-3.0, 1.8124),
    "crowded near 0": (-4.0, 8.0),
}
WINDOWS = ((500, 0.1), (5000, 0.2), (20000, 0.05))


def worst_errors(score_bins: int, seeds: int = 5) -> tuple[float, float, str]:
    """Largest AUROC error, largest SE error, and the window of the largest AUROC error."""
    worst_auroc, worst_se, where = 0.0, 0.0, ""
    layout = SummaryLayout(threshold=0.5, score_bins=score_bins)
    for name, (intercept, gap) in SCENARIOS.items():
        for n, prevalence in WINDOWS:
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                labels = rng.random(n) < prevalence
                logits = intercept + gap * np.where(labels, 0.5, -0.5) + rng.standard_normal(n)
                scores = 0.5 * (1.0 + np.tanh(0.5 * logits))
                auroc, variance = delong(scores[labels], scores[~labels])
                summary = PerformanceSummary(SummaryKey("m", "1", "f", "s"), layout)
                summary.add(labels, scores)
                binned_auroc, binned_variance = histogram_delong(summary)
                error = abs(binned_auroc - auroc)
                if error > worst_auroc:
                    worst_auroc, where = error, f"{name}, n={n}"
                worst_se = max(worst_se, abs(np.sqrt(binned_variance) - np.sqrt(variance)))
    return worst_auroc, worst_se, where


def main() -> None:
    print("| bins | largest AUROC error | largest DeLong SE error | where |")
    print("|---|---|---|---|")
    for score_bins in RESOLUTIONS:
        auroc, se, where = worst_errors(score_bins)
        print(f"| {score_bins} | {auroc:.1e} | {se:.1e} | {where} |")


if __name__ == "__main__":
    main()
