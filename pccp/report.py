"""The evidence of a PCCP gate run as data: what :func:`pccp.gate.build_report`
fills and :mod:`pccp.evidence` renders, stored as JSON on the candidate and in MLflow.

Aggregates only: per-criterion decisions with their numbers, per-group point estimates, ROC
points and reliability bins of both models. No study key is ever in a report.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from pccp.plan import Metric
from pccp.threshold import ThresholdProvenance

Number = float | int | str | None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GroupRow(_Frozen):
    """One group of a group criterion (``group_minimum``, ``regressions``)."""

    field: str
    value: str
    cases: int
    positives: int
    candidate: float | None
    champion: float | None
    evaluated: bool
    passed: bool | None
    """None when not evaluated."""
    note: str = ""
    """Why a group was not evaluated."""
    lower_bound: float | None = None
    """For bound and non-inferiority criteria: the group's lower bound (of the metric, or of
    the difference from the champion)."""


class CoverageRow(_Frozen):
    """One value of one content field at one site (``content_coverage``): its share of the
    site's recent studies against the locked test set's cases."""

    site_id: str
    field: str
    value: str
    site_studies: int
    site_share: float
    locked_cases: int
    locked_share: float
    required: bool
    """The value makes up at least the criterion's ``min_share`` of the site's studies."""
    covered: bool | None
    """Required and with enough locked cases; None when not required."""
    note: str = ""


class CriterionResult(_Frozen):
    """The decision on one criterion, with every number it used."""

    id: str
    kind: str
    description: str
    passed: bool
    numbers: dict[str, Number]
    detail: str
    groups: list[GroupRow] = []
    coverage: list[CoverageRow] = []
    """For ``content_coverage``: the site mix against the locked mix, value by value."""


class PointMetrics(_Frozen):
    auroc: float | None
    sensitivity: float | None
    specificity: float | None

    def of(self, metric: Metric) -> float | None:
        return {
            "auroc": self.auroc,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
        }[metric]


class GroupMetrics(_Frozen):
    """One value of one group field: point estimates of both models (None without a class)."""

    field: str
    value: str
    cases: int
    positives: int
    candidate: PointMetrics
    champion: PointMetrics

    @property
    def both_classes(self) -> bool:
        return 0 < self.positives < self.cases


class ReliabilityRow(_Frozen):
    lower: float
    upper: float
    count: int
    mean_score: float | None
    observed_rate: float | None


class ModelSummary(_Frozen):
    """One model on the whole locked test set, with its curves for the report's plots."""

    version: str
    threshold: float
    auroc: float
    sensitivity: float
    specificity: float
    ece: float | None
    roc_false_positive_rate: list[float]
    roc_true_positive_rate: list[float]
    reliability: list[ReliabilityRow]


class FlaggedRegression(_Frozen):
    """A metric in which the candidate is worse than the champion beyond the noise: the 95%
    interval of the paired difference lies wholly on the worse side of zero. Listed in the
    evidence whether or not a criterion covers it."""

    field: str | None
    """The group field (``site``, ``PatientSex``...); None for the whole locked test set."""
    value: str | None
    metric: Literal["auroc", "sensitivity", "specificity", "ece"]
    cases: int
    """The cases the metric is computed on (positives for sensitivity, negatives for
    specificity, all for AUROC and ECE)."""
    candidate: float
    champion: float
    difference: float
    """Candidate minus champion."""
    lower: float
    upper: float
    method: str
    sentence: str


class EmbeddingCoverage(_Frozen):
    """How much of the sites' recent embeddings lies outside the locked test set's
    (``pccp.embedding_coverage``); evidence only, it decides nothing."""

    embedding_id: str
    sites: list[str]
    site_embeddings: int
    locked_cases: int
    radius: float
    """The 95th percentile of the locked cases' nearest-other-locked-case distances."""
    outside: int
    share_outside: float
    expected_share: float
    """What a site sending the locked set's own content would show (1 - the quantile)."""
    sentence: str


class GateOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    OUT_OF_SCOPE = "out_of_scope"
    """The candidate changes what the plan fixes: it needs a new regulatory submission."""


class GateReport(_Frozen):
    """The evidence of one gate run. Aggregates only: no study key is ever in it."""

    plan_id: str
    plan_version: str
    plan_fingerprint: str
    model_name: str
    candidate_version: str
    champion_version: str
    locked_test_sha256: str
    cases: int
    positives: int
    evaluated_at: AwareDatetime
    outcome: GateOutcome
    scope_violations: list[str]
    criteria: list[CriterionResult]
    candidate: ModelSummary
    champion: ModelSummary
    groups: list[GroupMetrics]
    threshold: ThresholdProvenance | None = None
    """Where the candidate's operating threshold came from (None in reports before the plan
    had a threshold policy)."""
    regressions: list[FlaggedRegression] = []
    """Every metric, overall and per group, worse than the champion's beyond its noise."""
    embedding_coverage: EmbeddingCoverage | None = None
    """The sites' recent embeddings against the locked set's (None: no projection or no
    inference-event/v2 embeddings to compare)."""
