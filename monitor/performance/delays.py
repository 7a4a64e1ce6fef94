"""A mergeable sketch of label delays: how long after a prediction its label arrived.

Delays (hours; negative when the label came first) are counted in bins of a signed log scale,
``DelaySketch.BINS_PER_DOUBLING`` (8) bins per doubling of ``1 + |hours|``: a quantile read
from the sketch is within 4.4 % of ``1 + |true quantile|`` (half a bin, ``2 ** (1 / 16)``),
whatever the range, from minutes to years. Counts are integers, so ``add``, ``subtract`` and
``merge`` are exact: per-day sketches merge into the sketch of any span, and a label corrected
later (a new event time, so a new delay) moves its count from one bin to another.

Hand-written: t-digest and DDSketch libraries merge but do not subtract, and a label
correction must take its old delay out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import ClassVar, Self


class DelaySketch:
    """Counts of label delays per signed log bin; see the module docstring."""

    BINS_PER_DOUBLING: ClassVar[int] = 8

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: Counter[int] = Counter(counts or {})

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def bin_of(cls, hours: float) -> int:
        """The bin of a delay: 0 for |delay| below about 5 minutes, signed as the delay."""
        if not math.isfinite(hours):
            raise ValueError(f"a label delay must be finite, got {hours}")
        index = math.ceil(cls.BINS_PER_DOUBLING * math.log2(1.0 + abs(hours)) - 0.5)
        return index if hours >= 0 else -index

    @classmethod
    def value_of(cls, index: int) -> float:
        """The delay (hours) a bin stands for: its centre on the log scale."""
        magnitude = math.pow(2.0, abs(index) / cls.BINS_PER_DOUBLING) - 1.0
        return magnitude if index >= 0 else -magnitude

    def add(self, hours: Iterable[float]) -> None:
        self.counts.update(self.bin_of(h) for h in hours)

    def subtract(self, hours: Iterable[float]) -> None:
        """Take out delays added before; ValueError (nothing changed) if one was not held."""
        removed = Counter(self.bin_of(h) for h in hours)
        short = [index for index, k in removed.items() if self.counts[index] < k]
        if short:
            raise ValueError(f"subtracting delays the sketch does not hold (bins {short})")
        self.counts.subtract(removed)
        for index in [i for i, k in self.counts.items() if k == 0]:
            del self.counts[index]

    def merge(self, other: DelaySketch) -> Self:
        """Add ``other``'s counts to this sketch (in place); returns it."""
        self.counts.update(other.counts)
        return self

    def quantile(self, q: float) -> float | None:
        """The delay below which a share ``q`` of the labels arrived; None when empty."""
        total = self.n
        if total == 0:
            return None
        rank = q * (total - 1)
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen > rank:
                return self.value_of(index)
        return self.value_of(max(self.counts))

    def summary(self) -> dict[str, float] | None:
        """p50, p90 and max (hours), as the snapshots report them; None without labels."""
        if not self.counts:
            return None
        p50, p90 = self.quantile(0.5), self.quantile(0.9)
        assert p50 is not None and p90 is not None
        return {"p50": p50, "p90": p90, "max": self.value_of(max(self.counts))}

    def to_dict(self) -> dict[str, int]:
        return {str(index): count for index, count in sorted(self.counts.items()) if count}

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> DelaySketch:
        counts = {int(index): int(count) for index, count in data.items()}
        if any(count < 0 for count in counts.values()):
            raise ValueError("a stored delay sketch holds a negative count")
        return cls(counts)
