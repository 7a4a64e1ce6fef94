"""The AUROC CUSUM's maths: placement values, the tilted alternative, the grid design and its
exact run lengths (``auroc_cusum`` runs it; the chain is ``_grid_cusum``'s).

**Placement values.** Against a frozen reference, a labelled case's *placement* is, for a
positive, the share of reference negatives scoring below it, and for a negative the share of
reference positives scoring above it (ties count one half). They are DeLong's structural
components with the reference as the other class: the mean placement of the reference's own
positives (among its negatives) and of its negatives (among its positives) are both exactly the
reference AUROC, and a new case's expected placement is the AUROC of new cases of its class
against the reference. Given the reference, new cases' placements are i.i.d. while nothing
changes, whatever the scores' distribution: so the run length below is exact for the grid CUSUM.

**The alternative.** Per class ``c``, ``f0_c`` is the empirical distribution of the
reference's own placements of that class (each reference positive's placement among the
reference negatives is a draw from the distribution a new positive's placement has, given those
negatives; likewise for negatives). The alternative ``f1_c`` is its exponential tilt
``f0_c(x) exp(-theta_c x) / M_c(theta_c)`` whose mean is lower by ``drop``: of the
distributions with that mean, the one closest to ``f0_c`` (least Kullback-Leibler divergence).
The log-likelihood ratio of a case is then linear in its placement,
``llr_c(x) = -theta_c x - ln M_c(theta_c)``, defined for any placement (also one the reference
never showed), negative on average under ``f0_c`` for either class, so a change of prevalence or
of the order in which classes get labelled cannot by itself push the CUSUM up.

**The grid.** ``scale`` puts the largest ``|llr_c(x)|`` over ``x`` in [0, 1] and both classes at
``resolution`` units; a case adds ``round(scale * llr_c(x))``. Under no change the steps are
i.i.d. from the mixture of both classes at the reference prevalence, so ``_grid_cusum`` gives the
in-control ARL of every limit exactly, and the smallest limit reaching ``arl0`` is ``h``.

**The reference is an estimate.** The true distribution of a new positive's placement is not
the reference's empirical one: its mean is off by about ``sd / sqrt(n_positives)``, and a CUSUM
tuned to a drop of a few hundredths turns a mean one standard error too high into many more
false alarms. ``h`` is therefore set for the least favourable per-class means within a
``reference_confidence`` one-sided ellipse around the reference's (each class's placement
distribution tilted to that mean): the in-control drift per case is linear in the two class
means, with weight ``prevalence_c * theta_c``, and the largest drift in the ellipse moves class
``c`` by ``z w_c se_c^2 / sqrt(sum_c w_c^2 se_c^2)``. ``arl0_reference`` is the ARL if new cases
follow the reference exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict
from scipy.optimize import brentq
from scipy.special import logsumexp
from scipy.stats import norm

from monitor.performance._grid_cusum import run_length, signal_before_zero, smallest_limit
from monitor.performance.config import AurocCusum

FloatArray = NDArray[np.float64]


class AurocCusumDesign(BaseModel):
    """The grid CUSUM derived from a reference: plain values, persisted as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reference_auroc: float
    positives: int
    """Reference positives (the reference's negatives are ``negatives``)."""
    negatives: int
    drop: float
    """The AUROC drop the alternative is tilted to."""
    tilt_positive: float
    """``theta`` of the positives' alternative; a positive adds ``-theta x - log_mgf``."""
    log_mgf_positive: float
    tilt_negative: float
    log_mgf_negative: float
    scale: float
    """Grid units per unit of log-likelihood ratio."""
    limit: int
    """Decision interval ``h`` in units: signal at or above it."""
    hold: int
    arl0: float
    """Exact in-control ARL (monitored cases) at the least favourable reference means: of each
    CUSUM of the family (``AurocCusum.cusum_arl0``), in its own cases."""
    arl0_reference: float
    """Exact in-control ARL if new cases place exactly as the reference's own did."""
    arl1: float
    """Exact ARL from 0 when every new case follows the alternative (a drop of ``drop``)."""
    head_start: int = 0
    """Grid units a new value's CUSUM starts at (from ``AurocCusum.new_value_false_alarm``; 0
    without ``by_fields``)."""
    head_start_false_alarm: float = 0.0
    """Probability that a new value's CUSUM, in control at the least favourable reference
    means, signals from its head start before it first falls to 0: at most this many false
    signals per new value, beyond the family's rate."""
    arl1_head_start: float = 0.0
    """Exact ARL from the head start when every case of the value follows the alternative."""

    @property
    def decision_interval(self) -> float:
        """``h`` in units of log-likelihood ratio."""
        return self.limit / self.scale


def placements(
    labels: ArrayLike,
    scores: ArrayLike,
    reference_positive: FloatArray,
    reference_negative: FloatArray,
) -> FloatArray:
    """Each case's placement against the reference (sorted scores of each reference class)."""
    label = np.asarray(labels).astype(bool)
    score = np.asarray(scores, dtype=np.float64)
    negatives, positives = reference_negative, reference_positive
    below = np.searchsorted(negatives, score, "left") + np.searchsorted(negatives, score, "right")
    above = 2 * positives.size - (
        np.searchsorted(positives, score, "left") + np.searchsorted(positives, score, "right")
    )
    return np.where(label, below / (2.0 * negatives.size), above / (2.0 * positives.size))


def tilted_weights(values: FloatArray, theta: float) -> FloatArray:
    """Weights of the empirical distribution of ``values`` tilted by ``exp(-theta x)``."""
    logs = -theta * values
    weights: FloatArray = np.exp(logs - logsumexp(logs))
    return weights


def tilt_to_mean(values: FloatArray, target: float) -> float:
    """``theta`` >= 0 whose tilt of the empirical distribution of ``values`` has mean ``target``.

    Needs ``min(values) < target <= mean(values)``; the caller guards it.
    """
    if target >= float(values.mean()):
        return 0.0

    def gap(theta: float) -> float:
        return float(tilted_weights(values, theta) @ values) - target

    high = 1.0
    while gap(high) > 0:
        high *= 2.0
    return float(brentq(gap, 0.0, high, xtol=1e-12))


def _log_mgf(values: FloatArray, theta: float) -> float:
    return float(logsumexp(-theta * values) - math.log(values.size))


def _steps(values: FloatArray, theta: float, log_mgf: float, scale: float) -> NDArray[np.int64]:
    return np.rint(scale * (-theta * values - log_mgf)).astype(np.int64)


def _least_favourable_means(
    by_class: tuple[FloatArray, FloatArray], tilts: tuple[float, float], z: float
) -> tuple[float, float]:
    """Per-class mean placements at the edge of the z-ellipse that raise the drift most."""
    sizes = np.array([values.size for values in by_class], dtype=np.float64)
    shares = sizes / sizes.sum()
    errors = np.array([values.std() / math.sqrt(values.size) for values in by_class])
    weights = shares * np.asarray(tilts)
    norm_ = float(np.sqrt(np.sum((weights * errors) ** 2)))
    shifts = z * weights * errors**2 / norm_ if norm_ > 0 else np.zeros(2)
    means = []
    for values, shift in zip(by_class, shifts, strict=True):
        lowest, mean = float(values.min()), float(values.mean())
        means.append(max(mean - float(shift), lowest + 0.01 * (mean - lowest)))
    return means[0], means[1]


def shortfall(
    positive_placements: FloatArray, negative_placements: FloatArray, drop: float
) -> str | None:
    """Why this reference cannot give a design (None when it can)."""
    for name, values in (("positives", positive_placements), ("negatives", negative_placements)):
        if float(values.mean()) - drop <= float(values.min()):
            return (
                f"reference placements of {name} cannot fall by {drop:.2f} (AUROC "
                f"{float(values.mean()):.2f}, lowest placement {float(values.min()):.2f}): "
                "the reference separates the classes too well or too little for this drop"
            )
    return None


class _Placed(NamedTuple):
    """The reference's own placements, per class (positives first), and the class shares."""

    by_class: tuple[FloatArray, FloatArray]
    shares: tuple[float, float]

    def mixture(self, thetas: Sequence[float]) -> FloatArray:
        """Probability of each reference case's step when class ``c`` is tilted by
        ``thetas[c]`` (0: the reference's own distribution), mixed at the class shares."""
        return np.concatenate(
            [
                share * tilted_weights(values, theta)
                for share, values, theta in zip(self.shares, self.by_class, thetas, strict=True)
            ]
        )


def _placed(reference_positive: FloatArray, reference_negative: FloatArray) -> _Placed:
    sizes = (reference_positive.size, reference_negative.size)
    by_class = tuple(
        placements(np.full(size, label), scores, reference_positive, reference_negative)
        for label, size, scores in (
            (True, sizes[0], reference_positive),
            (False, sizes[1], reference_negative),
        )
    )
    total = sizes[0] + sizes[1]
    return _Placed((by_class[0], by_class[1]), (sizes[0] / total, sizes[1] / total))


def design_auroc_cusum(
    reference_positive: FloatArray, reference_negative: FloatArray, config: AurocCusum
) -> AurocCusumDesign | str:
    """The design for this reference (sorted scores per class), or why there is none."""
    placed = _placed(reference_positive, reference_negative)
    reason = shortfall(*placed.by_class, config.drop)
    if reason is not None:
        return reason
    tilts = [tilt_to_mean(values, float(values.mean()) - config.drop) for values in placed.by_class]
    log_mgfs = [
        _log_mgf(values, theta) for values, theta in zip(placed.by_class, tilts, strict=True)
    ]
    largest = max(
        abs(theta * x + m) for theta, m in zip(tilts, log_mgfs, strict=True) for x in (0, 1)
    )
    scale = config.resolution / largest
    steps = np.concatenate(
        [_steps(v, t, m, scale) for v, t, m in zip(placed.by_class, tilts, log_mgfs, strict=True)]
    )
    z = float(norm.ppf(config.reference_confidence))
    means = _least_favourable_means(placed.by_class, (tilts[0], tilts[1]), z)
    pessimistic = placed.mixture(
        [tilt_to_mean(values, mean) for values, mean in zip(placed.by_class, means, strict=True)]
    )
    if float(pessimistic @ steps) >= 0.0:
        return (
            f"a reference of {reference_positive.size + reference_negative.size} labelled cases "
            f"is too uncertain to tell a drop of {config.drop:.2f} from its own sampling error "
            f"(at {config.reference_confidence:.0%} confidence): a larger reference or drop is "
            "needed"
        )
    limit = smallest_limit(lambda h: run_length(steps, pessimistic, h), config.cusum_arl0, 1)
    alternative = placed.mixture(tilts)
    head, head_false_alarm = _head_start(steps, pessimistic, limit, config)
    return AurocCusumDesign(
        reference_auroc=float(placed.by_class[0].mean()),
        positives=reference_positive.size,
        negatives=reference_negative.size,
        drop=config.drop,
        tilt_positive=tilts[0],
        log_mgf_positive=log_mgfs[0],
        tilt_negative=tilts[1],
        log_mgf_negative=log_mgfs[1],
        scale=scale,
        limit=limit,
        hold=max(limit, round(limit * config.hold_multiple)),
        arl0=run_length(steps, pessimistic, limit),
        arl0_reference=run_length(steps, placed.mixture([0.0, 0.0]), limit),
        arl1=run_length(steps, alternative, limit),
        head_start=head,
        head_start_false_alarm=head_false_alarm,
        arl1_head_start=run_length(steps, alternative, limit, start=head),
    )


def _head_start(
    steps: NDArray[np.int64], in_control: FloatArray, limit: int, config: AurocCusum
) -> tuple[int, float]:
    """The largest head start, up to half of ``limit`` (Lucas and Crosier's), whose false
    signal probability in control is at most ``config.new_value_false_alarm``, with that
    probability; 0 without ``by_fields``."""
    if not config.by_fields or config.new_value_false_alarm <= 0.0:
        return 0, 0.0
    chances = signal_before_zero(steps, in_control, limit)[: limit // 2 + 1]
    head = int(np.flatnonzero(chances <= config.new_value_false_alarm)[-1])
    return head, float(chances[head])


def case_steps(
    design: AurocCusumDesign, labels: NDArray[np.bool_], placement: FloatArray
) -> NDArray[np.int64]:
    """Each monitored case's step in grid units: its class's llr at its placement, rounded."""
    theta = np.where(labels, design.tilt_positive, design.tilt_negative)
    log_mgf = np.where(labels, design.log_mgf_positive, design.log_mgf_negative)
    return np.rint(design.scale * (-theta * placement - log_mgf)).astype(np.int64)
