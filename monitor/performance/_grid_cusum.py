"""The maths both performance CUSUMs share: a one-sided CUSUM on an integer grid, its exact
average run length, the search for its decision interval, and running it over a batch.

A CUSUM whose per-case increments are integers (log-likelihood ratios put on a grid of
``scale`` units per nat, rounded) is ``S = min(hold, max(0, S + step))`` and signals at
``S >= limit``. While it has not signalled, ``S`` is a Markov chain on ``0 .. limit - 1``; when
the steps are i.i.d. with a known distribution (``steps`` with ``probabilities``), the average
run length from 0 is the first element of the solution ``L`` of ``(I - Q) L = 1``, ``Q`` the
chain's transitions among the non-signalling states (Brook & Evans 1972; scipy's sparse
solver). The grid CUSUM is the one that runs, so this ARL is exact for it, not an
approximation. ``hold`` does not change the first signal; it only lets the statistic fall
below ``limit`` soon after the change is over, so that an alarm episode can end.

``rules.update_cusum`` (error rate, two steps) and ``auroc_cusum.update_auroc_cusum`` (placement
values, one step per distinct placement) both run on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.sparse import coo_matrix, identity
from scipy.sparse.linalg import spsolve

MAX_LIMIT = 2_000_000
"""Grid units beyond which a design gives up (an ARL0 no monitoring would ever ask for)."""
ARL_CEILING = 1e12
"""Run lengths beyond this are reported as this: ``I - Q`` is then so close to singular that
the solve has no digits left (it can even come out negative)."""


class Advance(NamedTuple):
    """Where a batch of steps took the statistic."""

    units: int
    peak: int
    """Highest value reached in the batch (the starting value if the batch is empty)."""
    crossings: tuple[int, ...]
    """1-based positions in the batch where the statistic rose from below to the limit."""


def run_length(steps: ArrayLike, probabilities: ArrayLike, limit: int) -> float:
    """Expected cases until the grid CUSUM, started at 0, first reaches ``limit``, when each
    case adds ``steps[i]`` units with probability ``probabilities[i]`` (i.i.d.).

    Steps may repeat (their probabilities add up). :data:`ARL_CEILING` when the statistic can
    never reach ``limit`` (no positive step with a positive probability) or the ARL is beyond it.
    """
    step = np.asarray(steps, dtype=np.int64).ravel()
    probability = np.asarray(probabilities, dtype=np.float64).ravel()
    step, where = np.unique(step[probability > 0], return_inverse=True)
    total = np.bincount(where, weights=probability[probability > 0])
    if not np.any(step > 0):
        return ARL_CEILING
    states = np.arange(limit, dtype=np.int64)
    targets = states[None, :] + step[:, None]  # one row per step
    stays = targets < limit
    rows = np.broadcast_to(states, targets.shape)[stays]
    cols = np.maximum(targets, 0)[stays]
    values = np.broadcast_to(total[:, None], targets.shape)[stays]
    transitions = coo_matrix((values, (rows, cols)), shape=(limit, limit)).tocsc()
    run_lengths = spsolve(identity(limit, format="csc") - transitions, np.ones(limit))
    first = float(np.atleast_1d(run_lengths)[0])
    return first if 1.0 <= first < ARL_CEILING else ARL_CEILING


def smallest_limit(arl: Callable[[int], float], arl0: float, start: int) -> int:
    """The smallest limit (>= 1) whose ``arl(limit)`` reaches ``arl0``: doubling from ``start``,
    then bisection (the ARL grows with the limit). ValueError beyond :data:`MAX_LIMIT`."""
    high = max(1, start)
    while arl(high) < arl0:
        if high > MAX_LIMIT:
            raise ValueError(f"no decision interval reaches an in-control ARL of {arl0}")
        high *= 2
    low = high // 2 if high > start else 0  # arl(low) < arl0 unless low == 0
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if arl(middle) >= arl0 else (middle, high)
    return high


def advance(units: int, steps: Sequence[int], limit: int, hold: int) -> Advance:
    """Run the CUSUM over ``steps`` in order, from ``units``."""
    peak, crossings = units, []
    for position, step in enumerate(steps, start=1):
        before = units
        units = min(hold, max(0, units + step))
        peak = max(peak, units)
        if units >= limit > before:
            crossings.append(position)
    return Advance(units, peak, tuple(crossings))
