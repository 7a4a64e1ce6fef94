"""The statistics behind PCCP acceptance criteria that the performance library lacks.

AUROC non-inferiority of a candidate's AUROC to the champion's on the same locked test cases
(criterion kind ``non_inferiority``): with the paired DeLong difference
``d = AUROC(candidate) - AUROC(champion)`` and its standard error ``se``, the null hypothesis
``d <= -margin`` is rejected (the candidate is non-inferior) when
``p = 1 - Phi((d + margin) / se) < alpha``, equivalently when the one-sided ``1 - alpha`` lower
bound ``d - z_(1-alpha) * se`` is above ``-margin``.

Sensitivity and specificity non-inferiority on the same cases (:func:`paired_non_inferiority`):
the one-sided ``1 - alpha`` lower bound of ``p(candidate) - p(champion)`` by Newcombe's hybrid
score interval for paired proportions must lie above ``-margin``. PPV and NPV at a stated
prevalence (:func:`predictive_value_bound`) are bounded from the Wilson bounds of sensitivity
and specificity.

References: R. G. Newcombe, "Improved confidence intervals for the difference between binomial
proportions based on paired data", Statistics in Medicine 17 (1998) 2635-2650 (method 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint  # type: ignore[import-untyped]

from monitor.performance._auroc import paired_delong


@dataclass(frozen=True, slots=True)
class NonInferiority:
    """The numbers a non-inferiority criterion reports."""

    champion_auroc: float
    candidate_auroc: float
    difference: float
    standard_error: float
    lower_bound: float
    """One-sided ``1 - alpha`` lower bound of the difference."""
    p_value: float
    margin: float
    alpha: float

    @property
    def passed(self) -> bool:
        return self.p_value < self.alpha


def non_inferiority(
    positive: NDArray[np.bool_],
    champion_scores: NDArray[np.float64],
    candidate_scores: NDArray[np.float64],
    *,
    margin: float,
    alpha: float = 0.025,
) -> NonInferiority:
    """Paired DeLong non-inferiority test of the candidate's AUROC (see the module docstring)."""
    if margin < 0 or not 0 < alpha < 0.5:
        raise ValueError("margin must be >= 0 and alpha in (0, 0.5)")
    paired = paired_delong(positive, champion_scores, candidate_scores)
    se = float(np.sqrt(paired.variance))
    shifted = paired.difference + margin
    # With identical rankings (se 0) the difference is known exactly.
    exact = 0.0 if shifted > 0 else 1.0
    p_value = float(norm.sf(shifted / se)) if se > 0 else exact
    return NonInferiority(
        champion_auroc=paired.auroc_a,
        candidate_auroc=paired.auroc_b,
        difference=paired.difference,
        standard_error=se,
        lower_bound=paired.difference - float(norm.ppf(1 - alpha)) * se,
        p_value=p_value,
        margin=margin,
        alpha=alpha,
    )


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """A difference of two proportions measured on the same cases, candidate minus champion,
    with Newcombe's hybrid score interval (method 10 of Newcombe 1998).

    The 2x2 table counts the cases each model got right (``hits``): ``both``, ``candidate_only``,
    ``champion_only``, ``neither``.
    """

    candidate: float
    champion: float
    difference: float
    lower: float
    upper: float
    confidence_level: float
    both: int
    candidate_only: int
    champion_only: int
    neither: int

    @property
    def cases(self) -> int:
        return self.both + self.candidate_only + self.champion_only + self.neither


def paired_difference(
    candidate_hits: NDArray[np.bool_],
    champion_hits: NDArray[np.bool_],
    *,
    confidence_level: float = 0.95,
) -> PairedDifference:
    """Newcombe's interval for ``p(candidate) - p(champion)`` on paired binary outcomes.

    With ``p1``, ``p2`` the two proportions and ``(l1, u1)``, ``(l2, u2)`` their Wilson
    intervals, the interval is ``d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)``
    to ``d + sqrt((p2 - l2)^2 - 2 phi (p2 - l2)(u1 - p1) + (u1 - p1)^2)``, where ``phi`` is the
    table's correlation ``(ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d))`` with Newcombe's correction
    (``ad - bc`` reduced by ``n/2`` when it is above ``n/2``, set to 0 between 0 and ``n/2``).
    Without correlation it is the independent-samples Newcombe interval (what the tests check
    against ``statsmodels``); the correlation narrows it, as pairing should.
    """
    candidate_hits = np.asarray(candidate_hits, dtype=bool)
    champion_hits = np.asarray(champion_hits, dtype=bool)
    if candidate_hits.shape != champion_hits.shape or candidate_hits.ndim != 1:
        raise ValueError("the two models' outcomes must be paired: one each per case")
    n = candidate_hits.size
    if n == 0:
        raise ValueError("no cases to compare")
    if not 0 < confidence_level < 1:
        raise ValueError("confidence_level must lie in (0, 1)")
    a = int(np.count_nonzero(candidate_hits & champion_hits))
    b = int(np.count_nonzero(candidate_hits & ~champion_hits))
    c = int(np.count_nonzero(~candidate_hits & champion_hits))
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, l2), (u1, u2) = proportion_confint(
        np.array([a + b, a + c]), n, alpha=1 - confidence_level, method="wilson"
    )
    # statsmodels' bound can miss the estimate by rounding noise at 0 or n successes.
    l1, l2, u1, u2 = min(l1, p1), min(l2, p2), max(u1, p1), max(u2, p2)
    phi = _newcombe_phi(a, b, c, d)
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    difference = p1 - p2
    return PairedDifference(
        candidate=p1,
        champion=p2,
        difference=difference,
        lower=max(-1.0, difference - float(np.sqrt(max(below, 0.0)))),
        upper=min(1.0, difference + float(np.sqrt(max(above, 0.0)))),
        confidence_level=confidence_level,
        both=a,
        candidate_only=b,
        champion_only=c,
        neither=d,
    )


def _newcombe_phi(a: int, b: int, c: int, d: int) -> float:
    """The 2x2 table's phi coefficient with Newcombe's (1998) continuity correction."""
    n = a + b + c + d
    denominator = float(a + b) * (c + d) * (a + c) * (b + d)
    if denominator == 0:
        return 0.0
    excess = a * d - b * c
    if excess > n / 2:
        corrected = excess - n / 2
    elif excess < 0:
        corrected = float(excess)
    else:
        corrected = 0.0
    return corrected / float(np.sqrt(denominator))


@dataclass(frozen=True, slots=True)
class PairedNonInferiority:
    """A paired proportion (sensitivity or specificity) non-inferiority decision."""

    difference: PairedDifference
    margin: float
    alpha: float

    @property
    def passed(self) -> bool:
        """The one-sided ``1 - alpha`` lower bound is above ``-margin``."""
        return self.difference.lower > -self.margin


def paired_non_inferiority(
    candidate_hits: NDArray[np.bool_],
    champion_hits: NDArray[np.bool_],
    *,
    margin: float,
    alpha: float = 0.025,
) -> PairedNonInferiority:
    """Non-inferiority of the candidate's proportion to the champion's on the same cases:
    passed when the lower end of Newcombe's two-sided ``1 - 2 alpha`` interval (a one-sided
    ``1 - alpha`` bound) lies above ``-margin``."""
    if margin < 0 or not 0 < alpha < 0.5:
        raise ValueError("margin must be >= 0 and alpha in (0, 0.5)")
    return PairedNonInferiority(
        paired_difference(candidate_hits, champion_hits, confidence_level=1 - 2 * alpha),
        margin,
        alpha,
    )


PredictiveValue = Literal["ppv", "npv"]


def predictive_value(
    kind: PredictiveValue, sensitivity: float, specificity: float, prevalence: float
) -> float:
    """PPV or NPV at ``prevalence`` (Bayes' rule), from sensitivity and specificity."""
    if not 0 < prevalence < 1:
        raise ValueError("prevalence must lie in (0, 1)")
    if kind == "ppv":
        true, false = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    else:
        true, false = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return true / (true + false) if true + false > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PredictiveBound:
    """A predictive value at a stated prevalence with its one-sided lower bound."""

    kind: PredictiveValue
    prevalence: float
    estimate: float
    lower_bound: float
    confidence_level: float
    """Of the lower bound, one-sided."""


def predictive_value_bound(
    kind: PredictiveValue,
    *,
    true_positives: int,
    positives: int,
    true_negatives: int,
    negatives: int,
    prevalence: float,
    confidence_level: float = 0.95,
) -> PredictiveBound:
    """PPV or NPV at a stated prevalence, with a one-sided lower bound at ``confidence_level``.

    Both predictive values increase with sensitivity and with specificity, so the value at the
    two one-sided Wilson lower bounds (each at ``1 - (1 - confidence_level) / 2``, Bonferroni)
    is below the true value whenever both bounds are, which happens with probability at least
    ``confidence_level``: a conservative bound, which the tests check by simulation.
    """
    if min(positives, negatives) < 1:
        raise ValueError("a predictive value needs cases of both classes")
    each = (1 - confidence_level) / 2  # one-sided error of each Wilson bound
    lower, _ = proportion_confint(
        np.array([true_positives, true_negatives]),
        np.array([positives, negatives]),
        alpha=2 * each,
        method="wilson",
    )
    sensitivity, specificity = true_positives / positives, true_negatives / negatives
    return PredictiveBound(
        kind=kind,
        prevalence=prevalence,
        estimate=predictive_value(kind, sensitivity, specificity, prevalence),
        lower_bound=predictive_value(
            kind, min(float(lower[0]), sensitivity), min(float(lower[1]), specificity), prevalence
        ),
        confidence_level=confidence_level,
    )
