"""Seeded samples shared by the alibi-detect cross-checks."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from monitor.drift.base import FeatureMatrix


def matrix(values: NDArray[np.float64]) -> FeatureMatrix:
    """Name the columns f0, f1, ..."""
    return FeatureMatrix(tuple(f"f{i}" for i in range(values.shape[1])), values)


def normal_pair(
    seed: int, n_ref: int, n_window: int, n_features: int, shift: float = 0.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A standard-normal reference and a window with every feature shifted by ``shift`` sd."""
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n_ref, n_features)),
        rng.normal(size=(n_window, n_features)) + shift,
    )


def standardise(
    reference: NDArray[np.float64], window: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Both samples in reference sd units, as our ``mmd`` standardises before its kernel."""
    mean, sd = reference.mean(axis=0), reference.std(axis=0)
    return (reference - mean) / sd, (window - mean) / sd
