"""Online (per-event) drift detection whose false-alarm rate is set by an expected run time.

Each event's features become normal scores against the reference (the inverse normal CDF of the
feature's mid-rank among the reference values), so skewed or heavy-tailed features behave like
Gaussian ones. The statistic is a sliding-window Hotelling-type mean shift: the mean score of the
last ``window_size`` events, whitened with the reference's score covariance, squared and scaled to
be ~chi2(d). Its alarm threshold is one constant, chosen once at ``fit`` by simulating bootstrap
streams from the reference so that the *mean run length to the first false alarm* equals the
configured ERT (ADR 0005). Consecutive windows share ``window_size - 1`` events, so a per-step
exceedance probability of ``1/ERT`` would not give that run length; calibration measures the run
length itself.

The calibrated threshold and the running window are persisted as :class:`OnlineState`, so a
restart restores in milliseconds instead of re-simulating.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Self

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from monitor.drift.base import (
    DetectorConfig,
    DriftError,
    DriftResult,
    FeatureAttribution,
    FeatureMatrix,
    InsufficientDataError,
    NotFittedError,
    register,
)

# scipy is imported in the functions that call it: the service settings import this module's
# config, so every `radsentry` command would pay for it (docs/benchmarks.md, "CLI start").

# Directions of the reference covariance with less variance than this (relative to the largest)
# carry no information to calibrate against (constant or collinear features), so they are dropped.
_EIGENVALUE_FLOOR = 1e-10
# Streams measured against one pseudo-reference: smaller groups sample the reference's own
# estimation error more finely, at the cost of one more covariance fit each.
_STREAMS_PER_PSEUDO_REFERENCE = 100
# Events x directions simulated at once: bounds calibration memory (~32 MB of float32).
_ELEMENTS_PER_BATCH = 8_000_000
# Longest simulated stream, in scored steps; beyond it the run-length tail is extrapolated.
_MAX_STREAM_STEPS = 2000
# Bisection steps on the threshold: the bracket shrinks far below the simulation's own noise.
_BISECTION_STEPS = 50


class StateMismatchError(DriftError):
    """A persisted state was made for another configuration, reference or detector."""


class OnlineConfig(DetectorConfig):
    """Configuration of :class:`OnlineDriftDetector`.

    ``ert`` is the expected number of events, counted from the first event after ``fit`` or
    ``reset`` (the ``window_size - 1`` events that fill the window included), until a false
    alarm when nothing has changed. ``fit`` simulates ``n_bootstraps`` streams once to calibrate
    the threshold (each ``ert - window_size + 1`` scored steps long, at least ``10 *
    window_size`` and at most 2000; a longer tail is extrapolated); ``seed`` makes it
    reproducible.
    """

    ert: int = Field(default=1000, gt=2)
    window_size: int = Field(default=50, ge=2)
    n_bootstraps: int = Field(default=4000, ge=100)
    seed: int = 0

    @model_validator(mode="after")
    def _ert_beyond_window(self) -> Self:
        if self.ert <= self.window_size:
            raise ValueError(
                f"ert ({self.ert}) must exceed window_size ({self.window_size}): no alarm can be "
                "raised before the window is full"
            )
        return self


class OnlineState(BaseModel):
    """Everything a detector needs besides its config and reference: plain, JSON-able values.

    ``window`` holds the raw events (``None`` for a missing value) in the ring buffer's row
    order; ``n_seen`` counts events since ``fit`` or the last ``reset``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    detector: str
    config_fingerprint: str
    reference_fingerprint: str
    threshold: FiniteFloat
    simulated_ert: float
    n_seen: int = Field(ge=0)
    window: list[list[FiniteFloat | None]]


def reference_fingerprint(reference: FeatureMatrix) -> str:
    """SHA-256 of the reference's feature names, shape and float64 values."""
    values = np.asarray(reference.values, dtype="<f8")
    digest = hashlib.sha256()
    digest.update("\x1f".join(reference.names).encode())
    digest.update(repr(values.shape).encode())
    # One NaN bit pattern: a missing value must hash the same whichever NaN stands for it.
    digest.update(np.where(np.isnan(values), np.nan, values).astype("<f8").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _Transform:
    """What is fitted on a reference: per-feature centre and spread, the sorted reference values
    (as keys) that give normal scores, and the whitening of those scores."""

    centre: NDArray[np.float64]
    spread: NDArray[np.float64]
    keys: NDArray[np.float64]  # every feature's sorted keys, feature after feature
    offsets: NDArray[np.intp]  # where each feature's keys start in ``keys``
    counts: NDArray[np.intp]  # observed (non-missing) reference values per feature
    score_centre: NDArray[np.float64]
    whitening: NDArray[np.float64]  # (kept directions, features)

    def standardise(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """(values - centre) / spread, a missing value at the reference mean (0)."""
        standardised = (values - self.centre) / self.spread
        standardised[np.isnan(standardised)] = 0.0
        return standardised

    def scores(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Centred normal scores of ``values`` (..., features); a missing value scores 0."""
        keys = _keys(values, self.centre, self.spread)
        below = self.keys.searchsorted(keys, side="left") - self.offsets
        at_most = self.keys.searchsorted(keys, side="right") - self.offsets
        scores: NDArray[np.float64] = _normal_scores(below, at_most, self.counts)
        scores -= self.score_centre
        # Imputed the same way in the reference, so calibration sees what the stream sees.
        scores[np.isnan(keys)] = 0.0
        return scores


def _keys(
    values: NDArray[np.float64], centre: NDArray[np.float64], spread: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Feature j's values mapped monotonically into (2j, 2j + 1): one sorted array and one
    ``searchsorted`` then rank every feature of an event at once."""
    feature = np.arange(values.shape[-1])
    keys: NDArray[np.float64] = 2.0 * feature + 0.5 + np.arctan((values - centre) / spread) / np.pi
    return keys


def _normal_scores(
    below: NDArray[np.intp], at_most: NDArray[np.intp], total: NDArray[np.intp]
) -> NDArray[np.float64]:
    """Inverse normal CDF of the mid-rank: (count below + count at most + 1) / 2 of total + 1."""
    from scipy.special import ndtri

    return np.asarray(ndtri((0.5 * (below + at_most) + 0.5) / (total + 1)), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Ranks:
    """A reference's keys sorted per feature, with tie groups. Scores the reference against any
    re-weighting of its rows (a bootstrap resample) in O(n d), without sorting again."""

    keys: NDArray[np.float64]  # (n, d), row order
    order: NDArray[np.intp]  # (n, d): rows in key order per feature, missing last
    group_start: NDArray[np.intp]  # (n, d): sorted position where a value's tie group starts
    group_end: NDArray[np.intp]  # (n, d): sorted position where it ends (inclusive)
    missing: NDArray[np.bool_]  # (n, d), row order

    @classmethod
    def of(cls, keys: NDArray[np.float64]) -> _Ranks:
        order = np.argsort(keys, axis=0)  # ties are grouped below, so order among them is moot
        ordered = np.take_along_axis(keys, order, axis=0)
        starts = np.ones(ordered.shape, dtype=bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        ends = np.ones(ordered.shape, dtype=bool)
        ends[:-1] = starts[1:]
        position = np.broadcast_to(np.arange(len(keys))[:, None], keys.shape)
        group_start = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
        reversed_end = np.where(ends, position, len(keys) - 1)[::-1]
        group_end = np.minimum.accumulate(reversed_end, axis=0)[::-1]
        return cls(keys, order, group_start, group_end, np.isnan(keys))

    def scores(self, weights: NDArray[np.intp]) -> NDArray[np.float64]:
        """Raw normal scores of every reference value when row i counts ``weights[i]`` times."""
        in_order = np.where(np.isnan(np.take_along_axis(self.keys, self.order, 0)), 0, 1)
        sorted_weights = weights[self.order] * in_order
        cumulative = np.cumsum(sorted_weights, axis=0)
        below = np.take_along_axis(cumulative - sorted_weights, self.group_start, axis=0)
        at_most = np.take_along_axis(cumulative, self.group_end, axis=0)
        sorted_scores = _normal_scores(below, at_most, cumulative[-1])
        scores = np.empty_like(sorted_scores)
        np.put_along_axis(scores, self.order, sorted_scores, axis=0)
        return scores

    def centre_and_whiten(
        self, weights: NDArray[np.intp]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Centred scores of the rows (missing at 0), their centre and whitening under
        ``weights``."""
        raw = self.scores(weights)
        raw[self.missing] = 0.0
        centre = weights @ raw / weights.sum()
        centred = raw - centre
        centred[self.missing] = 0.0
        covariance = (centred * weights[:, None]).T @ centred / max(int(weights.sum()) - 1, 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        kept = eigenvalues > _EIGENVALUE_FLOOR * max(float(eigenvalues.max()), 0.0)
        if not kept.any():
            raise InsufficientDataError("every reference feature is constant: nothing to monitor")
        whitening = eigenvectors[:, kept].T / np.sqrt(eigenvalues[kept])[:, None]
        return centred, centre, whitening


def _fit_transform(values: NDArray[np.float64]) -> tuple[_Transform, _Ranks]:
    """Fit centre, spread (NaN-aware), normal-score ranks and their whitening on ``values``."""
    observed = ~np.isnan(values)
    counts = observed.sum(axis=0)
    centre = np.where(observed, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
    squares = np.where(observed, (values - centre) ** 2, 0.0).sum(axis=0)
    spread = np.sqrt(squares / np.maximum(counts - 1, 1))
    spread = np.where(spread > 0.0, spread, 1.0)
    ranks = _Ranks.of(_keys(values, centre, spread))
    _, score_centre, whitening = ranks.centre_and_whiten(np.ones(len(values), dtype=np.intp))
    ordered = np.take_along_axis(ranks.keys, ranks.order, axis=0)
    transform = _Transform(
        centre=centre,
        spread=spread,
        keys=np.concatenate([ordered[:count, j] for j, count in enumerate(counts)]),
        offsets=np.cumsum(counts) - counts,
        counts=counts,
        score_centre=score_centre,
        whitening=whitening,
    )
    return transform, ranks


def _simulate_running_max(
    ranks: _Ranks,
    window_size: int,
    n_streams: int,
    n_steps: int,
    seed: int,
    double_bootstrap: bool = True,
) -> NDArray[np.float32]:
    """Running maximum of the statistic along bootstrap streams, shape (n_streams, n_steps).

    A double bootstrap: every group of streams first resamples a pseudo-reference from the
    reference and fits the scores and whitening on it, then measures streams resampled from the
    reference against it. Fresh events are compared with a reference whose ranks, mean and
    covariance are themselves estimates; calibrating against the exact reference instead
    (``double_bootstrap=False``, kept for the benchmark's ablation) gives a real run length of
    about half the ERT at n=1000 and 0.83 of it at n=5000 (window 50, d=16).
    """
    rng = np.random.default_rng(seed)
    n_reference = len(ranks.keys)
    # Squared window sums -> the statistic: divide by window_size**2 * (1/window + 1/n).
    scale = window_size**2 * (1.0 / window_size + 1.0 / n_reference)
    running_max = np.empty((n_streams, n_steps), dtype=np.float32)
    for start in range(0, n_streams, _STREAMS_PER_PSEUDO_REFERENCE):
        resample = rng.integers(0, n_reference, size=n_reference)
        weights = np.bincount(resample, minlength=n_reference)
        if not double_bootstrap:
            weights = np.ones(n_reference, dtype=np.intp)
        centred, _, whitening = ranks.centre_and_whiten(weights)
        # float32 halves the time of the gather and cumulative sums; the statistic's rounding
        # (~1e-5 relative) is far below the simulation's own noise.
        by_direction = np.ascontiguousarray((centred @ whitening.T).T, dtype=np.float32)
        group_end = min(start + _STREAMS_PER_PSEUDO_REFERENCE, n_streams)
        batch = max(1, _ELEMENTS_PER_BATCH // (len(by_direction) * (n_steps + window_size)))
        for first in range(start, group_end, batch):
            last = min(first + batch, group_end)
            rows = rng.integers(0, n_reference, size=(last - first, n_steps + window_size - 1))
            squared = _stream_running_max(by_direction[:, rows], window_size)
            running_max[first:last] = squared / scale
    return running_max


def _stream_running_max(events: NDArray[np.float32], window_size: int) -> NDArray[np.float32]:
    """Running max of the squared norm of window sums of ``events`` (directions, streams, time)."""
    sums = np.cumsum(events, axis=-1)
    window_sums = sums[..., window_size - 1 :]
    window_sums[..., 1:] -= sums[..., :-window_size]
    squared: NDArray[np.float32] = np.einsum("kst,kst->st", window_sums, window_sums)
    return np.maximum.accumulate(squared, axis=1)


def _mean_run_length(running_max: NDArray[np.float32], threshold: float) -> float:
    """Estimated mean number of scored steps until the statistic first exceeds ``threshold``.

    Streams that never exceed it are censored at the simulated length; their remaining run
    length is extrapolated with the (by then constant) hazard measured on the second half.
    """
    n_streams, n_steps = map(int, running_max.shape)
    survived = np.count_nonzero(running_max <= threshold, axis=1)
    alarmed = survived < n_steps
    run_length = np.where(alarmed, survived + 1, n_steps)
    censored = n_streams - int(alarmed.sum())
    observed_mean = float(run_length.mean())
    if censored == 0:
        return observed_mean
    half = n_steps // 2
    late_alarms = int(np.count_nonzero(alarmed & (run_length > half)))
    if late_alarms == 0:
        return math.inf
    late_exposure = float(np.clip(run_length - half, 0, None).sum())
    return observed_mean + censored / n_streams * late_exposure / late_alarms


def _calibrate(running_max: NDArray[np.float32], target: float) -> tuple[float, float]:
    """Smallest threshold whose estimated mean run length reaches ``target``, and that length."""
    low = 0.0
    high = float(running_max[:, -1].max()) * 2.0 + 1.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if _mean_run_length(running_max, middle) < target:
            low = middle
        else:
            high = middle
    return high, _mean_run_length(running_max, high)


@dataclass(frozen=True, slots=True)
class _Fitted:
    """What ``fit`` learns besides the threshold."""

    names: tuple[str, ...]
    transform: _Transform
    n_reference: int
    reference_fingerprint: str


@register("online_hotelling")
class OnlineDriftDetector:
    """Per-event drift detection on a sliding window; false alarms every ``ert`` events.

    ``fit`` (or :meth:`restore`) once, then call :meth:`update` with each event's feature
    vector, in the reference's column order; NaN marks a missing value. After an alarm has been
    handled, :meth:`reset` empties the window (the threshold is kept).
    """

    name: ClassVar[str]

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self._fingerprint = self.config.fingerprint()
        self._fitted: _Fitted | None = None
        self._threshold = math.nan
        self._simulated_ert = math.nan
        self._events = self._scores = self._standardised = np.zeros((0, 0))
        self._n_seen = 0

    @property
    def threshold(self) -> float:
        """The calibrated alarm threshold on the statistic."""
        self._require_fitted()
        return self._threshold

    @property
    def simulated_ert(self) -> float:
        """The mean run length (events, fill included) the calibration estimated."""
        self._require_fitted()
        return self._simulated_ert

    def fit(self, reference: FeatureMatrix) -> Self:
        """Fit the scores on ``reference`` and calibrate the threshold for the configured ERT."""
        fitted, ranks = self._prepare(reference)
        window_size = self.config.window_size
        target = self.config.ert - (window_size - 1)  # scored steps after the fill
        running_max = _simulate_running_max(
            ranks,
            window_size,
            self.config.n_bootstraps,
            max(10 * window_size, min(target, _MAX_STREAM_STEPS)),
            self.config.seed,
        )
        threshold, scored_run_length = _calibrate(running_max, target)
        self._install(fitted, threshold, scored_run_length + window_size - 1)
        return self

    def state(self) -> OnlineState:
        """The calibrated threshold and the running window, to persist."""
        fitted = self._require_fitted()
        return OnlineState(
            detector=self.name,
            config_fingerprint=self._fingerprint,
            reference_fingerprint=fitted.reference_fingerprint,
            threshold=self._threshold,
            simulated_ert=self._simulated_ert,
            n_seen=self._n_seen,
            window=[
                [None if math.isnan(value) else value for value in row]
                for row in self._events[: min(self._n_seen, self.config.window_size)].tolist()
            ],
        )

    @classmethod
    def restore(cls, config: OnlineConfig, reference: FeatureMatrix, state: OnlineState) -> Self:
        """A detector in ``state`` without re-calibrating.

        Raises :class:`StateMismatchError` for a state made for another detector, configuration
        or reference.
        """
        if state.detector != cls.name:
            raise StateMismatchError(f"state is for detector {state.detector!r}, not {cls.name!r}")
        if state.config_fingerprint != config.fingerprint():
            raise StateMismatchError("state was calibrated for another configuration")
        detector = cls(config)
        fitted, _ = detector._prepare(reference)
        if state.reference_fingerprint != fitted.reference_fingerprint:
            raise StateMismatchError("state was calibrated on another reference")
        detector._install(fitted, state.threshold, state.simulated_ert)
        detector._load_window(state.window, state.n_seen)
        return detector

    def update(self, event: NDArray[np.float64]) -> DriftResult | None:
        """Add one event; ``None`` while the window fills, else the window's result."""
        if self.update_statistic(event) is None:
            return None
        return self.result()

    def update_statistic(self, event: NDArray[np.float64]) -> float | None:
        """:meth:`update` without building the result: the statistic alone (the per-event fast
        path; call :meth:`result` when the full result is wanted)."""
        fitted = self._require_fitted()
        values = np.asarray(event, dtype=np.float64)
        if values.shape != (len(fitted.names),):
            raise ValueError(f"event must have shape ({len(fitted.names)},), got {values.shape}")
        if np.isinf(values).any():
            raise ValueError("event has an infinite value; use NaN for a missing one")
        window_size = self.config.window_size
        slot = self._n_seen % window_size
        self._events[slot] = values
        self._scores[slot] = fitted.transform.scores(values)
        self._standardised[slot] = fitted.transform.standardise(values)
        self._n_seen += 1
        if self._n_seen < window_size:
            return None
        return self._statistic(fitted)[0]

    def result(self) -> DriftResult:
        """The full result (with per-feature attributions) of the current, full window."""
        fitted = self._require_fitted()
        if self._n_seen < self.config.window_size:
            raise InsufficientDataError("the window is not full yet")
        return self._result(fitted)

    def reset(self) -> None:
        """Empty the window (after an alarm was handled); the threshold stays."""
        self._require_fitted()
        for buffer in (self._events, self._scores, self._standardised):
            buffer[:] = 0.0
        self._n_seen = 0

    def _prepare(self, reference: FeatureMatrix) -> tuple[_Fitted, _Ranks]:
        if len(reference) < self.config.window_size:
            raise InsufficientDataError(
                f"reference has {len(reference)} rows, fewer than the window of "
                f"{self.config.window_size}"
            )
        transform, ranks = _fit_transform(np.asarray(reference.values, dtype=np.float64))
        fitted = _Fitted(
            names=reference.names,
            transform=transform,
            n_reference=len(reference),
            reference_fingerprint=reference_fingerprint(reference),
        )
        return fitted, ranks

    def _install(self, fitted: _Fitted, threshold: float, simulated_ert: float) -> None:
        self._fitted = fitted
        self._threshold = threshold
        self._simulated_ert = simulated_ert
        shape = (self.config.window_size, len(fitted.names))
        self._events, self._scores, self._standardised = (np.zeros(shape) for _ in range(3))
        self._n_seen = 0

    def _load_window(self, rows: list[list[float | None]], n_seen: int) -> None:
        fitted = self._require_fitted()
        expected_rows, n_features = min(n_seen, self.config.window_size), len(fitted.names)
        if len(rows) != expected_rows or any(len(row) != n_features for row in rows):
            raise StateMismatchError(
                f"state window must have {expected_rows} rows of {n_features} values"
            )
        if rows:
            events = np.array(rows, dtype=np.float64)  # None -> NaN
            self._events[:expected_rows] = events
            self._scores[:expected_rows] = fitted.transform.scores(events)
            self._standardised[:expected_rows] = fitted.transform.standardise(events)
        self._n_seen = n_seen

    def _require_fitted(self) -> _Fitted:
        if self._fitted is None:
            raise NotFittedError("call fit() or restore() before using the detector")
        return self._fitted

    def _statistic(self, fitted: _Fitted) -> tuple[float, float, NDArray[np.float64], float]:
        """(statistic, squared distance, score sums, variance) of the current window."""
        window_size = self.config.window_size
        score_sums = self._scores.sum(axis=0)
        whitened = fitted.transform.whitening @ score_sums / window_size
        distance_squared = float(whitened @ whitened)
        # Variance of the window's mean score minus the reference's, per unit covariance.
        variance = 1.0 / window_size + 1.0 / fitted.n_reference
        return distance_squared / variance, distance_squared, score_sums, variance

    def _result(self, fitted: _Fitted) -> DriftResult:
        window_size = self.config.window_size
        statistic, distance_squared, score_sums, variance = self._statistic(fitted)
        to_z = 1.0 / (window_size * math.sqrt(variance))
        attributions = tuple(
            FeatureAttribution(feature=name, statistic=score_sum * to_z, effect_size=shift)
            for name, score_sum, shift in zip(
                fitted.names,
                score_sums.tolist(),
                (self._standardised.sum(axis=0) / window_size).tolist(),
                strict=True,
            )
        )
        return DriftResult(
            detector=self.name,
            is_drift=statistic > self._threshold,
            statistic=statistic,
            effect_size=math.sqrt(distance_squared),
            effect_size_name="mahalanobis_normal_score_shift",
            n_reference=fitted.n_reference,
            n_window=window_size,
            config_fingerprint=self._fingerprint,
            threshold=self._threshold,
            attributions=attributions,
        )
