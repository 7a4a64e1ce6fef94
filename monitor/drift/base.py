"""The contract every drift detector follows, its typed results and the detector registry."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict


class DriftError(Exception):
    """Base class of the detector library's errors."""


class NotFittedError(DriftError):
    """``score`` was called before ``fit``."""


class InsufficientDataError(DriftError):
    """A reference or window is too small (or empty) for the test to mean anything."""


class DetectorConfig(BaseModel):
    """Base of every detector's configuration: frozen, strict, and fingerprinted.

    The fingerprint is stored with every result so a result can always be traced to the exact
    configuration that produced it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def fingerprint(self) -> str:
        canonical = f"{type(self).__name__}:{self.model_dump_json()}"
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class FeatureAttribution:
    """How much one feature (or category, or finding) contributes to a result."""

    feature: str
    statistic: float
    effect_size: float
    p_value: float | None = None
    """Adjusted for the number of features tested together (``multiple_testing``)."""
    explanation: str | None = None
    p_value_raw: float | None = None
    """The feature's own p-value, before that correction (the sequential rule's evidence)."""


@dataclass(frozen=True, slots=True)
class DriftResult:
    """The outcome of scoring one window against the fitted reference."""

    detector: str
    is_drift: bool
    statistic: float
    effect_size: float
    effect_size_name: str
    n_reference: int
    n_window: int
    config_fingerprint: str
    p_value: float | None = None
    threshold: float | None = None
    attributions: tuple[FeatureAttribution, ...] = field(default_factory=tuple)
    effect_threshold: float | None = None
    """The effect threshold learned from the reference (``monitor.drift.calibration``) that the
    leading effect was compared with; None when the configured floor alone applied."""


@dataclass(frozen=True, slots=True)
class FeatureMatrix:
    """Numeric features of a sample: rows are events, columns named; NaN marks a missing value."""

    names: tuple[str, ...]
    values: NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise ValueError(
                f"values must be (n, {len(self.names)}) for {len(self.names)} names, "
                f"got shape {self.values.shape}"
            )

    def __len__(self) -> int:
        return int(self.values.shape[0])


_RELATIVE_SPREAD_FLOOR = 1e-9


def spread(values: NDArray[np.float64], axis: int | None = None) -> NDArray[np.float64]:
    """Standard deviation, with rounding noise taken for what it is: zero.

    ``np.std`` of a column holding one repeated value such as 0.148 is about 3e-17, not 0, and
    dividing by it turns the smallest change into an effect of 1e15 standard deviations. A
    spread below 1e-9 of the values' magnitude (or of 1) is returned as exactly 0.
    """
    std = np.std(values, axis=axis)
    magnitude = np.maximum(1.0, np.abs(np.mean(values, axis=axis)))
    return np.asarray(np.where(std <= _RELATIVE_SPREAD_FLOOR * magnitude, 0.0, std))


CategoricalColumns = Mapping[str, Sequence[str | None]]
"""Categorical features of a sample: feature name -> one value per event (None = missing)."""

SampleT = TypeVar("SampleT", contravariant=True)


class Detector(Protocol[SampleT]):
    """fit on a reference, score a window."""

    name: ClassVar[str]

    def fit(self, reference: SampleT) -> Self: ...

    def score(self, window: SampleT) -> DriftResult: ...


DETECTORS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a detector available by name (configs refer to detectors so)."""

    def decorate(cls: type) -> type:
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} is registered twice")
        cls.name = name  # type: ignore[attr-defined]
        DETECTORS[name] = cls
        return cls

    return decorate
