"""The PCCP acceptance gate's evaluation: a plan's criteria on the locked test set, the scope
guard, and the evidence report. Values in, values out: no database, no registry.

The caller scores the locked test cases (:class:`GateCases`) with the candidate and the champion
(:class:`ModelScores`, each with its own locked threshold; a case is predicted positive when its
score is at least the threshold). :func:`evaluate_criteria` then decides each criterion of
``plan.protocol.performance_evaluation``, in plan order, as docs/pccp.md defines them:

* ``lower_bound``: the two-sided 95% interval's lower bound of the candidate's metric is at
  least ``min``: DeLong for AUROC (``monitor.performance``'s interval, clipped to [0, 1]),
  Wilson for sensitivity and specificity at the candidate's threshold. With ``by``, in every
  value of that field with at least ``min_cases`` cases of the metric's class.
* ``non_inferiority``: the candidate's metric is not worse than the champion's by ``margin``
  on the same cases, one-sided at ``alpha``: :func:`pccp.criteria.non_inferiority` (paired
  DeLong) for AUROC, :func:`pccp.criteria.paired_non_inferiority` (Newcombe) for sensitivity
  and specificity, each model at its own threshold. With ``by``, per group as above.
* ``predictive_value``: PPV or NPV at the plan's prevalence, its one-sided 95% lower bound
  (:func:`pccp.criteria.predictive_value_bound`) at least ``min``.
* ``group_minimum``: the point estimate of the metric is at least ``min`` in every value of the
  ``by`` field that has at least ``min_cases`` cases and both classes. Smaller groups are listed
  as not evaluated and never fail; with none evaluated the criterion passes and says so.
* ``calibration``: the candidate's expected calibration error over 10 equal-width bins is at most
  ``max``. The bins are the reliability diagram's (``monitor.performance``: a score on a bin edge
  falls in the lower bin, as in scikit-learn), so the report's diagram shows what was decided.
* ``regressions``: see :func:`evaluate_criteria`.
* ``content_coverage``: the locked test set covers what the sites now send
  (:func:`pccp.coverage.evaluate_coverage`, on the caller's :class:`pccp.coverage.ContentFacts`
  for the criterion, keyed by its id).

:func:`scope_violations` is the scope guard: what a candidate changed that the plan fixes, and
whether its threshold came from the plan's threshold policy (:mod:`pccp.threshold`). A
candidate outside the plan is ``out_of_scope`` whatever its numbers. The evidence also lists
every regression beyond the noise that no criterion covers (:mod:`pccp.regressions`).
:func:`build_report` puts it all in a :class:`GateReport`, the evidence (rendered by
:mod:`pccp.evidence`): aggregates only, never a study key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score, roc_curve  # type: ignore[import-untyped]

from monitor.performance.metrics import (
    BinaryMetrics,
    Interval,
    PerformanceConfig,
    binary_metrics,
)
from pccp.coverage import ContentFacts, evaluate_coverage
from pccp.criteria import (
    non_inferiority,
    paired_non_inferiority,
    predictive_value_bound,
)
from pccp.plan import (
    BoundCriterion,
    CalibrationCriterion,
    ContentCoverageCriterion,
    Criterion,
    GroupMinimumCriterion,
    Metric,
    NonInferiorityCriterion,
    Plan,
    PredictiveValueCriterion,
    RegressionsCriterion,
)
from pccp.regressions import flag_regressions
from pccp.report import (
    CriterionResult,
    GateOutcome,
    GateReport,
    GroupMetrics,
    GroupRow,
    ModelSummary,
    Number,
    PointMetrics,
    ReliabilityRow,
)
from pccp.threshold import ThresholdFacts, ThresholdProvenance, threshold_violations

if TYPE_CHECKING:  # retrain.model imports torch; the gate only reads a spec's fields
    from retrain.model import ModelSpec

__all__ = [
    "GATE_METRICS",
    "REGRESSION_MIN_CASES",
    "REGRESSION_MIN_CLASS_CASES",
    "ROC_MAX_POINTS",
    "CriterionResult",
    "GateCases",
    "GateError",
    "GateOutcome",
    "GateReport",
    "GroupMetrics",
    "GroupRow",
    "ModelScores",
    "ModelSummary",
    "PointMetrics",
    "ReliabilityRow",
    "ThresholdFacts",
    "build_report",
    "evaluate_criteria",
    "group_metrics",
    "scope_violations",
]

REGRESSION_MIN_CASES: Final = 30
"""Fewest cases (with both classes) for a group to count in a ``regressions`` criterion."""
REGRESSION_MIN_CLASS_CASES: Final = 20
"""And, for sensitivity (specificity), fewest positive (negative) cases: with 20, one case
moves the estimate by 0.05."""
ROC_MAX_POINTS: Final = 200
GATE_METRICS: Final = PerformanceConfig(
    confidence_level=0.95,
    auroc_ci="delong",
    ece_bins=10,
    min_cases=1,
    min_positives=2,
    min_negatives=2,
    min_predicted=1,
    min_calibration_cases=1,
)
"""The locked test set is what the plan says it is: no extra minimum counts beyond DeLong's two
cases per class (which :class:`GateCases` guarantees)."""
_LABELS: Final[dict[str, str]] = {
    "auroc": "AUROC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}


class GateError(ValueError):
    """Test cases or scores the gate cannot evaluate, or a plan that asks for what they lack."""


@dataclass(frozen=True, slots=True)
class GateCases:
    """The locked test cases: keys, truth and group fields (``site``, ``PatientSex``...), row-
    aligned. Both classes must be present with at least two cases each (DeLong needs two)."""

    study_keys: tuple[str, ...]
    positive: NDArray[np.bool_]
    groups: Mapping[str, NDArray[np.str_]]

    def __post_init__(self) -> None:
        n = len(self.study_keys)
        if self.positive.dtype != np.bool_ or self.positive.shape != (n,):
            raise GateError(f"positive must be {n} booleans, one per study key")
        if len(set(self.study_keys)) != n:
            raise GateError("study keys must be distinct")
        for field, values in self.groups.items():
            if np.shape(values) != (n,):
                raise GateError(f"group field {field!r} has {np.size(values)} values for {n} cases")
        positives = int(np.count_nonzero(self.positive))
        if min(positives, n - positives) < 2:
            raise GateError(
                f"{positives} positive and {n - positives} negative cases: "
                "the gate needs at least two of each"
            )


@dataclass(frozen=True, slots=True)
class ModelScores:
    """One model's probability of the finding per case (rows of :class:`GateCases`)."""

    version: str
    scores: NDArray[np.float64]
    threshold: float
    """The locked operating point: a case is predicted positive when its score is at least it."""

    def __post_init__(self) -> None:
        if self.scores.ndim != 1 or not np.isfinite(self.scores).all():
            raise GateError(f"model {self.version}: scores must be one finite value per case")
        if (self.scores < 0).any() or (self.scores > 1).any() or not 0 <= self.threshold <= 1:
            raise GateError(f"model {self.version}: scores and threshold must lie in [0, 1]")


@dataclass(frozen=True, slots=True)
class _Evaluation:
    """What the criteria read, computed once."""

    cases: GateCases
    candidate: ModelScores
    champion: ModelScores
    candidate_metrics: BinaryMetrics
    champion_metrics: BinaryMetrics
    groups: list[GroupMetrics]
    content: Mapping[str, ContentFacts]


def evaluate_criteria(
    plan: Plan,
    cases: GateCases,
    candidate: ModelScores,
    champion: ModelScores,
    content: Mapping[str, ContentFacts] | None = None,
) -> list[CriterionResult]:
    """Each criterion of the plan, in plan order (semantics in the module docstring).

    ``regressions`` compares the models' point estimates of ``metric`` in every value of every
    field of ``cases.groups`` (sites and subgroups alike) that has both classes and at least
    :data:`REGRESSION_MIN_CASES` (30) cases, and for sensitivity (specificity) at least
    :data:`REGRESSION_MIN_CLASS_CASES` (20) positive (negative) ones; a smaller group's
    estimate is too noisy to call a regression (with 30 cases a single AUROC can move by 0.1).
    A group regressed when the candidate's is below the champion's less ``tolerance``; the
    criterion passes when at most ``max_count`` groups did. Raises :class:`GateError` for
    scores not aligned with the cases, a group criterion whose ``by`` field the cases lack, or
    a ``content_coverage`` criterion whose id ``content`` lacks.
    """
    evaluation = _evaluate(cases, candidate, champion, content)
    return [_decide(criterion, evaluation) for criterion in plan.protocol.performance_evaluation]


def _evaluate(
    cases: GateCases,
    candidate: ModelScores,
    champion: ModelScores,
    content: Mapping[str, ContentFacts] | None,
) -> _Evaluation:
    for model in (candidate, champion):
        if model.scores.shape != cases.positive.shape:
            raise GateError(f"model {model.version}: {model.scores.size} scores, not one per case")
    return _Evaluation(
        cases=cases,
        candidate=candidate,
        champion=champion,
        candidate_metrics=binary_metrics(
            cases.positive, candidate.scores, candidate.threshold, GATE_METRICS
        ),
        champion_metrics=binary_metrics(
            cases.positive, champion.scores, champion.threshold, GATE_METRICS
        ),
        groups=group_metrics(cases, candidate, champion),
        content=content or {},
    )


def _decide(criterion: Criterion, evaluation: _Evaluation) -> CriterionResult:
    match criterion:
        case BoundCriterion(by=None):
            return _lower_bound(criterion, evaluation.candidate_metrics)
        case BoundCriterion():
            return _group_lower_bound(criterion, evaluation)
        case NonInferiorityCriterion(by=None, metric="auroc"):
            return _non_inferiority(criterion, evaluation)
        case NonInferiorityCriterion(by=None):
            return _paired_proportion(criterion, evaluation)
        case NonInferiorityCriterion():
            return _group_non_inferiority(criterion, evaluation)
        case PredictiveValueCriterion():
            return _predictive_value(criterion, evaluation.candidate_metrics)
        case GroupMinimumCriterion():
            return _group_minimum(criterion, evaluation.cases, evaluation.groups)
        case CalibrationCriterion():
            return _calibration(criterion, evaluation.candidate_metrics)
        case RegressionsCriterion():
            return _regressions(criterion, evaluation.groups)
        case ContentCoverageCriterion():
            facts = evaluation.content.get(criterion.id)
            if facts is None:
                raise GateError(
                    f"criterion {criterion.id} compares the sites' recent content with the "
                    "locked test set's, and none was given"
                )
            return evaluate_coverage(criterion, facts)


def _result(
    criterion: Criterion, passed: bool, numbers: dict[str, Number], detail: str
) -> CriterionResult:
    return CriterionResult(
        id=criterion.id,
        kind=criterion.kind,
        description=criterion.description,
        passed=passed,
        numbers=numbers,
        detail=detail,
    )


def _interval(metrics: BinaryMetrics, metric: Metric) -> Interval | None:
    return {
        "auroc": metrics.auroc,
        "sensitivity": metrics.sensitivity,
        "specificity": metrics.specificity,
    }[metric]


def _lower_bound(criterion: BoundCriterion, metrics: BinaryMetrics) -> CriterionResult:
    interval = _interval(metrics, criterion.metric)
    label = _LABELS[criterion.metric]
    if interval is None:  # unreachable with GateCases' two cases per class; kept as a refusal
        reason = metrics.unavailable.get(criterion.metric, "unavailable")
        return _result(criterion, False, {"min": criterion.min}, f"{label} unavailable: {reason}")
    numbers: dict[str, Number] = {
        "estimate": interval.estimate,
        "lower_bound": interval.lower,
        "upper_bound": interval.upper,
        "min": criterion.min,
        "confidence_level": GATE_METRICS.confidence_level,
        "method": interval.method,
    }
    if criterion.metric != "auroc":
        counts = metrics.counts
        numbers["threshold"] = metrics.threshold
        numbers["successes"] = counts.tp if criterion.metric == "sensitivity" else counts.tn
        numbers["total"] = (
            counts.positives if criterion.metric == "sensitivity" else counts.negatives
        )
    passed = interval.lower >= criterion.min
    detail = (
        f"lower 95% bound of {label} {interval.lower:.3f} {'>=' if passed else '<'} "
        f"{criterion.min:.2f} (estimate {interval.estimate:.3f}, {interval.method})"
    )
    return _result(criterion, passed, numbers, detail)


def _non_inferiority(
    criterion: NonInferiorityCriterion, evaluation: _Evaluation
) -> CriterionResult:
    test = non_inferiority(
        evaluation.cases.positive,
        evaluation.champion.scores,
        evaluation.candidate.scores,
        margin=criterion.margin,
        alpha=criterion.alpha,
    )
    numbers: dict[str, Number] = {
        "candidate_auroc": test.candidate_auroc,
        "champion_auroc": test.champion_auroc,
        "difference": test.difference,
        "se": test.standard_error,
        "lower_bound": test.lower_bound,
        "p_value": test.p_value,
        "margin": test.margin,
        "alpha": test.alpha,
    }
    detail = (
        f"AUROC difference {test.difference:+.3f} (candidate {test.candidate_auroc:.3f}, "
        f"champion {test.champion_auroc:.3f}), one-sided lower bound {test.lower_bound:+.3f}, "
        f"p = {test.p_value:.3g} {'<' if test.passed else '>='} {test.alpha:g} "
        f"against a margin of {test.margin:g}"
    )
    return _result(criterion, test.passed, numbers, detail)


def _class_rows(positive: NDArray[np.bool_], metric: Metric) -> NDArray[np.bool_]:
    """The cases a metric is computed on: positives (sensitivity), negatives (specificity),
    all (AUROC)."""
    if metric == "sensitivity":
        return positive
    if metric == "specificity":
        return ~positive
    return np.ones(positive.shape, dtype=bool)


def _hits(model: ModelScores, metric: Metric) -> NDArray[np.bool_]:
    """Cases the model gets right at its threshold: flagged (sensitivity), cleared (specificity)."""
    flagged = model.scores >= model.threshold
    return flagged if metric == "sensitivity" else ~flagged


def _group_field(criterion: BoundCriterion | NonInferiorityCriterion, cases: GateCases) -> str:
    assert criterion.by is not None
    if criterion.by not in cases.groups:
        known = ", ".join(sorted(cases.groups)) or "none"
        raise GateError(
            f"criterion {criterion.id} is by {criterion.by!r}, a field the test cases lack "
            f"(they have: {known})"
        )
    return criterion.by


def _class_count(positive: NDArray[np.bool_], metric: Metric) -> tuple[int, str]:
    """How many cases of the metric's class a group has, and their name."""
    positives = int(np.count_nonzero(positive))
    if metric == "sensitivity":
        return positives, "positive"
    if metric == "specificity":
        return positive.size - positives, "negative"
    return min(positives, positive.size - positives), "of the smaller class"


def _per_group(
    criterion: BoundCriterion | NonInferiorityCriterion,
    evaluation: _Evaluation,
    decide: Callable[[NDArray[np.bool_]], tuple[float, float, float | None, bool]],
) -> list[GroupRow]:
    """One row per value of ``criterion.by``; ``decide(rows)`` gives (candidate, champion,
    lower bound, passed) for the groups with enough cases of the metric's class."""
    field = _group_field(criterion, evaluation.cases)
    values = np.asarray(evaluation.cases.groups[field]).astype(str)
    rows = []
    for value in np.unique(values):
        in_group = values == value
        truth = evaluation.cases.positive[in_group]
        count, unit = _class_count(truth, criterion.metric)
        group = {
            "field": field,
            "value": str(value),
            "cases": int(in_group.sum()),
            "positives": int(np.count_nonzero(truth)),
        }
        # AUROC's DeLong interval needs two cases of each class, whatever the plan says.
        needed = max(criterion.min_cases, 2) if criterion.metric == "auroc" else criterion.min_cases
        if count < needed:
            note = f"{count} {unit} cases, fewer than {needed}"
            rows.append(
                GroupRow(
                    **group, candidate=None, champion=None, evaluated=False, passed=None, note=note
                )
            )
            continue
        candidate, champion, lower, passed = decide(in_group)
        rows.append(
            GroupRow(
                **group,
                candidate=candidate,
                champion=champion,
                evaluated=True,
                passed=passed,
                lower_bound=lower,
            )
        )
    return rows


def _group_numbers(
    criterion: BoundCriterion | NonInferiorityCriterion, rows: list[GroupRow]
) -> dict[str, Number]:
    checked = [row for row in rows if row.evaluated]
    lowest = min(checked, key=lambda row: row.lower_bound or 0.0, default=None)
    return {
        "by": criterion.by,
        "metric": criterion.metric,
        "min_cases": criterion.min_cases,
        "groups_evaluated": len(checked),
        "groups_failed": sum(not row.passed for row in checked),
        "groups_not_evaluated": len(rows) - len(checked),
        "lowest_bound": lowest.lower_bound if lowest else None,
        "lowest_group": lowest.value if lowest else None,
    }


def _group_lower_bound(criterion: BoundCriterion, evaluation: _Evaluation) -> CriterionResult:
    cases, candidate, champion = evaluation.cases, evaluation.candidate, evaluation.champion

    def decide(rows: NDArray[np.bool_]) -> tuple[float, float, float | None, bool]:
        ours = binary_metrics(
            cases.positive[rows], candidate.scores[rows], candidate.threshold, GATE_METRICS
        )
        theirs = binary_metrics(
            cases.positive[rows], champion.scores[rows], champion.threshold, GATE_METRICS
        )
        interval, reference = _interval(ours, criterion.metric), _interval(theirs, criterion.metric)
        if interval is None or reference is None:  # excluded by min_cases >= 1 per class
            raise GateError(f"criterion {criterion.id}: a group lacks the metric's class")
        return (
            interval.estimate,
            reference.estimate,
            interval.lower,
            interval.lower >= criterion.min,
        )

    rows = _per_group(criterion, evaluation, decide)
    label = _LABELS[criterion.metric]
    numbers = {**_group_numbers(criterion, rows), "min": criterion.min}
    bound = numbers["lowest_bound"]
    return _group_result(
        criterion,
        rows,
        numbers,
        failing=f"lower 95% bound of {label} below {criterion.min:.2f}",
        named=lambda row: f"{row.value} {row.candidate:.3f} (lower bound {row.lower_bound:.3f})",
        passing=f"lower 95% bound of {label} >= {criterion.min:.2f}",
        lowest=f"lowest {bound:.3f}" if isinstance(bound, float) else "",
    )


def _group_result(
    criterion: BoundCriterion | NonInferiorityCriterion,
    rows: list[GroupRow],
    numbers: dict[str, Number],
    *,
    failing: str,
    named: Callable[[GroupRow], str],
    passing: str,
    lowest: str,
) -> CriterionResult:
    """A per-group criterion's result: it fails when an evaluated group fails; the detail names
    each failed group (``named``), or says all passed, or that no group was large enough."""
    evaluated = [row for row in rows if row.evaluated]
    failed = [row for row in evaluated if not row.passed]
    if not evaluated:
        detail = (
            f"no {criterion.by} has {criterion.min_cases} or more cases of the metric's class: "
            "nothing to check"
        )
    elif failed:
        listed = "; ".join(named(row) for row in failed)
        detail = f"{failing} in {len(failed)} of {len(evaluated)} {criterion.by} groups: {listed}"
    else:
        detail = (
            f"{passing} in all {len(evaluated)} {criterion.by} groups ({lowest}, "
            f"{numbers['lowest_group']})"
        )
    result = _result(criterion, not failed, numbers, detail)
    return result.model_copy(update={"groups": rows})


def _paired_proportion(
    criterion: NonInferiorityCriterion, evaluation: _Evaluation
) -> CriterionResult:
    rows = _class_rows(evaluation.cases.positive, criterion.metric)
    test = paired_non_inferiority(
        _hits(evaluation.candidate, criterion.metric)[rows],
        _hits(evaluation.champion, criterion.metric)[rows],
        margin=criterion.margin,
        alpha=criterion.alpha,
    )
    diff, label = test.difference, _LABELS[criterion.metric]
    numbers: dict[str, Number] = {
        "metric": criterion.metric,
        "candidate": diff.candidate,
        "champion": diff.champion,
        "difference": diff.difference,
        "lower_bound": diff.lower,
        "margin": criterion.margin,
        "alpha": criterion.alpha,
        "cases": diff.cases,
        "discordant_candidate_only": diff.candidate_only,
        "discordant_champion_only": diff.champion_only,
        "method": "newcombe-paired",
    }
    detail = (
        f"{label} difference {diff.difference:+.3f} (candidate {diff.candidate:.3f}, champion "
        f"{diff.champion:.3f}, {diff.cases} cases), one-sided {1 - criterion.alpha:.1%} lower "
        f"bound {diff.lower:+.3f} {'>' if test.passed else '<='} -{criterion.margin:g}"
    )
    return _result(criterion, test.passed, numbers, detail)


def _group_non_inferiority(
    criterion: NonInferiorityCriterion, evaluation: _Evaluation
) -> CriterionResult:
    positive, metric = evaluation.cases.positive, criterion.metric

    def decide(rows: NDArray[np.bool_]) -> tuple[float, float, float | None, bool]:
        if metric == "auroc":
            test = non_inferiority(
                positive[rows],
                evaluation.champion.scores[rows],
                evaluation.candidate.scores[rows],
                margin=criterion.margin,
                alpha=criterion.alpha,
            )
            return test.candidate_auroc, test.champion_auroc, test.lower_bound, test.passed
        within = rows & _class_rows(positive, metric)
        paired = paired_non_inferiority(
            _hits(evaluation.candidate, metric)[within],
            _hits(evaluation.champion, metric)[within],
            margin=criterion.margin,
            alpha=criterion.alpha,
        )
        diff = paired.difference
        return diff.candidate, diff.champion, diff.lower, paired.passed

    rows = _per_group(criterion, evaluation, decide)
    label = _LABELS[metric]
    numbers = {
        **_group_numbers(criterion, rows),
        "margin": criterion.margin,
        "alpha": criterion.alpha,
    }
    bound = numbers["lowest_bound"]
    return _group_result(
        criterion,
        rows,
        numbers,
        failing=f"{label} not shown within {criterion.margin:g} of the champion",
        named=lambda row: (
            f"{row.value} {row.candidate:.3f} vs {row.champion:.3f} (lower bound of the "
            f"difference {row.lower_bound:+.3f})"
        ),
        passing=(
            f"{label} within {criterion.margin:g} of the champion (one-sided "
            f"{1 - criterion.alpha:.1%})"
        ),
        lowest=f"lowest bound {bound:+.3f}" if isinstance(bound, float) else "",
    )


def _predictive_value(
    criterion: PredictiveValueCriterion, metrics: BinaryMetrics
) -> CriterionResult:
    counts = metrics.counts
    bound = predictive_value_bound(
        criterion.metric,
        true_positives=counts.tp,
        positives=counts.positives,
        true_negatives=counts.tn,
        negatives=counts.negatives,
        prevalence=criterion.prevalence,
        confidence_level=GATE_METRICS.confidence_level,
    )
    passed = bound.lower_bound >= criterion.min
    label = criterion.metric.upper()
    numbers: dict[str, Number] = {
        "metric": criterion.metric,
        "prevalence": criterion.prevalence,
        "estimate": bound.estimate,
        "lower_bound": bound.lower_bound,
        "min": criterion.min,
        "threshold": metrics.threshold,
        "method": "wilson-bonferroni",
    }
    detail = (
        f"{label} at prevalence {criterion.prevalence:g}: {bound.estimate:.3f}, one-sided 95% "
        f"lower bound {bound.lower_bound:.3f} {'>=' if passed else '<'} {criterion.min:.2f}"
    )
    return _result(criterion, passed, numbers, detail)


def _group_minimum(
    criterion: GroupMinimumCriterion, cases: GateCases, groups: list[GroupMetrics]
) -> CriterionResult:
    if criterion.by not in cases.groups:
        known = ", ".join(sorted(cases.groups)) or "none"
        raise GateError(
            f"criterion {criterion.id} is by {criterion.by!r}, a field the test cases lack "
            f"(they have: {known})"
        )
    rows = []
    for group in (g for g in groups if g.field == criterion.by):
        estimate = group.candidate.of(criterion.metric)
        if group.cases < criterion.min_cases:
            note = f"{group.cases} cases, fewer than {criterion.min_cases}"
        elif not group.both_classes or estimate is None:
            note = "one class"
        else:
            note = ""
        passed = estimate is not None and estimate >= criterion.min
        rows.append(_row(group, criterion.metric, not note, passed, note))
    checked = [row for row in rows if row.evaluated]
    failed = [row for row in checked if not row.passed]
    lowest = min(checked, key=lambda row: row.candidate or 0.0, default=None)
    label = _LABELS[criterion.metric]
    numbers: dict[str, Number] = {
        "by": criterion.by,
        "metric": criterion.metric,
        "min": criterion.min,
        "min_cases": criterion.min_cases,
        "groups_evaluated": len(checked),
        "groups_failed": len(failed),
        "groups_not_evaluated": len(rows) - len(checked),
        "lowest": lowest.candidate if lowest else None,
        "lowest_group": lowest.value if lowest else None,
    }
    if lowest is None:
        detail = (
            f"no {criterion.by} has {criterion.min_cases} or more cases with both classes: "
            "nothing to check"
        )
    elif failed:
        named = ", ".join(f"{row.value} {row.candidate:.3f}" for row in failed)
        detail = (
            f"{label} below {criterion.min:.2f} in {len(failed)} of {len(checked)} "
            f"{criterion.by} groups: {named}"
        )
    else:
        detail = (
            f"{label} >= {criterion.min:.2f} in all {len(checked)} {criterion.by} groups with "
            f"{criterion.min_cases}+ cases (lowest {lowest.candidate:.3f}, {lowest.value})"
        )
    result = _result(criterion, not failed, numbers, detail)
    return result.model_copy(update={"groups": rows})


def _row(group: GroupMetrics, metric: Metric, evaluated: bool, passed: bool, note: str) -> GroupRow:
    return GroupRow(
        field=group.field,
        value=group.value,
        cases=group.cases,
        positives=group.positives,
        candidate=group.candidate.of(metric),
        champion=group.champion.of(metric),
        evaluated=evaluated,
        passed=passed if evaluated else None,
        note=note,
    )


def _calibration(criterion: CalibrationCriterion, metrics: BinaryMetrics) -> CriterionResult:
    ece = metrics.ece if metrics.ece is not None else float("inf")
    passed = ece <= criterion.max
    numbers: dict[str, Number] = {"ece": metrics.ece, "max": criterion.max, "bins": 10}
    detail = f"ECE (10 bins) {ece:.3f} {'<=' if passed else '>'} {criterion.max:.2f}"
    return _result(criterion, passed, numbers, detail)


def _regressions(criterion: RegressionsCriterion, groups: list[GroupMetrics]) -> CriterionResult:
    rows = []
    for group in groups:
        candidate, champion = (
            group.candidate.of(criterion.metric),
            group.champion.of(criterion.metric),
        )
        class_cases = {
            "sensitivity": group.positives,
            "specificity": group.cases - group.positives,
        }.get(criterion.metric)
        if group.cases < REGRESSION_MIN_CASES or not group.both_classes:
            few = group.cases < REGRESSION_MIN_CASES
            why = f"{group.cases} cases, fewer than {REGRESSION_MIN_CASES}" if few else "one class"
            rows.append(_row(group, criterion.metric, False, False, why))
        elif class_cases is not None and class_cases < REGRESSION_MIN_CLASS_CASES:
            unit = "positive" if criterion.metric == "sensitivity" else "negative"
            why = f"{class_cases} {unit} cases, fewer than {REGRESSION_MIN_CLASS_CASES}"
            rows.append(_row(group, criterion.metric, False, False, why))
        elif candidate is not None and champion is not None:
            regressed = candidate < champion - criterion.tolerance
            rows.append(_row(group, criterion.metric, True, not regressed, ""))
    regressed_rows = [row for row in rows if row.passed is False]
    count = len(regressed_rows)
    passed = count <= criterion.max_count
    label = _LABELS[criterion.metric]
    numbers: dict[str, Number] = {
        "metric": criterion.metric,
        "tolerance": criterion.tolerance,
        "max_count": criterion.max_count,
        "count": count,
        "groups_compared": sum(row.evaluated for row in rows),
        "min_cases": REGRESSION_MIN_CASES,
    }
    named = "; ".join(
        f"{row.field}={row.value}: {row.candidate:.3f} vs {row.champion:.3f}"
        for row in regressed_rows
    )
    detail = (
        f"{count} of {numbers['groups_compared']} groups more than {criterion.tolerance:g} "
        f"{label} below the champion{f' ({named})' if named else ''}; at most "
        f"{criterion.max_count} allowed"
    )
    result = _result(criterion, passed, numbers, detail)
    return result.model_copy(update={"groups": rows})


def _point_metrics(
    positive: NDArray[np.bool_], model: ModelScores, rows: NDArray[np.bool_]
) -> PointMetrics:
    truth, scores = positive[rows], model.scores[rows]
    predicted = scores >= model.threshold
    positives = int(np.count_nonzero(truth))
    negatives = truth.size - positives
    return PointMetrics(
        auroc=float(roc_auc_score(truth, scores)) if positives and negatives else None,
        sensitivity=np.count_nonzero(truth & predicted) / positives if positives else None,
        specificity=np.count_nonzero(~truth & ~predicted) / negatives if negatives else None,
    )


def group_metrics(
    cases: GateCases, candidate: ModelScores, champion: ModelScores
) -> list[GroupMetrics]:
    """Both models' point estimates in every value of every group field (sorted by field as
    given, then value)."""
    table = []
    for field, values in cases.groups.items():
        as_text = np.asarray(values).astype(str)
        for value in np.unique(as_text):
            rows = as_text == value
            table.append(
                GroupMetrics(
                    field=field,
                    value=str(value),
                    cases=int(np.count_nonzero(rows)),
                    positives=int(np.count_nonzero(cases.positive[rows])),
                    candidate=_point_metrics(cases.positive, candidate, rows),
                    champion=_point_metrics(cases.positive, champion, rows),
                )
            )
    return table


def scope_violations(
    plan: Plan, spec: ModelSpec, intended_use_id: str | None, *, threshold: ThresholdFacts
) -> list[str]:
    """Each way the candidate differs from what the plan fixes, or sets its threshold other
    than by the plan's threshold policy (:func:`pccp.threshold.threshold_violations`), in
    words (empty: in scope).

    Input channels are not compared: a ``ModelSpec`` model always reads one channel, which is
    what every plan fixes (``input_channels: 1``).
    """
    fixed = plan.description.fixed
    found = []
    if spec.architecture != fixed.architecture:
        found.append(
            f"architecture {spec.architecture!r} is not the plan's fixed {fixed.architecture!r}"
        )
    if spec.input_size != fixed.input_size:
        found.append(
            f"input size {spec.input_size} px is not the plan's fixed {fixed.input_size} px"
        )
    if tuple(spec.findings) != fixed.findings:
        found.append(
            f"findings ({', '.join(spec.findings)}) are not the plan's fixed "
            f"({', '.join(fixed.findings)}), names and order"
        )
    if intended_use_id is None:
        found.append(f"no intended-use id recorded; the plan fixes {fixed.intended_use_id!r}")
    elif intended_use_id != fixed.intended_use_id:
        found.append(
            f"intended use {intended_use_id!r} is not the plan's fixed {fixed.intended_use_id!r}"
        )
    found.extend(threshold_violations(plan.protocol.threshold_policy, threshold))
    return found


def _summary(
    model: ModelScores, metrics: BinaryMetrics, positive: NDArray[np.bool_]
) -> ModelSummary:
    fpr, tpr, _ = roc_curve(positive, model.scores)
    if fpr.size > ROC_MAX_POINTS:
        keep = np.unique(np.linspace(0, fpr.size - 1, ROC_MAX_POINTS).round().astype(np.int64))
        fpr, tpr = fpr[keep], tpr[keep]
    if metrics.auroc is None or metrics.sensitivity is None or metrics.specificity is None:
        raise GateError(f"model {model.version}: {'; '.join(metrics.unavailable.values())}")
    return ModelSummary(
        version=model.version,
        threshold=model.threshold,
        auroc=metrics.auroc.estimate,
        sensitivity=metrics.sensitivity.estimate,
        specificity=metrics.specificity.estimate,
        ece=metrics.ece,
        roc_false_positive_rate=[float(x) for x in fpr],
        roc_true_positive_rate=[float(y) for y in tpr],
        reliability=[
            ReliabilityRow(
                lower=b.lower,
                upper=b.upper,
                count=b.count,
                mean_score=b.mean_score,
                observed_rate=b.observed_rate,
            )
            for b in metrics.reliability
        ],
    )


def build_report(
    plan: Plan,
    cases: GateCases,
    candidate: ModelScores,
    champion: ModelScores,
    *,
    model_name: str,
    locked_test_sha256: str,
    scope_violations: list[str],
    threshold: ThresholdProvenance | None = None,
    content: Mapping[str, ContentFacts] | None = None,
    evaluated_at: datetime | None = None,
) -> GateReport:
    """Evaluate every criterion and assemble the evidence, with the threshold's provenance and
    every regression beyond the noise (:func:`pccp.regressions.flag_regressions`).
    ``content`` holds the facts of each ``content_coverage`` criterion, by criterion id.

    The outcome is ``out_of_scope`` when there is any scope violation (the criteria are still
    evaluated and shown), otherwise ``passed`` exactly when every criterion passed.
    """
    evaluation = _evaluate(cases, candidate, champion, content)
    criteria = [
        _decide(criterion, evaluation) for criterion in plan.protocol.performance_evaluation
    ]
    if scope_violations:
        outcome = GateOutcome.OUT_OF_SCOPE
    else:
        outcome = GateOutcome.PASSED if all(c.passed for c in criteria) else GateOutcome.FAILED
    return GateReport(
        plan_id=plan.plan_id,
        plan_version=plan.plan_version,
        plan_fingerprint=plan.fingerprint(),
        model_name=model_name,
        candidate_version=candidate.version,
        champion_version=champion.version,
        locked_test_sha256=locked_test_sha256,
        cases=int(cases.positive.size),
        positives=int(np.count_nonzero(cases.positive)),
        evaluated_at=evaluated_at or datetime.now(UTC),
        outcome=outcome,
        scope_violations=list(scope_violations),
        criteria=criteria,
        candidate=_summary(candidate, evaluation.candidate_metrics, cases.positive),
        champion=_summary(champion, evaluation.champion_metrics, cases.positive),
        groups=evaluation.groups,
        threshold=threshold,
        regressions=flag_regressions(
            cases.positive,
            dict(cases.groups),
            (candidate.scores, candidate.threshold),
            (champion.scores, champion.threshold),
        ),
    )
