"""Effect thresholds learned from the reference's own variability.

A two-sample test against a large reference becomes significant for any difference at all, and a
fixed effect floor (0.1 reference standard deviations) sits far below the week-to-week movement
of real acquisition parameters: tube current, exposure and window settings wander every week in
a stable department. Following NannyML's chunked thresholds, the reference is split into
time-ordered chunks the size of a live window, each chunk is scored by a fresh detector fitted
on the *rest* of the reference, and each detector's threshold (per feature for the per-feature
tests) is set from the spread of those chunk effects: ``mean + k * sd`` (default ``k = 3``) or a
high quantile. A window then drifts only when its test is significant *and* its effect exceeds
the learned threshold (and never less than the detector's configured floor).

The chunks are the reference's own history, so the threshold carries its natural variation,
including slow wandering that an i.i.d. resample of the reference would hide. With fewer than
``min_chunks`` chunks the spread cannot be estimated and nothing is learned: the detector keeps
its configured floor, and the stream says so.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field

from monitor.drift.base import (
    DetectorConfig,
    DriftResult,
    FeatureAttribution,
    InsufficientDataError,
)
from monitor.drift.features import RowBuffer

OVERALL = "*"
"""The key of a detector-level threshold (on ``DriftResult.effect_size``), for detectors whose
decision is one multivariate test (MMD)."""


class LearnedThresholdConfig(DetectorConfig):
    """How effect thresholds are learned from the reference (``EngineConfig.learned``)."""

    chunk_size: int | None = Field(default=None, ge=10)
    """Rows per reference chunk; None: the live window's size (its ``min_size`` for windows
    bounded by time only), so a chunk's effect is comparable with a window's."""
    min_chunks: int = Field(default=8, ge=3)
    """Fewest chunks to learn from; a shorter reference keeps the configured floors."""
    method: Literal["mean_sd", "quantile"] = "mean_sd"
    k: float = Field(default=4.0, gt=0.0)
    """For ``mean_sd``: the threshold is the chunk effects' mean plus ``k`` standard deviations."""
    quantile: float = Field(default=0.95, gt=0.5, lt=1.0)
    """For ``quantile``: this quantile of the chunk effects."""


@dataclass(frozen=True, slots=True)
class LearnedThreshold:
    """One feature's (or a detector's overall) learned threshold and what it came from."""

    threshold: float
    mean: float
    sd: float
    chunks: int


@dataclass(frozen=True, slots=True)
class DetectorThresholds:
    """A detector's learned thresholds: per feature, and overall (key :data:`OVERALL`)."""

    detector: str
    chunk_size: int
    n_chunks: int
    thresholds: Mapping[str, LearnedThreshold]
    chunk_duration_s: float | None = None
    """Chunks by event time (this long each) instead of by ``chunk_size`` rows."""
    cusum_h: float | None = None
    """The sequential rule's decision interval (``monitor.drift.sequential``), when configured."""

    def for_feature(self, feature: str) -> LearnedThreshold | None:
        return self.thresholds.get(feature)

    def to_json(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "chunk_size": self.chunk_size,
            "n_chunks": self.n_chunks,
            "chunk_duration_s": self.chunk_duration_s,
            "cusum_h": self.cusum_h,
            "thresholds": {
                name: dataclasses.asdict(value) for name, value in self.thresholds.items()
            },
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> DetectorThresholds:
        return cls(
            detector=str(document["detector"]),
            chunk_size=int(document["chunk_size"]),
            n_chunks=int(document["n_chunks"]),
            chunk_duration_s=document.get("chunk_duration_s"),
            cusum_h=document.get("cusum_h"),
            thresholds={
                name: LearnedThreshold(
                    threshold=value["threshold"],
                    mean=value["mean"],
                    sd=value["sd"],
                    chunks=value["chunks"],
                )
                for name, value in document["thresholds"].items()
            },
        )


class _Detector(Protocol):
    def fit(self, reference: Any, /) -> object: ...

    def score(self, window: Any, /) -> DriftResult: ...


def _subset(buffer: RowBuffer, rows: np.ndarray[Any, np.dtype[np.bool_]]) -> RowBuffer:
    return RowBuffer.from_arrays(buffer.numeric[rows], buffer.codes[rows], buffer.times[rows])


def _per_feature(result: DriftResult) -> bool:
    """Whether the result decides feature by feature (per-feature adjusted p-values)."""
    return result.threshold is not None and any(a.p_value is not None for a in result.attributions)


def chunks(
    reference: RowBuffer, chunk_size: int, duration_s: float | None = None
) -> list[np.ndarray[Any, np.dtype[np.bool_]]]:
    """The reference's chunks as row masks, in time order: consecutive runs of ``chunk_size``
    rows, or with ``duration_s`` the rows of each span ``[t0 + i * d, t0 + (i + 1) * d)`` from
    the first event time ``t0`` (the last, partial span dropped, as a trailing partial run is)."""
    n, times = len(reference), reference.times
    if duration_s is None:
        return [np.arange(n) // chunk_size == i for i in range(n // chunk_size)]
    index = np.floor((times - times[0]) / duration_s).astype(np.int64)
    complete = int((times[-1] - times[0]) // duration_s) if n else 0
    return [index == i for i in range(complete) if (index == i).any()]


def learn(
    detector: str,
    make: Callable[[], _Detector],
    sample_for: Callable[[RowBuffer], object],
    reference: RowBuffer,
    chunk_size: int,
    config: LearnedThresholdConfig,
    chunk_duration_s: float | None = None,
) -> DetectorThresholds | None:
    """Learn ``detector``'s thresholds from ``reference`` (rows in time order), or None when
    fewer than ``config.min_chunks`` of its chunks (:func:`chunks`) could be scored.

    ``make`` builds an unfitted detector; ``sample_for`` cuts its input from a row buffer. For
    each chunk the detector is fitted on every other reference row (the rest of the reference)
    and scores the chunk. A chunk the detector cannot score (too few values) is left out.
    """
    effects: dict[str, list[float]] = defaultdict(list)
    scored = 0
    for rows in chunks(reference, chunk_size, chunk_duration_s):
        fresh = make()
        try:
            fresh.fit(sample_for(_subset(reference, ~rows)))
            result = fresh.score(sample_for(_subset(reference, rows)))
        except (InsufficientDataError, ValueError):
            continue
        scored += 1
        effects[OVERALL].append(result.effect_size)
        if _per_feature(result):
            for attribution in result.attributions:
                if attribution.p_value is not None:
                    effects[attribution.feature].append(attribution.effect_size)
    if scored < config.min_chunks:
        return None
    return DetectorThresholds(
        detector=detector,
        chunk_size=chunk_size,
        chunk_duration_s=chunk_duration_s,
        n_chunks=scored,
        thresholds={
            name: _threshold(values, config)
            for name, values in effects.items()
            if len(values) >= config.min_chunks
        },
    )


def _threshold(values: list[float], config: LearnedThresholdConfig) -> LearnedThreshold:
    array = np.asarray(values, dtype=np.float64)
    mean, sd = float(array.mean()), float(array.std(ddof=1))
    if config.method == "mean_sd":
        threshold = mean + config.k * sd
    else:
        threshold = float(np.quantile(array, config.quantile))
    return LearnedThreshold(
        threshold=threshold,
        mean=mean,
        sd=sd,
        chunks=int(array.size),
    )


def effect_threshold(
    thresholds: DetectorThresholds | None, feature: str, floor: float
) -> tuple[float, LearnedThreshold | None]:
    """The effect a feature must reach: its learned threshold, never below the floor."""
    learned = None if thresholds is None else thresholds.for_feature(feature)
    if learned is None:
        return floor, None
    return max(floor, learned.threshold), learned


def apply(result: DriftResult, thresholds: DetectorThresholds, floor: float) -> DriftResult:
    """``result`` decided again with the learned thresholds.

    Per-feature detectors: a feature drifts when its adjusted p-value is at most the result's
    threshold and its effect reaches its learned threshold; the drifting features are ranked
    first, each drifting feature's explanation says how many times its learned threshold the
    effect is ("2.7x its learned threshold"), and the result's effect is the leading feature's.
    A multivariate detector (MMD) keeps its test and must also reach its overall threshold.
    ``effect_threshold`` records the threshold the leading effect was compared with.
    """
    if not _per_feature(result):
        limit, learned = effect_threshold(thresholds, OVERALL, floor)
        return dataclasses.replace(
            result,
            is_drift=result.is_drift and result.effect_size >= limit,
            effect_threshold=limit if learned is not None else None,
        )
    assert result.threshold is not None  # _per_feature checked it
    ranked: list[tuple[bool, float, FeatureAttribution, float]] = []
    untested: list[FeatureAttribution] = []
    for attribution in result.attributions:
        if attribution.p_value is None:
            untested.append(attribution)
            continue
        limit, learned = effect_threshold(thresholds, attribution.feature, floor)
        drifting = attribution.p_value <= result.threshold and attribution.effect_size >= limit
        if drifting and learned is not None and limit > 0:
            attribution = dataclasses.replace(
                attribution,
                explanation=f"{attribution.explanation or attribution.feature}; "
                f"{attribution.effect_size / limit:.1f}x {_threshold_words(limit, learned)}",
            )
        ranked.append((drifting, attribution.effect_size, attribution, limit))
    # Drifting first, then by effect; Python's sort is stable for equal keys.
    ranked.sort(key=lambda item: (not item[0], -item[1]))
    is_drift = bool(ranked) and ranked[0][0]
    leading = ranked[0] if ranked else None
    return dataclasses.replace(
        result,
        is_drift=is_drift,
        effect_size=leading[1] if leading else result.effect_size,
        effect_threshold=leading[3] if leading else None,
        attributions=tuple(item[2] for item in ranked) + tuple(untested),
    )


def _threshold_words(limit: float, learned: LearnedThreshold) -> str:
    """The threshold an effect was held to and what it came from, for an explanation: the
    learned one, or the configured floor where that is higher."""
    variation = (
        f"the reference's chunk-to-chunk variation: mean {learned.mean:.3g}, "
        f"sd {learned.sd:.3g} over {learned.chunks} chunks"
    )
    if limit > learned.threshold and learned.sd == 0.0:
        # A category that never varied across the reference's chunks: "mean 0, sd 0" says
        # nothing a reader can use.
        return (
            f"the configured floor {limit:.3g} (the reference's {learned.chunks} chunks did not "
            "vary)"
        )
    if limit > learned.threshold:
        return (
            f"the configured floor {limit:.3g} (above the threshold learned from {variation}: "
            f"{learned.threshold:.3g})"
        )
    return f"its learned threshold {limit:.3g} ({variation})"


def drifting_features(
    result: DriftResult, thresholds: DetectorThresholds, floor: float
) -> set[str]:
    """The features of a per-feature result that drift under the learned thresholds."""
    if result.threshold is None:
        return set()
    return {
        a.feature
        for a in result.attributions
        if a.p_value is not None
        and a.p_value <= result.threshold
        and a.effect_size >= effect_threshold(thresholds, a.feature, floor)[0]
    }
