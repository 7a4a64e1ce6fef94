"""The same metrics per subgroup: per value of sex, age band, manufacturer, modality, or any field.

A model can hold up overall and fail one scanner or one age band. :func:`subgroup_metrics` splits
a window by each metadata field it is given and computes :func:`binary_metrics` for every value
(cases where the field is missing form a subgroup of their own, ``value=None``). A subgroup with
fewer than ``config.min_subgroup_count`` cases shows its size and the reason instead of metrics;
above it every metric still keeps its own minimum count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitor.performance.metrics import (
    BinaryMetrics,
    InvalidInputError,
    PerformanceConfig,
    binary_metrics,
    validated,
)

SubgroupColumns = Mapping[str, Sequence[str | None]]
"""Metadata field name -> one value per case (None = missing), in the order of the labels."""


@dataclass(frozen=True, slots=True)
class SubgroupMetrics:
    """One subgroup: a field's value, its size, and its metrics or why there are none."""

    field: str
    value: str | None
    """The field's value; None for the cases where the field is missing."""
    n: int
    metrics: BinaryMetrics | None
    unavailable_reason: str | None
    """Why ``metrics`` is None (too few cases), else None."""


def subgroup_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    groups: SubgroupColumns,
    config: PerformanceConfig | None = None,
) -> list[SubgroupMetrics]:
    """Metrics per value of every field in ``groups``, fields in the given order.

    Within a field the values come in sorted order, the missing-value subgroup last. Raises
    InvalidInputError as :func:`binary_metrics` does, and when a field does not have one value
    per case or holds something other than strings and None.
    """
    config = config or PerformanceConfig()
    positive, score = validated(labels, scores, threshold)
    results: list[SubgroupMetrics] = []
    for field_name, values in groups.items():
        codes, levels = _encoded(field_name, values, positive.size)
        for code, value in enumerate(levels):
            members = codes == code
            results.append(
                _one_subgroup(
                    field_name, value, positive[members], score[members], threshold, config
                )
            )
    return results


def _encoded(
    field_name: str, values: Sequence[str | None], n_cases: int
) -> tuple[NDArray[np.int64], list[str | None]]:
    """The field's values as integer codes and the values in code order (None last)."""
    if len(values) != n_cases:
        raise InvalidInputError(
            f"subgroup field {field_name!r} has {len(values)} values for {n_cases} cases"
        )
    distinct = set(values)
    if any(value is not None and not isinstance(value, str) for value in distinct):
        raise InvalidInputError(f"subgroup field {field_name!r} must hold strings or None")
    present = sorted(value for value in distinct if value is not None)
    levels: list[str | None] = [*present, None] if None in distinct else list(present)
    code_of = {value: code for code, value in enumerate(levels)}
    codes = np.fromiter((code_of[value] for value in values), dtype=np.int64, count=n_cases)
    return codes, levels


def _one_subgroup(
    field_name: str,
    value: str | None,
    positive: NDArray[np.bool_],
    score: NDArray[np.float64],
    threshold: float,
    config: PerformanceConfig,
) -> SubgroupMetrics:
    n = int(positive.size)
    if n < config.min_subgroup_count:
        who = f"{field_name} missing" if value is None else f"{field_name}={value}"
        reason = f"{who}: {n} cases, at least {config.min_subgroup_count} needed"
        return SubgroupMetrics(field_name, value, n, None, reason)
    metrics = binary_metrics(positive, score, threshold, config)
    return SubgroupMetrics(field_name, value, n, metrics, None)
