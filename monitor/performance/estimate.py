"""Label-free performance estimates: confidence-based performance estimation (CBPE).

Labels arrive weeks after inference. Until then sensitivity, specificity and AUROC of a window are
*estimated* from its scores, as NannyML's CBPE does: a map ``p = P(y = 1 | score)`` is fitted on a
labelled reference (isotonic regression, or Platt scaling on ``logit(score)``) and each window
case counts as ``p_i`` of a positive and ``1 - p_i`` of a negative. Predicting ``score >= t``::

    E[TP] = sum p_i over predicted positives    E[FP] = sum (1 - p_i) over predicted positives
    E[FN] = sum p_i over predicted negatives    E[TN] = sum (1 - p_i) over predicted negatives
    sensitivity = E[TP] / (E[TP] + E[FN])       specificity = E[TN] / (E[TN] + E[FP])
    prevalence = mean p_i                       PPV = E[TP] / (E[TP] + E[FP])
    AUROC = sum_{i != j} p_i (1 - p_j) ([s_i > s_j] + [s_i = s_j] / 2) / sum_{i != j} p_i (1 - p_j)

each a ratio of expected counts; the AUROC takes O(n log n) (:func:`expected_auroc`).

The assumption: **P(y | score) is the reference's.** Covariate shift (another case mix, more high
scores, a prevalence that moves *through* the scores) leaves the estimate valid; concept shift (a
scanner on which a score means something else) does not, and without labels cannot be seen. So
each estimate carries ``trusted`` and the ``reasons`` against it: scores where the reference had
few cases and, once some of the window's labels are in, a test of those cases against the map
(:func:`check_labelled`: observed vs expected positives, and Cox's calibration slope). With too
few labels the estimate stays ``trusted`` (nothing speaks against it) and ``caveats`` says
calibration is unverified. The test assumes labels arrive independently of the truth given the
score: if positives are confirmed sooner than negatives, the early labelled subset is biased.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

from monitor.performance._calibration import isotonic_knots
from monitor.performance._estimate_checks import CalibrationCheck as CalibrationCheck
from monitor.performance._estimate_checks import SupportCheck as SupportCheck
from monitor.performance._estimate_checks import check_calibration, check_support, logit, sigmoid
from monitor.performance.config import CalibrationMethod as CalibrationMethod
from monitor.performance.config import EstimateConfig as EstimateConfig
from monitor.performance.metrics import InvalidInputError, PerformanceError, validated

Floats = NDArray[np.float64]


class InsufficientReferenceError(PerformanceError):
    """The labelled reference is too small, or has too few cases of a class, to calibrate on."""


_DEFAULT_CONFIG = EstimateConfig()


@dataclass(frozen=True, slots=True, eq=False)
class CalibrationMap:
    """``P(y = 1 | score)`` fitted on the reference, kept as plain numbers (no sklearn object).

    Isotonic: linear interpolation between the knots, clipped at the ends (what
    ``IsotonicRegression(out_of_bounds="clip").predict`` computes). Platt:
    ``sigmoid(platt_slope * logit(score) + platt_intercept)``.
    """

    method: CalibrationMethod
    score_knots: Floats
    probability_knots: Floats
    platt_slope: float
    platt_intercept: float
    reference_scores: Floats
    """Sorted: the support check counts them."""
    config: EstimateConfig

    @property
    def n_reference(self) -> int:
        return int(self.reference_scores.size)

    def apply(self, scores: ArrayLike) -> Floats:
        """The calibrated probability of every score (InvalidInputError outside [0, 1])."""
        values = _window_scores(scores)
        if self.method == "isotonic":
            return np.interp(values, self.score_knots, self.probability_knots)
        return sigmoid(self.platt_slope * logit(values) + self.platt_intercept)


@dataclass(frozen=True, slots=True)
class ExpectedConfusion:
    """Expected (fractional) confusion counts under the calibration map."""

    tp: float
    fp: float
    fn: float
    tn: float


@dataclass(frozen=True, slots=True)
class PerformanceEstimate:
    """The estimated performance of one window, and whether it can be believed."""

    n_window: int
    threshold: float
    sensitivity: float | None
    specificity: float | None
    prevalence: float
    ppv: float | None
    npv: float | None
    auroc: float | None
    confusion: ExpectedConfusion
    trusted: bool
    reasons: tuple[str, ...]
    """Why the estimate is not trusted (empty when ``trusted``)."""
    caveats: tuple[str, ...]
    """What could not be checked, e.g. calibration before enough labels arrive."""
    support: SupportCheck
    calibration_check: CalibrationCheck | None
    method: CalibrationMethod
    n_reference: int
    config_fingerprint: str


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric: the label-free estimate next to the value realised once labels came."""

    metric: str
    estimated: float | None
    realised: float | None
    difference: float | None
    """realised - estimated; None when either is missing."""


@dataclass(frozen=True, slots=True)
class EstimateComparison:
    """A window's estimate next to its realised metrics."""

    sensitivity: MetricComparison
    specificity: MetricComparison
    auroc: MetricComparison
    trusted: bool
    reasons: tuple[str, ...]
    config_fingerprint: str


def fit_calibration(
    reference_labels: ArrayLike,
    reference_scores: ArrayLike,
    config: EstimateConfig = _DEFAULT_CONFIG,
) -> CalibrationMap:
    """Fit ``P(y = 1 | score)`` on a labelled reference with ``config.method``.

    Raises InvalidInputError (a ValueError) for labels not 0/1, scores outside [0, 1] or lengths
    that differ; InsufficientReferenceError below ``min_reference`` cases or
    ``min_reference_per_class`` positives or negatives (a one-class reference among them).
    """
    # validated() also checks a threshold; none is involved in fitting, so pass a valid one.
    positive, scores = validated(reference_labels, reference_scores, threshold=0.5)
    _require_reference(scores.size, int(positive.sum()), config)
    knots_x, knots_y, slope, intercept = np.array([0.0, 1.0]), np.array([0.0, 1.0]), 1.0, 0.0
    if config.method == "isotonic":
        # IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)'s knots, bit for bit
        knots_x, knots_y = isotonic_knots(scores, positive.astype(np.float64))
    else:
        # C = inf: plain maximum likelihood, as Platt scaling is defined.
        platt = LogisticRegression(C=np.inf).fit(logit(scores).reshape(-1, 1), positive)
        slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    return CalibrationMap(
        method=config.method,
        score_knots=knots_x,
        probability_knots=knots_y,
        platt_slope=slope,
        platt_intercept=intercept,
        reference_scores=np.sort(scores),
        config=config,
    )


def estimate_performance(
    scores: ArrayLike,
    threshold: float,
    calibration: CalibrationMap,
    config: EstimateConfig | None = None,
    labelled_scores: ArrayLike | None = None,
    labels: ArrayLike | None = None,
) -> PerformanceEstimate:
    """CBPE on one window (module docstring); predicted positive means ``score >= threshold``.

    ``config`` defaults to the map's own; another may change the trust limits, not the method.
    ``labelled_scores`` and ``labels`` are the window's cases whose labels have arrived; from
    ``min_labelled`` of them on, calibration is checked and drift makes the estimate untrusted.
    Raises InvalidInputError for an empty window, a threshold outside [0, 1], malformed scores
    or labels, or a config whose method is not the map's.
    """
    config = _matching(config, calibration)
    values = _window_scores(scores)
    if values.size == 0 or not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"need a non-empty window and a threshold in [0, 1]: {threshold}")
    probabilities = calibration.apply(values)
    counts = _expected_confusion(values >= threshold, probabilities)
    support = check_support(
        values, calibration.reference_scores, config.support_radius_logit, config.min_support
    )
    check = _labelled(labelled_scores, labels, calibration, config)
    drift = (check.explanation,) if check is not None and check.drift else ()
    reasons = _support_reasons(support, config) + drift
    return PerformanceEstimate(
        n_window=int(values.size),
        threshold=float(threshold),
        sensitivity=_ratio(counts.tp, counts.tp + counts.fn),
        specificity=_ratio(counts.tn, counts.tn + counts.fp),
        prevalence=float(probabilities.mean()),
        ppv=_ratio(counts.tp, counts.tp + counts.fp),
        npv=_ratio(counts.tn, counts.tn + counts.fn),
        auroc=expected_auroc(values, probabilities),
        confusion=counts,
        trusted=not reasons,
        reasons=reasons,
        caveats=() if check is not None else (_unverified(labels, config),),
        support=support,
        calibration_check=check,
        method=calibration.method,
        n_reference=calibration.n_reference,
        config_fingerprint=config.fingerprint(),
    )


def check_labelled(
    labelled_scores: ArrayLike,
    labels: ArrayLike,
    calibration: CalibrationMap,
    config: EstimateConfig | None = None,
) -> CalibrationCheck:
    """Test labelled cases of a window against the map (``_estimate_checks.check_calibration``).

    Probabilities are held ``probability_floor`` from 0 and 1 first. Raises InvalidInputError
    for no cases or malformed labels or scores.
    """
    config = _matching(config, calibration)
    positive, scores = validated(labels, labelled_scores, threshold=0.5)
    if scores.size == 0:
        raise InvalidInputError("no labelled cases to check calibration on")
    floor = config.probability_floor
    probabilities = np.clip(calibration.apply(scores), floor, 1.0 - floor)
    return check_calibration(
        positive, probabilities, config.calibration_alpha, calibration.n_reference
    )


def expected_auroc(scores: Floats, probabilities: Floats) -> float | None:
    """The AUROC expected when case i is positive with probability ``probabilities[i]``.

    Over pairs i != j (module docstring), in O(n log n): for each distinct score, its positive
    mass times the negative mass strictly below it, plus half its within-score pairs. None when
    no positive-negative pair is expected.
    """
    negatives = 1.0 - probabilities
    distinct, group = np.unique(scores, return_inverse=True)
    positive_mass = np.bincount(group, weights=probabilities, minlength=distinct.size)
    negative_mass = np.bincount(group, weights=negatives, minlength=distinct.size)
    negative_below = np.cumsum(negative_mass) - negative_mass
    self_pairs = probabilities * negatives
    tied_pairs = float((positive_mass * negative_mass).sum() - self_pairs.sum())
    ordered_pairs = float((positive_mass * negative_below).sum()) + 0.5 * tied_pairs
    return _ratio(ordered_pairs, float(probabilities.sum() * negatives.sum() - self_pairs.sum()))


def compare(
    estimate: PerformanceEstimate,
    realised_sensitivity: float | None,
    realised_specificity: float | None,
    realised_auroc: float | None,
) -> EstimateComparison:
    """The estimate next to the metrics realised once the window's labels came.

    With :func:`monitor.performance.metrics.binary_metrics`, pass each metric's ``.estimate``
    (None where it is unavailable).
    """
    return EstimateComparison(
        sensitivity=_compare("sensitivity", estimate.sensitivity, realised_sensitivity),
        specificity=_compare("specificity", estimate.specificity, realised_specificity),
        auroc=_compare("auroc", estimate.auroc, realised_auroc),
        trusted=estimate.trusted,
        reasons=estimate.reasons,
        config_fingerprint=estimate.config_fingerprint,
    )


def _compare(metric: str, estimated: float | None, realised: float | None) -> MetricComparison:
    difference = None if estimated is None or realised is None else realised - estimated
    return MetricComparison(metric, estimated, realised, difference)


def _matching(config: EstimateConfig | None, calibration: CalibrationMap) -> EstimateConfig:
    config = config or calibration.config
    if config.method != calibration.method:
        raise InvalidInputError(
            f"config method {config.method!r} but the map was fitted with {calibration.method!r}"
        )
    return config


def _labelled(
    labelled_scores: ArrayLike | None,
    labels: ArrayLike | None,
    calibration: CalibrationMap,
    config: EstimateConfig,
) -> CalibrationCheck | None:
    if (labelled_scores is None) != (labels is None):
        raise InvalidInputError("labelled_scores and labels come together")
    if labelled_scores is None or labels is None or np.size(labels) < config.min_labelled:
        return None
    return check_labelled(labelled_scores, labels, calibration, config)


def _expected_confusion(predicted: NDArray[np.bool_], probabilities: Floats) -> ExpectedConfusion:
    positives, negatives = probabilities, 1.0 - probabilities
    return ExpectedConfusion(
        tp=float(positives[predicted].sum()),
        fp=float(negatives[predicted].sum()),
        fn=float(positives[~predicted].sum()),
        tn=float(negatives[~predicted].sum()),
    )


def _support_reasons(support: SupportCheck, config: EstimateConfig) -> tuple[str, ...]:
    reasons: list[str] = []
    if support.out_of_range_share > config.max_out_of_range_share:
        reasons.append(
            f"{support.out_of_range_share:.1%} of scores lie outside the reference score range "
            f"(limit {config.max_out_of_range_share:.1%})"
        )
    if support.unsupported_share > config.max_unsupported_share:
        reasons.append(
            f"{support.unsupported_share:.1%} of scores have fewer than {config.min_support} "
            f"reference cases within {config.support_radius_logit} logit "
            f"(limit {config.max_unsupported_share:.1%})"
        )
    return tuple(reasons)


def _unverified(labels: ArrayLike | None, config: EstimateConfig) -> str:
    return (
        f"calibration not verified: {0 if labels is None else np.size(labels)} labelled cases "
        f"in the window, {config.min_labelled} needed; P(y | score) is assumed to be the "
        "reference's"
    )


def _require_reference(n_reference: int, n_positive: int, config: EstimateConfig) -> None:
    n_negative, minimum = n_reference - n_positive, config.min_reference_per_class
    if n_reference < config.min_reference or min(n_positive, n_negative) < minimum:
        raise InsufficientReferenceError(
            f"reference has {n_reference} cases ({n_positive} positive, {n_negative} negative); "
            f"calibration needs {config.min_reference}, at least {minimum} of each class"
        )


def _window_scores(scores: ArrayLike) -> Floats:
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all() or (values < 0.0).any() or (values > 1.0).any():
        raise InvalidInputError("scores must be probabilities in [0, 1]")
    return values


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None
