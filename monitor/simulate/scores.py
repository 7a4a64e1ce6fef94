"""The score model that stands in for a trained classifier until one exists.

For the finding "lesion" with truth ``y`` (0 or 1) on a study from ``profile``::

    score = sigmoid(b0 + separation(profile) * (2y - 1) / 2 + noise_sd * eps),  eps ~ N(0, 1)
    separation(profile) = base_separation * min(1, profile.cnr / reference_cnr)

The logits of positives and negatives are then normal with equal spread and means
``separation`` apart, so ``AUROC = Phi(separation / (noise_sd * sqrt(2)))``: the constants below
give 0.90 on every catalogue profile (CNR above the reference) and 0.70 on the degraded one.
docs/simulate.md derives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from monitor.simulate.profiles import ScannerProfile

FINDING: Final = "lesion"
THRESHOLD: Final = 0.5


@dataclass(frozen=True, slots=True)
class ScoreModel:
    """The constants of the score model (see the module docstring)."""

    intercept: float = 0.0
    """b0: with 0 the operating threshold 0.5 gives equal sensitivity and specificity."""
    base_separation: float = 1.8124
    """Logit gap between class means at full image quality: Phi(1.8124 / sqrt 2) = 0.90."""
    reference_cnr: float = 4.0
    """Lesion contrast-to-noise ratio at and above which the model separates fully."""
    noise_sd: float = 1.0
    """Spread of the logit around its class mean."""


DEFAULT_MODEL: Final = ScoreModel()


def separation(profile: ScannerProfile, model: ScoreModel = DEFAULT_MODEL) -> float:
    """The logit gap between positives and negatives on images from ``profile``."""
    return model.base_separation * min(1.0, profile.cnr / model.reference_cnr)


def lesion_scores(
    profile: ScannerProfile,
    has_lesion: npt.NDArray[np.bool_],
    rng: np.random.Generator,
    model: ScoreModel = DEFAULT_MODEL,
) -> npt.NDArray[np.float64]:
    """One score in [0, 1] per study, drawn from the score model (vectorised)."""
    sign = np.where(has_lesion, 1.0, -1.0)
    eps = rng.standard_normal(sign.shape)
    logits = model.intercept + separation(profile, model) * sign / 2 + model.noise_sd * eps
    return _sigmoid(logits)


def lesion_score(
    profile: ScannerProfile,
    has_lesion: bool,
    rng: np.random.Generator,
    model: ScoreModel = DEFAULT_MODEL,
) -> float:
    """The score of one study; the same draw as one element of :func:`lesion_scores`."""
    return float(lesion_scores(profile, np.array([has_lesion]), rng, model)[0])


def _sigmoid(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # tanh form: no overflow warning for large negative logits, unlike 1 / (1 + exp(-x)).
    result: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * logits))
    return result
