"""The names of the pixel statistics an event's ``pixel_stats`` carries.

The edge extractor (:mod:`monitor.dicom.pixels`) computes them and the drift features
(:mod:`monitor.drift.features`) read them; they live here, apart from the extractor, so that the
drift library and the service settings know the names without importing pydicom.
"""

from __future__ import annotations

from typing import Final

PERCENTILES: Final = (1, 5, 25, 50, 75, 95, 99)
HIST_BINS: Final = 8
PIXEL_STAT_NAMES: Final = (
    "mean", "std", *(f"p{q:02d}" for q in PERCENTILES), *(f"hist_{i}" for i in range(HIST_BINS)),
    "entropy", "frac_at_min", "frac_at_max",
)  # fmt: skip
