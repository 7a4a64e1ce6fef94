"""The error-rate CUSUM rule's config, state and maths: a one-sided Bernoulli CUSUM run on an
integer grid, with its exact average run length (``rules.update_cusum`` runs it).

Per labelled case with error indicator ``x`` (1 = the prediction at the threshold was wrong),
the log-likelihood ratio of "error rate p1" against "error rate p0" is ``a = ln(p1 / p0)`` for
an error and ``-b = ln((1 - p1) / (1 - p0))`` for a correct case; the CUSUM is
``S = max(0, S + llr)`` and signals when ``S >= h`` (Reynolds & Stoumbos 1999).

Both weights are put on a grid: ``scale = resolution / min(a, b)`` units per unit of
log-likelihood ratio, an error adds ``up = round(a * scale)`` units and a correct case removes
``down = round(b * scale)`` (the smaller weight is exact, the larger off by at most half a unit).
The CUSUM that runs is the one on the grid, so its statistic is a Markov chain on the integers
``0 .. limit - 1`` (``limit`` = h in units) and its average run length (ARL) is exact: the
solution ``L`` of ``(I - Q) L = 1`` at state 0, ``Q`` the chain's transitions among the
non-signalling states. ``limit`` is the smallest one whose in-control ARL reaches the target,
found by doubling and then bisection (the ARL grows with the limit). No simulation: the same
reference always gives the same ``h``. The chain, the search and the run over a batch are
``_grid_cusum``'s, shared with the AUROC CUSUM (``_auroc_cusum``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict

from monitor.performance._grid_cusum import Advance, advance, run_length, smallest_limit
from monitor.performance.config import ErrorRateCusum as ErrorRateCusum
from monitor.performance.metrics import BinaryMetrics, validated


class CusumDesign(BaseModel):
    """The grid CUSUM derived from an in-control error rate: plain values, persisted as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p0: float
    """In-control error rate (from the reference)."""
    p1: float
    """Out-of-control error rate the CUSUM is tuned to detect: ``p0 * ratio``."""
    scale: float
    """Grid units per unit of log-likelihood ratio."""
    up: int
    """Units added per error."""
    down: int
    """Units removed per correct case."""
    limit: int
    """Decision interval ``h`` in units: signal at or above it."""
    hold: int
    """The statistic is held at most here (at or above ``limit``)."""
    arl0: float
    """Exact in-control average run length of this design, in cases."""

    @property
    def decision_interval(self) -> float:
        """``h`` in units of log-likelihood ratio."""
        return self.limit / self.scale


def average_run_length(up: int, down: int, limit: int, error_rate: float) -> float:
    """Expected cases until the grid CUSUM, started at 0, first reaches ``limit``."""
    return run_length([up, -down], [error_rate, 1.0 - error_rate], limit)


def design_cusum(
    p0: float, ratio: float, arl0: float, resolution: int, hold_multiple: float
) -> CusumDesign:
    """The grid CUSUM for in-control rate ``p0``, tuned to ``p0 * ratio``, with ARL0 >= ``arl0``.

    Needs ``0 < p0`` and ``p0 * ratio < 1``; the caller guards both.
    """
    p1 = p0 * ratio
    a, b = math.log(p1 / p0), math.log((1.0 - p0) / (1.0 - p1))
    scale = resolution / min(a, b)
    up, down = max(1, round(a * scale)), max(1, round(b * scale))

    def arl(limit: int) -> float:
        return average_run_length(up, down, limit, p0)

    high = smallest_limit(arl, arl0, up)
    return CusumDesign(
        p0=p0,
        p1=p1,
        scale=scale,
        up=up,
        down=down,
        limit=high,
        hold=max(high, round(high * hold_multiple)),
        arl0=arl(high),
    )


class CusumState(BaseModel):
    """Where one (site, model, version, finding) CUSUM stands; plain values, persisted as JSON.

    ``design`` is None while the reference cannot give an in-control error rate; ``not_ready``
    then says why, and :func:`start_cusum` has to be called again once it can.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_fingerprint: str
    design: CusumDesign | None
    not_ready: str | None = None
    units: int = 0
    """The statistic in grid units (``statistic`` in log-likelihood-ratio units)."""
    cases: int = 0
    """Labelled cases seen since the start."""
    errors: int = 0
    signals: int = 0
    """Times the statistic rose from below h to h or above."""
    last_signal_at: int | None = None
    """Case number (1-based, since the start) of the latest signal."""

    @property
    def statistic(self) -> float:
        """The CUSUM in units of log-likelihood ratio (0 before a design exists)."""
        return self.units / self.design.scale if self.design else 0.0


def start_cusum(reference: BinaryMetrics | None, config: ErrorRateCusum) -> CusumState:
    """A fresh CUSUM with ``p0`` = the reference's error rate at its threshold, ``(fp + fn) / n``.

    Not ready (``design`` None, reason in ``not_ready``) without a reference of at least
    ``min_reference_cases`` labelled cases, with an error-free reference, or when
    ``p0 * ratio`` would reach 1.
    """
    fingerprint = config.fingerprint()
    counts = reference.counts if reference else None
    if counts is None or counts.n < config.min_reference_cases:
        n = counts.n if counts else 0
        reason = f"reference has {n} labelled cases, at least {config.min_reference_cases} needed"
        return CusumState(config_fingerprint=fingerprint, design=None, not_ready=reason)
    p0 = (counts.fp + counts.fn) / counts.n
    if p0 == 0.0 or p0 * config.ratio >= 1.0:
        reason = (
            f"reference error rate {p0:.3f}: no in-control rate to watch"
            if p0 == 0.0
            else f"reference error rate {p0:.3f} times {config.ratio:g} would reach 1"
        )
        return CusumState(config_fingerprint=fingerprint, design=None, not_ready=reason)
    design = design_cusum(p0, config.ratio, config.arl0, config.resolution, config.hold_multiple)
    return CusumState(config_fingerprint=fingerprint, design=design)


def case_errors(labels: ArrayLike, scores: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """The CUSUM's input: per case, whether the prediction (``score >= threshold``) was wrong.

    Validated as :func:`monitor.performance.metrics.binary_metrics` validates its input.
    """
    positive, score = validated(labels, scores, threshold)
    return np.asarray((score >= threshold) != positive)


def continue_cusum(
    state: CusumState, design: CusumDesign, errors: list[bool]
) -> tuple[CusumState, Advance]:
    """The state after ``errors`` (``design`` is ``state.design``), and how the batch went."""
    steps = [design.up if error else -design.down for error in errors]
    moved = advance(state.units, steps, design.limit, design.hold)
    last_signal = state.cases + moved.crossings[-1] if moved.crossings else state.last_signal_at
    new_state = state.model_copy(
        update={
            "units": moved.units,
            "cases": state.cases + len(errors),
            "errors": state.errors + sum(errors),
            "signals": state.signals + len(moved.crossings),
            "last_signal_at": last_signal,
        }
    )
    return new_state, moved
