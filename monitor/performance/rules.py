"""Performance alert rules: metrics in, one typed verdict per rule out; no I/O.

:func:`evaluate_rules` judges one labelled window's :class:`BinaryMetrics` (and the reference's):

* ``sensitivity_floor`` - breach when the upper bound of the sensitivity's interval is below
  the floor: only when the window makes us confident that sensitivity is too low;
* ``auroc_drop`` - breach when the one-sided lower bound of the drop ``reference - window``,
  with the two independent DeLong variances added, is beyond the margin (with an unlimited
  reference: the window's upper bound below the reference AUROC minus the margin);
* ``calibration_limit`` - breach when the ECE, less what sampling noise alone could add to it,
  is above the limit.

Each decides at the one-sided level ``(1 - confidence_level) / 2`` (2.5% at 95%) and has a
minimum count, below which the result is *not evaluated* (``breached`` None) with the reason.
:func:`update_cusum` runs the fourth rule, a Bernoulli CUSUM on the per-case error indicator in
label arrival order (maths in ``_cusum``), whose :class:`CusumState` is JSON for the runtime.

**One alarm model.** Rules do not alarm. ``RuleResult.breached`` is the ``is_drift`` of the
drift alarm machinery: per (site, model, version, finding, rule) the runtime keeps one
:class:`monitor.drift.alarms.AlarmState` and calls :func:`observe_rule`, i.e.
``state.observe(result.breached, window_start, AlarmConfig)`` for an evaluated result: the same
episodes, hysteresis and cooldown as drift alerts. A result not evaluated is no check at all:
it neither opens nor closes an episode. Details: docs/performance.md, "Performance alert rules".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from monitor.drift.alarms import AlarmConfig, AlarmState, Transition
from monitor.drift.base import DetectorConfig
from monitor.performance._cusum import (
    CusumDesign,
    ErrorRateCusum,
    continue_cusum,
)
from monitor.performance._cusum import CusumState as CusumState
from monitor.performance._cusum import case_errors as case_errors
from monitor.performance._cusum import start_cusum as start_cusum
from monitor.performance._grid_cusum import Advance
from monitor.performance.config import AurocDrop as AurocDrop
from monitor.performance.config import CalibrationLimit as CalibrationLimit
from monitor.performance.config import RulesConfig as RulesConfig
from monitor.performance.config import SensitivityFloor as SensitivityFloor
from monitor.performance.metrics import BinaryMetrics, Interval, PerformanceError

RuleName = Literal[
    "sensitivity_floor", "auroc_drop", "calibration_limit", "error_rate_cusum", "auroc_cusum"
]
BreachWhen = Literal["below", "above", "at_or_above"]


class CusumConfigError(PerformanceError, ValueError):
    """A CUSUM state continued with another configuration than the one it was started with."""


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's verdict on one check; ``breached`` is the alarm layer's ``is_drift``."""

    rule: RuleName
    breached: bool | None
    """True: breach; False: no breach; None: not evaluated (``explanation`` says why)."""
    statistic: float | None
    """What is compared with ``threshold``; None when not evaluated."""
    threshold: float | None
    """None only for a CUSUM whose decision interval cannot be set yet (no usable reference)."""
    breach_when: BreachWhen
    """A breach is ``statistic`` below / above / at or above ``threshold``."""
    explanation: str
    """One sentence for a site manager, with the numbers."""
    n_cases: int
    """Labelled cases the verdict rests on (the window's; the batch's for the CUSUM)."""
    numbers: dict[str, float]
    """The numbers behind the verdict, by name (empty when not evaluated)."""
    config_fingerprint: str
    """Fingerprint of the rule's own config (its sub-config of :class:`RulesConfig`)."""
    subgroup: tuple[str, str] | None = None
    """(metadata field, value) of a verdict on that value's cases alone (the AUROC CUSUM's
    ``by_fields``); None for the stream's cases."""


def observe_rule(
    state: AlarmState, result: RuleResult, window_start: float, config: AlarmConfig
) -> Transition | None:
    """Feed one result to the drift alarm machinery; None (state untouched) if not evaluated."""
    if result.breached is None:
        return None
    return state.observe(result.breached, window_start, config)


def evaluate_rules(
    window: BinaryMetrics,
    reference: BinaryMetrics | None,
    config: RulesConfig,
    *,
    finding: str | None = None,
) -> list[RuleResult]:
    """The window rules that are switched on, in config order (the CUSUM runs apart).

    ``finding`` only names the finding in the explanations ("sensitivity for lesion: ...").
    """
    results = []
    if config.sensitivity_floor is not None:
        results.append(_sensitivity_floor(window, config.sensitivity_floor, finding))
    if config.auroc_drop is not None:
        results.append(_auroc_drop(window, reference, config.auroc_drop, finding))
    if config.calibration_limit is not None:
        results.append(_calibration_limit(window, config.calibration_limit, finding))
    return results


def subject_of(metric: str, finding: str | None) -> str:
    """ "AUROC for lesion", or the metric alone without a finding (explanations start so)."""
    return f"{metric} for {finding}" if finding else metric


def _interval_text(interval: Interval, level: float) -> str:
    return f"{interval.estimate:.2f} ({level:.0%} CI {interval.lower:.2f}-{interval.upper:.2f})"


def _one_sided_z(confidence_level: float) -> float:
    """z of the one-sided bound that a two-sided interval at ``confidence_level`` has."""
    return float(norm.ppf(0.5 + confidence_level / 2.0))


def not_evaluated(
    rule: RuleName,
    subject: str,
    reason: str,
    threshold: float | None,
    breach_when: BreachWhen,
    n_cases: int,
    config: DetectorConfig,
) -> RuleResult:
    """The result of a rule that could not judge: ``explanation`` is the subject and why."""
    return RuleResult(
        rule=rule,
        breached=None,
        statistic=None,
        threshold=threshold,
        breach_when=breach_when,
        explanation=f"{subject} not evaluated: {reason}",
        n_cases=n_cases,
        numbers={},
        config_fingerprint=config.fingerprint(),
    )


def _sensitivity_or_reason(window: BinaryMetrics, rule: SensitivityFloor) -> Interval | str:
    positives = window.counts.positives
    if positives < rule.min_positives:
        return f"{positives} labelled positive cases, at least {rule.min_positives} needed"
    return window.sensitivity or window.unavailable.get("sensitivity", "no sensitivity")


def _sensitivity_floor(
    window: BinaryMetrics, rule: SensitivityFloor, finding: str | None
) -> RuleResult:
    subject, counts = subject_of("sensitivity", finding), window.counts
    interval = _sensitivity_or_reason(window, rule)
    if isinstance(interval, str):
        return not_evaluated(
            "sensitivity_floor", subject, interval, rule.floor, "below", counts.n, rule
        )
    breached = interval.upper < rule.floor
    return RuleResult(
        rule="sensitivity_floor",
        breached=breached,
        statistic=interval.upper,
        threshold=rule.floor,
        breach_when="below",
        explanation=(
            f"{subject}: {_interval_text(interval, window.confidence_level)}, upper bound "
            f"{'below' if breached else 'not below'} the floor {rule.floor:.2f} on "
            f"{counts.n} labelled cases ({counts.positives} positive)"
        ),
        n_cases=counts.n,
        numbers={
            "sensitivity": interval.estimate,
            "lower": interval.lower,
            "upper": interval.upper,
            "positives": float(counts.positives),
        },
        config_fingerprint=rule.fingerprint(),
    )


def _auroc_shortfall(metrics: BinaryMetrics | None, rule: AurocDrop, which: str) -> str | None:
    """Why ``metrics`` (the window or the reference) cannot take part in the AUROC rule."""
    if metrics is None:
        return f"no {which} metrics to compare with"
    counts = metrics.counts
    if counts.positives < rule.min_positives or counts.negatives < rule.min_negatives:
        return (
            f"{counts.positives} positive and {counts.negatives} negative labelled cases in the "
            f"{which}, at least {rule.min_positives} and {rule.min_negatives} needed"
        )
    if metrics.auroc is None:
        return f"{which}: " + metrics.unavailable.get("auroc", "no AUROC")
    return None


def _standard_error(metrics: BinaryMetrics, interval: Interval) -> float:
    """The AUROC's standard error from its interval: a DeLong interval is ``estimate +- z * se``
    clipped to [0, 1], so its wider side is ``z * se`` (both sides clip only when se is 0); for a
    bootstrap interval the wider side is a cautious approximation."""
    half_width = max(interval.estimate - interval.lower, interval.upper - interval.estimate)
    return half_width / _one_sided_z(metrics.confidence_level)


def _auroc_drop(
    window: BinaryMetrics, reference: BinaryMetrics | None, rule: AurocDrop, finding: str | None
) -> RuleResult:
    subject, n = subject_of("AUROC", finding), window.counts.n
    reason = _auroc_shortfall(window, rule, "window") or _auroc_shortfall(
        reference, rule, "reference"
    )
    if reason is not None or reference is None or window.auroc is None or reference.auroc is None:
        return not_evaluated("auroc_drop", subject, str(reason), rule.margin, "above", n, rule)
    drop = reference.auroc.estimate - window.auroc.estimate
    se = float(
        np.hypot(_standard_error(window, window.auroc), _standard_error(reference, reference.auroc))
    )
    drop_lower = drop - _one_sided_z(window.confidence_level) * se
    breached = drop_lower > rule.margin
    return RuleResult(
        rule="auroc_drop",
        breached=breached,
        statistic=drop_lower,
        threshold=rule.margin,
        breach_when="above",
        explanation=(
            f"{subject}: {_interval_text(window.auroc, window.confidence_level)} vs "
            f"{_interval_text(reference.auroc, reference.confidence_level)} in the reference, "
            f"a drop of {drop:.2f}, at least {drop_lower:.2f} at "
            f"{0.5 + window.confidence_level / 2.0:.1%} confidence, "
            f"{'beyond' if breached else 'not beyond'} the margin {rule.margin:.2f} on {n} "
            "labelled cases"
        ),
        n_cases=n,
        numbers={
            "auroc": window.auroc.estimate,
            "reference_auroc": reference.auroc.estimate,
            "drop": drop,
            "drop_lower_bound": drop_lower,
            "standard_error": se,
        },
        config_fingerprint=rule.fingerprint(),
    )


def calibration_noise(window: BinaryMetrics, draws: int, seed: int, quantile: float) -> float:
    """The ``quantile`` of the ECE that a *calibrated* model would show on the window's bins.

    Each non-empty bin's positives are drawn ``Binomial(count, mean score)`` ``draws`` times
    (seeded: the same window always gets the same allowance). The observed ECE is at most the
    true one plus this noise term (triangle inequality, bin by bin), so ``ECE - noise`` is a
    lower bound on the true ECE at that confidence. 0 for a window without reliability bins.
    """
    bins = [b for b in window.reliability if b.count and b.mean_score is not None]
    if not bins:
        return 0.0
    counts = np.array([b.count for b in bins])
    means = np.array([b.mean_score for b in bins], dtype=np.float64)
    drawn = np.random.default_rng(seed).binomial(counts, means, size=(draws, counts.size))
    noise = np.abs(drawn / counts - means) @ (counts / counts.sum())
    return float(np.quantile(noise, quantile))


def _calibration_limit(
    window: BinaryMetrics, rule: CalibrationLimit, finding: str | None
) -> RuleResult:
    subject, n = subject_of("calibration error (ECE)", finding), window.counts.n
    reason = f"{n} labelled cases, at least {rule.min_cases} needed"
    if n >= rule.min_cases:
        reason = window.unavailable.get("ece", "no ECE")
    if n < rule.min_cases or window.ece is None:
        return not_evaluated("calibration_limit", subject, reason, rule.max_ece, "above", n, rule)
    noise = calibration_noise(
        window, rule.null_draws, rule.seed, 0.5 + window.confidence_level / 2.0
    )
    lower = window.ece - noise
    breached = lower > rule.max_ece
    return RuleResult(
        rule="calibration_limit",
        breached=breached,
        statistic=lower,
        threshold=rule.max_ece,
        breach_when="above",
        explanation=(
            f"{subject}: {window.ece:.3f}, at least {lower:.3f} after allowing {noise:.3f} "
            f"for sampling noise, {'above' if breached else 'not above'} the limit "
            f"{rule.max_ece:.3f} on {n} labelled cases"
        ),
        n_cases=n,
        numbers={"ece": window.ece, "noise_allowance": noise, "ece_lower_bound": lower},
        config_fingerprint=rule.fingerprint(),
    )


def update_cusum(
    state: CusumState,
    errors: Sequence[bool] | NDArray[np.bool_],
    config: ErrorRateCusum,
    *,
    finding: str | None = None,
) -> tuple[CusumState, RuleResult]:
    """Continue the CUSUM over newly labelled cases, given in label arrival order.

    ``errors`` holds one flag per case (:func:`case_errors`). The result is breached when the
    statistic was at or above h at any point of the batch (or still is, for an empty batch);
    its ``statistic`` is that peak. Raises CusumConfigError for a state started with another
    config: its h belongs to that config, so start a new one with :func:`start_cusum`.
    """
    if state.config_fingerprint != config.fingerprint():
        raise CusumConfigError("CUSUM state was started with another configuration")
    flags: list[bool] = np.asarray(errors, dtype=np.bool_).ravel().tolist()
    subject, design = subject_of("error-rate CUSUM", finding), state.design
    if design is None:
        reason = str(state.not_ready)
        result = not_evaluated(
            "error_rate_cusum", subject, reason, None, "at_or_above", len(flags), config
        )
        return state, result
    new_state, moved = continue_cusum(state, design, flags)
    batch = (len(flags), new_state.errors - state.errors)
    return new_state, _cusum_result(new_state, design, moved, batch, config, subject)


def _cusum_result(
    state: CusumState,
    design: CusumDesign,
    moved: Advance,
    batch: tuple[int, int],
    config: ErrorRateCusum,
    subject: str,
) -> RuleResult:
    """``batch``: the batch's cases and errors."""
    peak, (n_cases, n_errors) = moved.peak / design.scale, batch
    breached = moved.peak >= design.limit
    rate = f"{n_errors / n_cases:.1%}" if n_cases else "no new cases"
    numbers = {"peak": peak, "statistic": state.statistic, "p0": design.p0, "p1": design.p1}
    if moved.crossings:  # the case that first took the statistic to h in this batch
        numbers["first_signal_at"] = float(state.cases - n_cases + moved.crossings[0])
    return RuleResult(
        rule="error_rate_cusum",
        breached=breached,
        statistic=peak,
        threshold=design.decision_interval,
        breach_when="at_or_above",
        explanation=(
            f"{subject}: peak {peak:.2f} (now {state.statistic:.2f}), "
            f"{'at or above' if breached else 'below'} the decision interval "
            f"{design.decision_interval:.2f} after {n_errors} errors in {n_cases} new labelled "
            f"cases ({rate}); in-control error rate {design.p0:.1%} from the reference, "
            f"tuned to detect {design.p1:.1%}"
        ),
        n_cases=n_cases,
        numbers=numbers,
        config_fingerprint=config.fingerprint(),
    )
