"""The AUROC CUSUMs per value of a metadata field (``AurocCusum.by_fields``).

A new unit (a scanner model, a software version) whose images the model ranks worse enters a
site's studies at a small share that grows. The pooled CUSUM sees the site's AUROC fall as that
share grows, from nothing; a CUSUM on the unit's own cases, placed against the same reference,
sees the unit's whole drop from its first case, and signals once enough of them are labelled.
Every value gets one: it shares the pooled CUSUM's design (its reference, tilt and ``h``,
designed for :attr:`AurocCusum.cusum_arl0` so that the family keeps ``arl0``) and keeps only
its own counters. A value new to the reference starts with a head start (the design's
``head_start``, :attr:`AurocCusum.new_value_false_alarm`): its first cases are where a change
is most likely. A value that ranked worse than the pool from the start (an older unit) is a
difference the reference already held: such a unit signals too (docs/performance.md).

Values are tracked in the order they are first seen after the reference, at most
``max_values`` per field; the cases of later values count in the pooled CUSUM only, and in
``untracked``. With ``new_values_only`` the values of the reference's cases get none.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from monitor.performance._auroc_cusum import AurocCusumDesign
from monitor.performance._grid_cusum import Advance, advance
from monitor.performance.config import AurocCusum

Groups = Mapping[str, Sequence[str | None]]
"""Per metadata field, each case's value (None where the case has none)."""


class ValueCusum(BaseModel):
    """Where the CUSUM of one value stands (the design is the pooled CUSUM's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    units: int = 0
    cases: int = 0
    """Monitored labelled cases of this value."""
    signals: int = 0
    last_signal_at: int | None = None
    """The value's own case number (1-based) of its latest signal."""


@dataclass(frozen=True)
class ValueRun:
    """One value's CUSUM over its cases of a batch."""

    field: str
    value: str
    cases: NDArray[np.intp]
    """Positions in the batch of the value's cases."""
    cusum: ValueCusum
    """After the batch."""
    moved: Advance
    first_signal_at: int | None
    """Pooled monitored case number of the case that first took it to ``h`` in the batch."""


@dataclass(frozen=True)
class ValueBatch:
    by_value: dict[str, dict[str, ValueCusum]]
    untracked: dict[str, int]
    runs: list[ValueRun]


def value_steps(
    before: tuple[dict[str, dict[str, ValueCusum]], dict[str, int]],
    monitored_before: int,
    steps: NDArray[np.int64],
    groups: Groups,
    design: AurocCusumDesign,
    config: AurocCusum,
    known: Mapping[str, Collection[str]],
) -> ValueBatch:
    """Run each value's CUSUM over its cases' ``steps`` (the batch's, in order), from the
    counters ``before`` (per field, per value; untracked cases per field). ``monitored_before``:
    pooled monitored cases before the batch; ``known``: per field, the reference's values
    (with ``new_values_only`` they get no CUSUM; otherwise one that starts at 0). A new value's
    CUSUM starts at the design's ``head_start``."""
    by_value = {field: dict(values) for field, values in before[0].items()}
    untracked, runs = dict(before[1]), []
    for field in config.by_fields:
        values = groups.get(field)
        if values is None:
            continue
        if len(values) != steps.size:
            raise ValueError(f"{field}: {len(values)} values for {steps.size} cases")
        cusums = by_value.setdefault(field, {})
        for value, cases in _positions(values).items():
            old = value in known.get(field, ())
            if old and config.new_values_only:
                continue
            if value not in cusums and len(cusums) >= config.max_values:
                untracked[field] = untracked.get(field, 0) + cases.size
                continue
            fresh = ValueCusum(units=0 if old else design.head_start)
            cusums[value], moved = _run(cusums.get(value, fresh), cases, steps, design)
            first = moved.crossings[0] if moved.crossings else None
            pooled = None if first is None else monitored_before + int(cases[first - 1]) + 1
            runs.append(ValueRun(field, value, cases, cusums[value], moved, pooled))
    return ValueBatch(by_value, untracked, runs)


def _positions(values: Sequence[str | None]) -> dict[str, NDArray[np.intp]]:
    """Positions of each value's cases, values in the order of their first case."""
    found: dict[str, list[int]] = {}
    for position, value in enumerate(values):
        if value is not None:
            found.setdefault(value, []).append(position)
    return {value: np.asarray(where, dtype=np.intp) for value, where in found.items()}


def _run(
    cusum: ValueCusum, cases: NDArray[np.intp], steps: NDArray[np.int64], design: AurocCusumDesign
) -> tuple[ValueCusum, Advance]:
    moved = advance(cusum.units, steps[cases].tolist(), design.limit, design.hold)
    last = cusum.cases + moved.crossings[-1] if moved.crossings else cusum.last_signal_at
    after = ValueCusum(
        units=moved.units,
        cases=cusum.cases + cases.size,
        signals=cusum.signals + len(moved.crossings),
        last_signal_at=last,
    )
    return after, moved
