"""The alibi-detect adapters (``alibi_mmd``, ``alibi_ks``) follow our detector contract."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from monitor.drift.alibi_backend import (
    INSTALL_HINT,
    AlibiKSConfig,
    AlibiKSDetector,
    AlibiMMDConfig,
    AlibiMMDDetector,
    AlibiNotInstalledError,
)
from monitor.drift.base import DETECTORS, DriftError, InsufficientDataError, NotFittedError
from monitor.drift.ks import KSConfig, KSDetector
from monitor.drift.mmd import MMDConfig, MMDDetector
from monitor.drift.multiple_testing import Correction
from tests.alibi.samples import matrix, normal_pair


def scaled_pair(seed: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Features in arbitrary units (scale 3, offset 5) with one incomplete row on each side."""
    reference, window = normal_pair(seed, 400, 80, 8, shift)
    reference, window = reference * 3.0 + 5.0, window * 3.0 + 5.0
    reference[7, 2] = np.nan
    window[3, 0] = np.nan
    return reference, window


def test_registered_by_name() -> None:
    assert DETECTORS["alibi_mmd"] is AlibiMMDDetector
    assert DETECTORS["alibi_ks"] is AlibiKSDetector


@pytest.mark.parametrize("shift", [0.0, 0.12, 0.4])
def test_alibi_mmd_gives_our_mmd_result(shift: float) -> None:
    """Same standardisation, rows dropped and seed: the same MMD^2, p-value and decision."""
    reference, window = scaled_pair(3, shift)
    ours = MMDDetector(MMDConfig(seed=5)).fit(matrix(reference)).score(matrix(window))
    theirs = AlibiMMDDetector(AlibiMMDConfig(seed=5)).fit(matrix(reference)).score(matrix(window))
    assert theirs.detector == "alibi_mmd"
    assert theirs.statistic == pytest.approx(ours.statistic, abs=1e-5)
    assert theirs.effect_size == theirs.statistic
    assert theirs.effect_size_name == "mmd2"
    assert theirs.p_value is not None and ours.p_value is not None
    assert abs(theirs.p_value - ours.p_value) <= 0.01 + 1e-6
    assert theirs.is_drift == ours.is_drift
    assert (theirs.n_reference, theirs.n_window) == (399, 79)
    assert theirs.threshold == 0.05
    assert theirs.config_fingerprint == AlibiMMDConfig(seed=5).fingerprint()
    assert theirs.attributions == ()


def test_alibi_mmd_is_reproducible_and_leaves_the_global_generator_alone() -> None:
    reference, window = scaled_pair(4, 0.1)
    detector = AlibiMMDDetector().fit(matrix(reference))
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = detector.score(matrix(window))
    assert torch.equal(torch.rand(3), expected_next)
    assert detector.score(matrix(window)) == first


@pytest.mark.parametrize("correction", ["bonferroni", "fdr_bh"])
def test_alibi_ks_decides_as_our_ks(correction: Correction) -> None:
    for seed, shift in [(10, 0.0), (11, 0.3), (12, 0.5)]:
        reference, window = scaled_pair(seed, shift)
        ours = (
            KSDetector(KSConfig(correction=correction, min_effect_size=0.0))
            .fit(matrix(reference))
            .score(matrix(window))
        )
        config = AlibiKSConfig(correction=correction)
        theirs = AlibiKSDetector(config).fit(matrix(reference)).score(matrix(window))
        assert theirs.detector == "alibi_ks"
        assert theirs.is_drift == ours.is_drift, seed
        assert theirs.p_value == pytest.approx(ours.p_value, rel=0.15, abs=0.03)
        assert [a.feature for a in theirs.attributions][:1] == [ours.attributions[0].feature]
        assert theirs.statistic == max(a.statistic for a in theirs.attributions)
        assert len(theirs.attributions) == 8
        assert theirs.n_window == 79  # alibi takes no missing values: the incomplete row goes


def test_alibi_ks_flags_a_large_shift_and_not_a_null_window() -> None:
    reference, window = normal_pair(30, 1000, 200, 16, 0.0)
    detector = AlibiKSDetector().fit(matrix(reference))
    assert not detector.score(matrix(window)).is_drift
    assert detector.score(matrix(window + 0.5)).is_drift


@pytest.mark.parametrize("detector_type", [AlibiMMDDetector, AlibiKSDetector])
def test_contract_errors(detector_type: type[AlibiMMDDetector] | type[AlibiKSDetector]) -> None:
    reference, window = normal_pair(40, 100, 30, 3)
    with pytest.raises(NotFittedError):
        detector_type().score(matrix(window))
    with pytest.raises(InsufficientDataError):
        detector_type().fit(matrix(reference[:10]))
    detector = detector_type().fit(matrix(reference))
    with pytest.raises(InsufficientDataError):
        detector.score(matrix(window[:5]))
    with pytest.raises(ValueError, match="differ"):
        detector.score(matrix(window[:, :2]))


def test_missing_alibi_raises_a_drift_error_that_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "alibi_detect.cd", None)  # import now fails
    reference, _ = normal_pair(50, 100, 30, 3)
    for detector in (AlibiMMDDetector(), AlibiKSDetector()):
        with pytest.raises(
            AlibiNotInstalledError, match=INSTALL_HINT.replace("[", r"\[")
        ) as caught:
            detector.fit(matrix(reference))
        assert isinstance(caught.value, DriftError)
        assert isinstance(caught.value, ImportError)
