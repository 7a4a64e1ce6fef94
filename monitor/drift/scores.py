"""Drift of the model's own output: a KS test per finding on the predicted scores.

Black-box shift detection (Rabanser, Günnemann & Lipton 2019, "Failing Loudly"): a shift in the
inputs that matters to the model shows up in the distribution of its outputs, and univariate KS
tests on the outputs, Bonferroni-corrected, were among the strongest detectors they compared. It
needs no labels, so it alarms weeks before ground truth can show a drop in accuracy.

The statistics are :class:`monitor.drift.ks.KSDetector`'s: the scores become one feature per
finding and the KS detector does the test, correction and ranking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import ClassVar, Self

import numpy as np

from monitor.drift.base import DriftResult, FeatureMatrix, register
from monitor.drift.ks import Column, KSConfig, KSDetector

FindingScores = Mapping[str, Sequence[float]]
"""Model outputs of a sample: finding -> one score in [0, 1] per study (NaN = not scored)."""


class ScoreKSConfig(KSConfig):
    """Settings of the score KS test (those of :class:`KSConfig`, applied per finding).

    ``min_effect_size`` is the Wasserstein distance between score distributions in reference
    standard deviations of that finding's score.
    """


_DEFAULT_CONFIG = ScoreKSConfig()


def describe_mean_scores(reference: Column, window: Column) -> str:
    """How a finding's scores changed: window mean score against reference mean score."""
    return f"mean score {window.mean():.2f} vs reference {reference.mean():.2f}"


@register("score_ks")
class ScoreKSDetector:
    """KS test per finding on the model's scores, corrected across findings.

    Results read as :class:`KSDetector`'s, with one attribution per finding, e.g.
    ``"lesion: mean score 0.41 vs reference 0.22 (KS 0.30, Wasserstein 0.85 sd)"``.
    """

    name: ClassVar[str]

    def __init__(self, config: ScoreKSConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self._ks = KSDetector(config, describe=describe_mean_scores)

    def fit(self, reference: FindingScores) -> Self:
        """Keep the reference scores of every finding.

        Raises ValueError for no findings, findings of different lengths or a score outside
        [0, 1]; InsufficientDataError when there are fewer than ``min_reference`` studies.
        """
        self._ks.fit(to_feature_matrix(reference))
        return self

    def score(self, window: FindingScores) -> DriftResult:
        """Test a window's scores against the reference, finding by finding.

        Raises NotFittedError before ``fit``; ValueError and InsufficientDataError as
        :meth:`KSDetector.score` does, and ValueError for malformed scores as :meth:`fit`.
        """
        result = self._ks.score(to_feature_matrix(window))
        # The inner detector stamps its own name; the fingerprint is already this config's.
        return replace(result, detector=self.name)


def to_feature_matrix(scores: FindingScores) -> FeatureMatrix:
    """One column per finding, one row per study; NaN stays missing.

    Raises ValueError for no findings, findings of different lengths or a score outside [0, 1]
    (logits passed by mistake would otherwise be tested as if they were probabilities).
    """
    if not scores:
        raise ValueError("no findings")
    lengths = {finding: len(values) for finding, values in scores.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every finding needs one score per study, got lengths {lengths}")
    values = np.column_stack([np.asarray(v, dtype=np.float64) for v in scores.values()])
    scored = values[~np.isnan(values)]
    if ((scored < 0.0) | (scored > 1.0)).any():
        raise ValueError("scores must lie in [0, 1] (NaN marks a study without a score)")
    return FeatureMatrix(names=tuple(scores), values=values)
