"""The statistics behind PCCP acceptance criteria that the performance library lacks.

Non-inferiority of a candidate's AUROC to the champion's on the same locked test cases
(criterion kind ``non_inferiority``): with the paired DeLong difference
``d = AUROC(candidate) - AUROC(champion)`` and its standard error ``se``, the null hypothesis
``d <= -margin`` is rejected (the candidate is non-inferior) when
``p = 1 - Phi((d + margin) / se) < alpha``, equivalently when the one-sided ``1 - alpha`` lower
bound ``d - z_(1-alpha) * se`` is above ``-margin``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

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
