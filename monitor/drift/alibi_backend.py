"""alibi-detect as an optional backend: its MMDDrift and KSDrift behind our detector contract.

alibi-detect 0.12+ is under the Business Source License (no production use without a Seldon
licence) and 0.13 pins numpy < 2, so nothing in RadSentry requires it (ADR 0006). This module
imports without it; alibi-detect is imported the first time a detector here is fitted, and a
missing install raises :class:`AlibiNotInstalledError`, which names the extra to install.

What these adapters are for: a second, independent implementation to check ours against
(``tests/alibi``) and to benchmark (``benchmarks/bench_compare.py``), and a backend for a site
that holds a licence. Our own ``mmd`` and ``ks`` detectors are the defaults: ``mmd`` computes
the same statistic and p-value about 90x faster (docs/benchmarks.md), and both add per-feature
attributions and an effect-size floor, which these thin adapters do not.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import Field

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
from monitor.drift.multiple_testing import Correction, adjust

INSTALL_HINT = "pip install 'radsentry[alibi]'"

# alibi-detect's name for each of our corrections.
_ALIBI_CORRECTION: dict[Correction, str] = {"bonferroni": "bonferroni", "fdr_bh": "fdr"}


class AlibiNotInstalledError(DriftError, ImportError):
    """alibi-detect is not installed; it is an optional extra (Business Source License)."""


class _AlibiPrediction(Protocol):
    """The part of an alibi-detect drift detector that the adapters call."""

    def predict(self, x: NDArray[np.float64]) -> Mapping[str, Mapping[str, object]]: ...


def _alibi_detector(
    class_name: str, x_ref: NDArray[np.float64], **options: object
) -> _AlibiPrediction:
    """Build ``alibi_detect.cd.<class_name>(x_ref, **options)``, importing alibi-detect now.

    Imported by name so that this module, and mypy on an environment without alibi-detect, never
    need it; the import costs seconds (it loads transformers), another reason to defer it.
    """
    try:
        module = importlib.import_module("alibi_detect.cd")
    except ImportError as exc:
        raise AlibiNotInstalledError(
            f"the {class_name} backend needs alibi-detect, which is not installed: {INSTALL_HINT} "
            "(alibi-detect is under the Business Source License; see ADR 0006)"
        ) from exc
    detector: _AlibiPrediction = getattr(module, class_name)(x_ref, **options)
    return detector


def _number(value: object) -> float:
    return float(np.asarray(value, dtype=np.float64))


def _complete_rows(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows without NaN or infinity: alibi-detect's tests take no missing values."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values).all(axis=1)]


@dataclass(frozen=True, slots=True)
class _Fitted:
    names: tuple[str, ...]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    n_reference: int
    alibi: _AlibiPrediction


def _check_window(fitted: _Fitted, window: FeatureMatrix, min_window: int) -> NDArray[np.float64]:
    """The window's complete rows, standardised like the reference; errors as our detectors."""
    if window.names != fitted.names:
        raise ValueError(
            f"window features {window.names} differ from the reference's {fitted.names}"
        )
    clean = _complete_rows(window.values)
    if len(clean) < min_window:
        raise InsufficientDataError(
            f"window has {len(clean)} complete rows; at least {min_window} are needed"
        )
    return (clean - fitted.mean) / fitted.scale


def _standardised_reference(
    reference: FeatureMatrix, min_reference: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Complete rows standardised with their mean and sd (constant features only centred), as
    our ``mmd`` does, so that both backends see the same numbers; returns (rows, mean, scale)."""
    if not reference.names:
        raise ValueError("the reference has no features")
    clean = _complete_rows(reference.values)
    if len(clean) < min_reference:
        raise InsufficientDataError(
            f"reference has {len(clean)} complete rows; at least {min_reference} are needed"
        )
    mean, std = clean.mean(axis=0), clean.std(axis=0)
    scale = np.where(std == 0.0, 1.0, std)
    return (clean - mean) / scale, mean, scale


class AlibiMMDConfig(DetectorConfig):
    """Settings of alibi-detect's ``MMDDrift`` (PyTorch backend, Gaussian kernel, bandwidth
    from the reference): the same test and defaults as our ``MMDConfig``, less the effect floor
    and the reference cap."""

    n_permutations: int = Field(default=100, ge=1)
    p_value_threshold: float = Field(default=0.05, gt=0.0, lt=1.0)
    min_window: int = Field(default=20, ge=2)
    min_reference: int = Field(default=50, ge=2)
    seed: int = Field(default=0, ge=0)
    """Seeds torch's generator for the permutations, so ``mmd`` with the same seed draws the
    same ones and returns the same p-value."""


@register("alibi_mmd")
class AlibiMMDDetector:
    """alibi-detect's ``MMDDrift`` behind our contract (statistic and effect size: MMD^2).

    Rows with a missing value are dropped and features standardised with the reference mean and
    sd, as in ``mmd``. No attributions. Raises AlibiNotInstalledError at ``fit`` without
    alibi-detect.
    """

    name: ClassVar[str]

    def __init__(self, config: AlibiMMDConfig | None = None) -> None:
        self.config = config or AlibiMMDConfig()
        self._fitted: _Fitted | None = None

    def fit(self, reference: FeatureMatrix) -> Self:
        """Standardise the reference and configure alibi's kernel bandwidth from it."""
        rows, mean, scale = _standardised_reference(reference, self.config.min_reference)
        alibi = _alibi_detector(
            "MMDDrift",
            rows,
            backend="pytorch",
            p_val=self.config.p_value_threshold,
            n_permutations=self.config.n_permutations,
            device="cpu",
        )
        self._fitted = _Fitted(reference.names, mean, scale, len(rows), alibi)
        return self

    def score(self, window: FeatureMatrix) -> DriftResult:
        """Run alibi's permutation test on the window; NotFittedError before ``fit``."""
        fitted = _require_fitted(self._fitted)
        rows = _check_window(fitted, window, self.config.min_window)
        # alibi draws its permutations from torch's global generator: seed it for this call
        # only, so results are reproducible and the caller's random stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            data = fitted.alibi.predict(rows)["data"]
        mmd2 = _number(data["distance"])
        return DriftResult(
            detector=self.name,
            is_drift=bool(_number(data["is_drift"])),
            statistic=mmd2,
            effect_size=mmd2,
            effect_size_name="mmd2",
            n_reference=fitted.n_reference,
            n_window=len(rows),
            config_fingerprint=self.config.fingerprint(),
            p_value=_number(data["p_val"]),
            threshold=self.config.p_value_threshold,
        )


class AlibiKSConfig(DetectorConfig):
    """Settings of alibi-detect's ``KSDrift``: one KS test per feature, corrected across them."""

    p_value_threshold: float = Field(default=0.05, gt=0.0, lt=1.0)
    correction: Correction = "bonferroni"
    min_window: int = Field(default=20, ge=1)
    min_reference: int = Field(default=50, ge=1)


@register("alibi_ks")
class AlibiKSDetector:
    """alibi-detect's ``KSDrift`` behind our contract.

    ``statistic`` and ``effect_size`` are the largest KS statistic, ``p_value`` the smallest
    p-value adjusted as in ``ks`` (the decision is alibi's: Bonferroni drifts when a raw
    p-value is below threshold / features). Unlike ``ks``: alibi's asymptotic p-values (``ks``
    uses the exact ones for samples below 10,000), rows with any missing value dropped, and no
    effect-size floor. Raises AlibiNotInstalledError at ``fit`` without alibi-detect.
    """

    name: ClassVar[str]

    def __init__(self, config: AlibiKSConfig | None = None) -> None:
        self.config = config or AlibiKSConfig()
        self._fitted: _Fitted | None = None

    def fit(self, reference: FeatureMatrix) -> Self:
        """Keep the reference (standardised; KS is invariant to it) inside alibi's KSDrift."""
        rows, mean, scale = _standardised_reference(reference, self.config.min_reference)
        alibi = _alibi_detector(
            "KSDrift",
            rows,
            p_val=self.config.p_value_threshold,
            correction=_ALIBI_CORRECTION[self.config.correction],
        )
        self._fitted = _Fitted(reference.names, mean, scale, len(rows), alibi)
        return self

    def score(self, window: FeatureMatrix) -> DriftResult:
        """Run alibi's per-feature KS tests on the window; NotFittedError before ``fit``."""
        fitted = _require_fitted(self._fitted)
        rows = _check_window(fitted, window, self.config.min_window)
        data = fitted.alibi.predict(rows)["data"]
        distances = np.asarray(data["distance"], dtype=np.float64).reshape(-1)
        adjusted = adjust(
            np.asarray(data["p_val"], dtype=np.float64).reshape(-1), self.config.correction
        )
        attributions = tuple(
            FeatureAttribution(
                feature=name,
                statistic=float(distance),
                effect_size=float(distance),
                p_value=float(p_value),
                explanation=f"{name}: KS {distance:.2f}, adjusted p {p_value:.3g}",
            )
            for name, distance, p_value in zip(fitted.names, distances, adjusted, strict=True)
        )
        return DriftResult(
            detector=self.name,
            is_drift=bool(_number(data["is_drift"])),
            statistic=float(distances.max()),
            effect_size=float(distances.max()),
            effect_size_name="ks_statistic",
            n_reference=fitted.n_reference,
            n_window=len(rows),
            config_fingerprint=self.config.fingerprint(),
            p_value=float(adjusted.min()),
            threshold=self.config.p_value_threshold,
            attributions=tuple(sorted(attributions, key=lambda item: -item.effect_size)),
        )


def _require_fitted(fitted: _Fitted | None) -> _Fitted:
    if fitted is None:
        raise NotFittedError("call fit(reference) before score(window)")
    return fitted
