"""The maths both performance CUSUMs share: a one-sided CUSUM on an integer grid, its exact average
run length, the search for its decision interval, and running it over a batch.

A CUSUM whose per-case increments are integers (log-likelihood ratios put on a grid of ``scale``
units per nat, rounded) is ``S = min(hold, max(0, S + step))`` and signals at ``S >= limit``.
While it has not signalled, ``S`` is a Markov chain on ``0 .. limit - 1``; when the steps are
i.i.d. with a known distribution (``steps`` with ``probabilities``), the average run length from
state ``s`` is element ``s`` of the solution ``L`` of ``(I - Q) L = 1``, ``Q`` the chain's
transitions among the non-signalling states (Brook & Evans 1972; scipy's sparse solver). The
same chain with 0 made absorbing gives the chance that a CUSUM given a head start signals before
it first falls to 0 (:func:`signal_before_zero`). The grid CUSUM is the one that runs, so this
ARL is exact for it, not an approximation. ``hold`` does not change the first signal; it only
lets the statistic fall below ``limit`` soon after the change is over, so that an alarm episode
can end.

``rules.update_cusum`` (error rate, two steps) and ``auroc_cusum.update_auroc_cusum`` (placement
values, one step per distinct placement) both run on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import coo_matrix, csc_matrix, identity
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


def run_length(steps: ArrayLike, probabilities: ArrayLike, limit: int, start: int = 0) -> float:
    """Expected cases until the grid CUSUM, started at ``start`` (0 .. ``limit`` - 1), first
    reaches ``limit``, when each case adds ``steps[i]`` units with probability
    ``probabilities[i]`` (i.i.d.).

    Steps may repeat (their probabilities add up). :data:`ARL_CEILING` when the statistic can
    never reach ``limit`` (no positive step with a positive probability) or the ARL is beyond it.
    """
    step, total = _distinct(steps, probabilities)
    if not np.any(step > 0):
        return ARL_CEILING
    transitions, _ = _chain(step, total, limit, lowest=0)
    run_lengths = spsolve(identity(limit, format="csc") - transitions, np.ones(limit))
    found = float(np.atleast_1d(run_lengths)[start])
    return found if 1.0 <= found < ARL_CEILING else ARL_CEILING


def signal_before_zero(
    steps: ArrayLike, probabilities: ArrayLike, limit: int
) -> NDArray[np.float64]:
    """Per start ``s`` (0 .. ``limit`` - 1), the probability that the grid CUSUM started at
    ``s`` reaches ``limit`` before it first falls to 0 (steps i.i.d. as in :func:`run_length`;
    0 for ``s`` = 0). It grows with ``s``.

    A CUSUM given a head start (``AurocCusum.new_value_false_alarm``) is an ordinary CUSUM from
    the first time it falls to 0, so this is what the head start adds to its false signals: at
    most one signal, with this probability, per CUSUM started. The states ``1 .. limit - 1``
    are transient, 0 and the limit absorb; the answer solves ``(I - Q) p = r``, ``r`` the
    probability of a step from each state to the limit or beyond.
    """
    step, total = _distinct(steps, probabilities)
    found = np.zeros(max(limit, 1))
    if limit <= 1 or not np.any(step > 0):
        return found
    transitions, reach = _chain(step, total, limit, lowest=1)
    solved = spsolve(identity(limit - 1, format="csc") - transitions, reach)
    found[1:] = np.clip(np.atleast_1d(solved), 0.0, 1.0)
    return found


def _distinct(
    steps: ArrayLike, probabilities: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The distinct steps with a positive probability, and each one's total probability."""
    step = np.asarray(steps, dtype=np.int64).ravel()
    probability = np.asarray(probabilities, dtype=np.float64).ravel()
    distinct, where = np.unique(step[probability > 0], return_inverse=True)
    totals = np.bincount(where, weights=probability[probability > 0]).astype(np.float64)
    return distinct, totals


def _chain(
    step: NDArray[np.int64], total: NDArray[np.float64], limit: int, lowest: int
) -> tuple[csc_matrix, NDArray[np.float64]]:
    """Transitions among the states ``lowest .. limit - 1`` (a step below ``lowest`` lands on 0:
    kept as state 0 when ``lowest`` is 0, absorbed otherwise), and each state's probability of
    a step to the limit or beyond."""
    states = np.arange(lowest, limit, dtype=np.int64)
    targets = np.maximum(states[None, :] + step[:, None], 0)  # one row per step
    stays = (targets >= lowest) & (targets < limit)
    rows = np.broadcast_to(states - lowest, targets.shape)[stays]
    cols = targets[stays] - lowest
    values = np.broadcast_to(total[:, None], targets.shape)
    size = limit - lowest
    transitions = coo_matrix((values[stays], (rows, cols)), shape=(size, size)).tocsc()
    reach = np.where(targets >= limit, values, 0.0).sum(axis=0)
    return transitions, reach


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
