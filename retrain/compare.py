"""Champion against candidate on the same validation studies (values in, values out).

The retraining job scores its validation side with the champion and with the candidate it
trained, for one finding, and hands the scores here. The result is the AUROC of each model
overall and per site: the job stores it in the request's progress (:meth:`Comparison.as_json`)
and logs it as ``compare.<scope>.<model>_auroc`` metrics of the MLflow run
(:meth:`Comparison.scopes` names the scopes).

A group (the whole side, or one site) whose studies are all positive or all negative has no
AUROC: it is None, never a made-up 0.5, and its counts still say why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

GroupJson = dict[str, int | float | None]


@dataclass(frozen=True, slots=True)
class GroupComparison:
    """One group's studies and each model's AUROC on them (None: the group lacks a class)."""

    n: int
    positives: int
    champion_auroc: float | None
    candidate_auroc: float | None

    def as_json(self) -> GroupJson:
        return {
            "n": self.n,
            "positives": self.positives,
            "champion_auroc": self.champion_auroc,
            "candidate_auroc": self.candidate_auroc,
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """Champion and candidate on one finding, overall and per site."""

    finding: str
    overall: GroupComparison
    sites: Mapping[str, GroupComparison]
    """Each site of the validation side, in sorted order."""

    def scopes(self) -> list[tuple[str, GroupComparison]]:
        """``("overall", ...)``, then each site in sorted order."""
        return [("overall", self.overall), *self.sites.items()]

    def as_json(self) -> dict[str, str | GroupJson | dict[str, GroupJson]]:
        """The comparison as a JSON document (a retrain request's ``progress.comparison``)."""
        return {
            "finding": self.finding,
            "overall": self.overall.as_json(),
            "sites": {site: group.as_json() for site, group in self.sites.items()},
        }


def compare(
    finding: str,
    truth: npt.ArrayLike,
    champion_scores: npt.ArrayLike,
    candidate_scores: npt.ArrayLike,
    sites: Sequence[str],
) -> Comparison:
    """AUROC of champion and candidate on the same studies, overall and per site.

    ``truth`` holds each study's label of ``finding`` (0 or 1), ``*_scores`` each model's score
    of it and ``sites`` each study's site, all in the same study order. Raises ValueError when
    their lengths differ or a label is not 0 or 1.
    """
    labels = np.asarray(truth)
    champion = np.asarray(champion_scores, dtype=np.float64)
    candidate = np.asarray(candidate_scores, dtype=np.float64)
    site_ids = np.asarray(sites, dtype=np.str_)
    shapes = {array.shape for array in (labels, champion, candidate, site_ids)}
    if len(shapes) != 1 or labels.ndim != 1:
        raise ValueError(f"truth, scores and sites must be 1-D of one length, not {shapes}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("truth must hold labels 0 or 1")

    def group(mask: npt.NDArray[np.bool_]) -> GroupComparison:
        n, positives = int(mask.sum()), int(labels[mask].sum())
        both_classes = 0 < positives < n
        return GroupComparison(
            n=n,
            positives=positives,
            champion_auroc=_auroc(labels[mask], champion[mask]) if both_classes else None,
            candidate_auroc=_auroc(labels[mask], candidate[mask]) if both_classes else None,
        )

    return Comparison(
        finding=finding,
        overall=group(np.ones(labels.shape[0], dtype=bool)),
        sites={site: group(site_ids == site) for site in sorted(set(sites))},
    )


def _auroc(labels: npt.NDArray[np.generic], scores: npt.NDArray[np.float64]) -> float:
    return float(roc_auc_score(labels, scores))
