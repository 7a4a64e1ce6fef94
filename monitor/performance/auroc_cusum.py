"""The ``auroc_cusum`` rule: a CUSUM on placement values that reads each labelled case once and
signals an AUROC drop, with its in-control average run length computed exactly.

```python
state = start_auroc_cusum(config)                       # collects its reference first
state, result = update_auroc_cusum(state, labels, scores, config, finding="lesion")
state, results = update_auroc_cusums(                   # with config.by_fields: per value too
    state, labels, scores, config, groups={"ManufacturerModelName": models_of_each_case}
)
```

Cases come in label arrival order. The first ``reference_cases`` (more while a class is below
its minimum) form the frozen reference, kept in the state as sorted scores per class; then
the design is made (``_auroc_cusum``: maths and why) and every later case adds its step, to
the pooled CUSUM and to the CUSUM of its value of each of ``config.by_fields``
(``auroc_cusum_values``). The state is JSON (pydantic) for the runtime. Details:
docs/performance.md, "AUROC CUSUM".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict

from monitor.performance._auroc_cusum import (
    AurocCusumDesign,
    case_steps,
    design_auroc_cusum,
    placements,
)
from monitor.performance._grid_cusum import Advance, advance
from monitor.performance.auroc_cusum_values import Groups, ValueCusum, value_steps
from monitor.performance.config import AurocCusum
from monitor.performance.metrics import validated
from monitor.performance.rules import CusumConfigError, RuleResult, not_evaluated, subject_of

COLLECT_MULTIPLE = 4
"""A reference that cannot give a design (classes separated perfectly) grows up to this many
times ``reference_cases``, then stops growing: the state stays small."""


class AurocCusumState(BaseModel):
    """Where one (site, model, version, finding) AUROC CUSUM stands; plain values, JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_fingerprint: str
    reference_positive: list[float] = []
    """Scores of the reference's positive cases, sorted."""
    reference_negative: list[float] = []
    design: AurocCusumDesign | None = None
    not_ready: str | None = None
    units: int = 0
    """The statistic in grid units (``statistic`` in log-likelihood-ratio units)."""
    cases: int = 0
    """Monitored labelled cases (after the reference)."""
    signals: int = 0
    """Times the statistic rose from below h to h or above."""
    last_signal_at: int | None = None
    """Monitored case number (1-based) of the latest signal."""
    by_value: dict[str, dict[str, ValueCusum]] = {}
    """Per field of ``by_fields``, the CUSUM of each value seen (at most ``max_values``)."""
    untracked: dict[str, int] = {}
    """Per field, monitored cases of values beyond ``max_values`` (in the pooled CUSUM only)."""
    reference_values: dict[str, dict[str, int]] = {}
    """Per field, the reference's cases of each value (at most ``max_values`` values)."""

    @property
    def statistic(self) -> float:
        """The CUSUM in units of log-likelihood ratio (0 before a design exists)."""
        return self.units / self.design.scale if self.design else 0.0


def start_auroc_cusum(
    config: AurocCusum, previous: AurocCusumState | None = None
) -> AurocCusumState:
    """A fresh CUSUM for ``config``. The reference scores of ``previous`` (a state under another
    config) are kept, with the values of its cases: a reference is data, and it is designed
    anew when it is large enough."""
    state = AurocCusumState(config_fingerprint=config.fingerprint())
    if previous is not None:
        state = state.model_copy(
            update={
                "reference_positive": previous.reference_positive,
                "reference_negative": previous.reference_negative,
                "reference_values": previous.reference_values,
            }
        )
    return _designed(state, config)


def update_auroc_cusum(
    state: AurocCusumState,
    labels: ArrayLike,
    scores: ArrayLike,
    config: AurocCusum,
    *,
    finding: str | None = None,
) -> tuple[AurocCusumState, RuleResult]:
    """Continue over newly labelled cases (label arrival order): first the reference, then the
    CUSUM. The result is breached when the statistic was at or above h anywhere in the batch
    (or still is); not evaluated while there is no design. CusumConfigError for a state started
    under another config (restart it with :func:`start_auroc_cusum`). The pooled CUSUM only:
    :func:`update_auroc_cusums` also runs those of ``config.by_fields``."""
    state, results = update_auroc_cusums(state, labels, scores, config, finding=finding)
    return state, results[0]


def update_auroc_cusums(
    state: AurocCusumState,
    labels: ArrayLike,
    scores: ArrayLike,
    config: AurocCusum,
    *,
    finding: str | None = None,
    groups: Groups | None = None,
) -> tuple[AurocCusumState, list[RuleResult]]:
    """As :func:`update_auroc_cusum`, and the CUSUM of each value of ``config.by_fields``:
    ``groups[field]`` is each case's value (None, or a field missing from ``groups``: the case
    has none). The pooled result first, then one per (field, value) with cases in the batch,
    its ``subgroup`` set and ``first_signal_at`` counted in the pooled monitored cases."""
    if state.config_fingerprint != config.fingerprint():
        raise CusumConfigError("AUROC CUSUM state was started with another configuration")
    positive, score = validated(labels, scores, 0.5)
    taken = 0 if state.design is not None else _reference_need(state, positive, config)
    if taken:
        state = _designed(_with_reference(state, positive[:taken], score[:taken]), config)
        if groups and config.by_fields:
            state = _with_reference_values(state, groups, taken, config)
    subject = subject_of("AUROC CUSUM", finding)
    design = state.design
    if design is None:
        reason = str(state.not_ready)
        return state, [
            not_evaluated(
                "auroc_cusum", subject, reason, None, "at_or_above", positive.size, config
            )
        ]
    positive, score = positive[taken:], score[taken:]
    placement = placements(
        positive,
        score,
        np.asarray(state.reference_positive),
        np.asarray(state.reference_negative),
    )
    steps = case_steps(design, positive, placement)
    moved = advance(state.units, steps.tolist(), design.limit, design.hold)
    before = state.cases
    last = before + moved.crossings[-1] if moved.crossings else state.last_signal_at
    state = state.model_copy(
        update={
            "units": moved.units,
            "cases": before + positive.size,
            "signals": state.signals + len(moved.crossings),
            "last_signal_at": last,
        }
    )
    first = before + moved.crossings[0] if moved.crossings else None
    results = [
        _result(state.statistic, design, moved, (positive, placement), config, subject, first)
    ]
    if not config.by_fields:
        return state, results
    batch = value_steps(
        (state.by_value, state.untracked),
        before,
        steps,
        _tail(groups, taken),
        design,
        config,
        known=_known_values(state, config),
    )
    state = state.model_copy(update={"by_value": batch.by_value, "untracked": batch.untracked})
    for run in batch.runs:
        which = run.cases
        result = _result(
            run.cusum.units / design.scale,
            design,
            run.moved,
            (positive[which], placement[which]),
            config,
            f"{subject} on cases with {run.field} {run.value!r}",
            run.first_signal_at,
        )
        results.append(dataclasses.replace(result, subgroup=(run.field, run.value)))
    return state, results


def _with_reference_values(
    state: AurocCusumState, groups: Groups, taken: int, config: AurocCusum
) -> AurocCusumState:
    """The state with the values of the batch's ``taken`` reference cases added."""
    known = {field: dict(values) for field, values in state.reference_values.items()}
    for field in config.by_fields:
        seen = known.setdefault(field, {})
        for value in groups.get(field, [])[:taken]:
            if value is not None and (value in seen or len(seen) < config.max_values):
                seen[value] = seen.get(value, 0) + 1
    return state.model_copy(update={"reference_values": known})


def _known_values(state: AurocCusumState, config: AurocCusum) -> dict[str, set[str]]:
    """Per field, the values of the reference: those with at least ``known_share`` of its
    cases (with ``new_values_only`` they get no CUSUM; otherwise one with no head start)."""
    least = config.known_share * (len(state.reference_positive) + len(state.reference_negative))
    return {
        field: {value for value, count in counts.items() if count >= least}
        for field, counts in state.reference_values.items()
    }


def _tail(groups: Groups | None, taken: int) -> dict[str, Sequence[str | None]]:
    """The groups of the monitored cases: those after the ``taken`` reference cases."""
    return {field: values[taken:] for field, values in (groups or {}).items()}


def _reference_need(state: AurocCusumState, positive: NDArray[np.bool_], config: AurocCusum) -> int:
    """How many of the batch's leading cases go to the reference: up to the first case that
    completes it; the whole batch (up to the cap) when it is complete in counts but gave no
    design (too uncertain for the drop), so that it grows until it does."""
    have_positive, have_negative = len(state.reference_positive), len(state.reference_negative)
    room = COLLECT_MULTIPLE * config.reference_cases - have_positive - have_negative
    if room <= 0:
        return 0
    if _complete(have_positive, have_negative, config):
        return min(room, positive.size)
    positives = have_positive + np.cumsum(positive)
    negatives = have_negative + np.cumsum(~positive)
    complete = _complete(positives, negatives, config)
    return int(np.argmax(complete)) + 1 if complete.any() else min(room, positive.size)


def _complete(positives: Any, negatives: Any, config: AurocCusum) -> Any:
    """Whether a reference with these counts (numbers or arrays) is large enough to design."""
    return (
        (positives + negatives >= config.reference_cases)
        & (positives >= config.min_positives)
        & (negatives >= config.min_negatives)
    )


def _with_reference(
    state: AurocCusumState, positive: NDArray[np.bool_], score: NDArray[np.float64]
) -> AurocCusumState:
    return state.model_copy(
        update={
            "reference_positive": sorted([*state.reference_positive, *score[positive].tolist()]),
            "reference_negative": sorted([*state.reference_negative, *score[~positive].tolist()]),
        }
    )


def _designed(state: AurocCusumState, config: AurocCusum) -> AurocCusumState:
    """The state with its design, or with the reason why there is none yet."""
    n_positive, n_negative = len(state.reference_positive), len(state.reference_negative)
    if not _complete(n_positive, n_negative, config):
        reason = (
            f"collecting the reference: {n_positive + n_negative} of {config.reference_cases} "
            f"labelled cases ({n_positive} positive, {n_negative} negative; at least "
            f"{config.min_positives} and {config.min_negatives} needed)"
        )
        return state.model_copy(update={"design": None, "not_ready": reason})
    design = design_auroc_cusum(
        np.asarray(state.reference_positive), np.asarray(state.reference_negative), config
    )
    if isinstance(design, str):
        return state.model_copy(update={"design": None, "not_ready": design})
    return state.model_copy(update={"design": design, "not_ready": None})


def _batch_auroc(positive: NDArray[np.bool_], placement: NDArray[np.float64]) -> float | None:
    """The batch's AUROC against the reference: the mean of its per-class mean placements."""
    means = [float(placement[which].mean()) for which in (positive, ~positive) if which.any()]
    return sum(means) / len(means) if means else None


def _result(
    statistic: float,
    design: AurocCusumDesign,
    moved: Advance,
    batch: tuple[NDArray[np.bool_], NDArray[np.float64]],
    config: AurocCusum,
    subject: str,
    first_signal_at: int | None,
) -> RuleResult:
    """The verdict of one CUSUM (``statistic``: where it ends) on the batch's cases it read."""
    positive, placement = batch
    n_cases, peak = positive.size, moved.peak / design.scale
    breached = moved.peak >= design.limit
    numbers = {
        "peak": peak,
        "statistic": statistic,
        "reference_auroc": design.reference_auroc,
        "drop": design.drop,
        "arl0": design.arl0,
    }
    batch_auroc = _batch_auroc(positive, placement)
    ranked = "no new labelled cases"
    if batch_auroc is not None:
        numbers["batch_auroc"] = batch_auroc
        ranked = (
            f"the {n_cases} cases labelled since the last check ({int(positive.sum())} positive) "
            f"rank like an AUROC of {batch_auroc:.2f} against the reference's "
            f"{design.reference_auroc:.2f} ({design.positives + design.negatives} cases)"
        )
    if first_signal_at is not None:  # the monitored case that first took it to h in this batch
        numbers["first_signal_at"] = float(first_signal_at)
    return RuleResult(
        rule="auroc_cusum",
        breached=breached,
        statistic=peak,
        threshold=design.decision_interval,
        breach_when="at_or_above",
        explanation=(
            f"{subject}: evidence of a drop {peak:.2f} (now {statistic:.2f}), "
            f"{'at or above' if breached else 'below'} the alarm level "
            f"{design.decision_interval:.2f}; {ranked}. Tuned to find a drop of {design.drop:.2f} "
            f"within about {design.arl1:,.0f} labelled cases, with one false alarm per "
            f"{_false_alarms(design, config)}"
        ),
        n_cases=n_cases,
        numbers=numbers,
        config_fingerprint=config.fingerprint(),
    )


def _false_alarms(design: AurocCusumDesign, config: AurocCusum) -> str:
    """The false-alarm rate, shared with the CUSUMs per value when there are some."""
    if not config.by_fields:
        return f"{design.arl0:,.0f} or more"
    fields = ", ".join(config.by_fields)
    text = f"{config.arl0:,} or more over this CUSUM and those per value of {fields} together"
    if design.head_start:
        text += (
            f", and a chance of {design.head_start_false_alarm:.1%} or less of one for each new "
            "value (its CUSUM starts part of the way to the alarm level)"
        )
    return text
