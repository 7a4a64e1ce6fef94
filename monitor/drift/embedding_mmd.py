"""Image-content drift in the deployed model's own representation: MMD on the embeddings.

``inference-event/v2`` carries up to 32 numbers per study, a PCA projection of the model's
penultimate features (``retrain.embedding``). This detector runs the batched MMD permutation
test (:class:`~monitor.drift.mmd.MMDDetector`, same kernel, bandwidth and p-value) on those
components, named ``emb_00`` ..., and reports per-component attributions as the pixel MMD does.

On top, it reads the window's mean shift (raw embedding units, window minus reference) against
the model's **known directions** (:mod:`monitor.drift.directions`): when the shift is clearly
aligned with one (cosine at least ``min_cosine``), that direction is the result's first
attribution, ``direction:<name>``, and the explanation says "window mean moved towards lateral
views"; otherwise the components that moved most lead. Directions are not configuration: they
belong to a model version's projection and are passed to :meth:`score` (the engine gets them
from a :class:`~monitor.drift.engine.DirectionSource`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from monitor.drift.base import DriftResult, FeatureAttribution, FeatureMatrix, register
from monitor.drift.directions import DIRECTION_PREFIX, Direction, aligned
from monitor.drift.mmd import MMDConfig, MMDDetector


class EmbeddingMMDConfig(MMDConfig):
    """:class:`MMDConfig` on embeddings, and how clearly a shift must align with a direction."""

    min_cosine: float = Field(default=0.5, gt=0.0, le=1.0)
    """A known direction is named when the window's mean shift has at least this cosine with
    it (0.5: within 60 degrees); below, the leading components are named instead."""


_DEFAULT_CONFIG = EmbeddingMMDConfig()


@register("embedding_mmd")
class EmbeddingMMDDetector:
    """MMD on embedding components, explained by known directions when one is aligned."""

    name: ClassVar[str]

    def __init__(self, config: EmbeddingMMDConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self._mmd = MMDDetector(config)
        self._reference_mean: NDArray[np.float64] | None = None

    def fit(self, reference: FeatureMatrix) -> Self:
        """Fit the MMD on the reference embeddings (rows with a missing component dropped)."""
        self._mmd.fit(reference)
        self._reference_mean = _complete(reference.values).mean(axis=0)
        return self

    def score(self, window: FeatureMatrix, directions: tuple[Direction, ...] = ()) -> DriftResult:
        """The MMD result on ``window``, its first attribution the known direction the mean
        shift points to (if any of ``directions`` is aligned). Raises as ``MMDDetector.score``.
        """
        result = self._mmd.score(window)
        assert self._reference_mean is not None  # _mmd.score raised NotFittedError otherwise
        shift = _complete(window.values).mean(axis=0) - self._reference_mean
        found = aligned(shift, directions, self.config.min_cosine)
        attributions = result.attributions
        if found is not None:
            leading = FeatureAttribution(
                feature=f"{DIRECTION_PREFIX}{found.direction.name}",
                statistic=found.cosine,
                effect_size=found.along,
                explanation=found.explanation(),
            )
            attributions = (leading, *attributions)
        return dataclasses.replace(result, detector=self.name, attributions=attributions)


def _complete(values: NDArray[np.float64]) -> NDArray[np.float64]:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values).all(axis=1)]
