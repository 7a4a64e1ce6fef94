"""The window detectors' per-reference shortcuts give the numbers they replaced, bit for bit.

``monitor.drift.two_sample`` against ``scipy.stats`` (the KS test through scipy's function
without its wrapper, the Wasserstein distance on a reference sorted once), and the MMD test's
kept kernel matrices (``mmd_kernel._KernelCache``) against the matrix built anew with
``torch.cat`` for every window: equal floats, not merely close ones, on samples with and
without ties, windows of several sizes, and a cache too small to keep anything.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import scipy.stats
import torch
from numpy.typing import NDArray

from monitor.drift import mmd_kernel, two_sample
from monitor.drift.base import FeatureMatrix
from monitor.drift.ks import KSDetector
from monitor.drift.mmd import MMDDetector


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small kernel products, one thread (as ``test_drift_mmd.py``: a busy 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def samples(seed: int) -> Iterator[tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Pairs of references and windows: continuous, rounded (ties within and across),
    shifted, tiny, and one constant reference."""
    rng = np.random.default_rng(seed)
    for n_ref, n_window in ((1232, 100), (50, 20), (400, 400), (2000, 37)):
        reference = rng.normal(size=n_ref)
        window = rng.normal(0.3, 1.2, size=n_window)
        yield reference, window
        yield np.round(reference, 1), np.round(window, 1)
        yield np.round(reference * 3), np.round(window * 3 + 1)
    yield np.full(200, 2.5), rng.normal(2.5, 0.1, size=60)


@pytest.mark.parametrize("seed", range(3))
def test_ks_and_wasserstein_equal_scipys(seed: int) -> None:
    for reference, window in samples(seed):
        expected = scipy.stats.ks_2samp(reference, window)
        ordered = np.sort(reference)
        assert two_sample.ks_2samp(ordered, window) == (expected.statistic, expected.pvalue)
        assert two_sample.ks_2samp(reference, window) == (expected.statistic, expected.pvalue)
        distance = scipy.stats.wasserstein_distance(reference, window)
        assert two_sample.wasserstein_distance(ordered, window) == distance


def test_an_empty_sample_is_refused_as_scipy_refuses_it() -> None:
    with pytest.raises(ValueError, match="empty"):
        two_sample.wasserstein_distance(np.array([]), np.array([1.0]))


def _anew(
    points: torch.Tensor, window: NDArray[np.float64], sigma: float, permutations: int
) -> tuple[float, float]:
    """The permutation test as it was: the joint matrix concatenated for every window."""
    window_points = torch.from_numpy(window)
    within_reference = mmd_kernel._reference_block(points, sigma)
    cross = mmd_kernel._gaussian_kernel(mmd_kernel.squared_distances(points, window_points), sigma)
    within = mmd_kernel._zero_diagonal(
        mmd_kernel._gaussian_kernel(
            mmd_kernel.squared_distances(window_points, window_points), sigma
        )
    )
    kernel = torch.cat(
        [torch.cat([within_reference, cross], dim=1), torch.cat([cross.T, within], dim=1)], dim=0
    )
    n_ref, n_window = len(points), len(window_points)
    masks = mmd_kernel._reference_masks(n_ref, n_window, permutations, 0)
    mmd2 = mmd_kernel._batched_mmd2(kernel, masks, n_ref, n_window)
    observed, permuted = mmd2[0], mmd2[1:]
    p_value = (permuted >= observed - mmd_kernel._TIE_TOLERANCE).double().mean()
    return float(observed), float(p_value)


@pytest.mark.parametrize("budget", [mmd_kernel._KERNEL_CACHE_BYTES, 1])
def test_kept_kernel_matrices_give_the_statistics_of_matrices_built_anew(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    monkeypatch.setattr(mmd_kernel, "_KERNELS", mmd_kernel._KernelCache(budget))
    rng = np.random.default_rng(7)
    references = [torch.from_numpy(rng.normal(size=(n, 5))) for n in (300, 120)]
    sigmas = [mmd_kernel.median_sigma(points) for points in references]
    for size in (40, 40, 25, 40, 60, 60):  # hits, a smaller window, a larger one
        for points, sigma in zip(references, sigmas, strict=True):  # two streams take turns
            window = rng.normal(0.2, 1.0, size=(size, 5))
            kept = mmd_kernel.permutation_test(points, sigma, window, 50, 0)
            assert kept == _anew(points, window, sigma, 50)
    held = mmd_kernel._KERNELS._entries
    assert len(held) == (2 if budget > 1 else 0)


def test_a_dropped_reference_leaves_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = mmd_kernel._KernelCache(mmd_kernel._KERNEL_CACHE_BYTES)
    monkeypatch.setattr(mmd_kernel, "_KERNELS", cache)
    rng = np.random.default_rng(8)
    first = torch.from_numpy(rng.normal(size=(80, 3)))
    mmd_kernel.permutation_test(first, 1.0, rng.normal(size=(20, 3)), 10, 0)
    del first
    second = torch.from_numpy(rng.normal(size=(90, 3)))
    mmd_kernel.permutation_test(second, 1.0, rng.normal(size=(20, 3)), 10, 0)
    assert [entry[0]() is second for entry in cache._entries.values()] == [True]


def test_detectors_fitted_once_score_every_window_as_fresh_ones() -> None:
    """KS and MMD detectors keep per-reference quantities; a detector fitted anew for each
    window (nothing kept between windows) gives the same results."""
    rng = np.random.default_rng(9)
    names = ("a", "b", "c")
    reference = FeatureMatrix(names, np.round(rng.normal(size=(600, 3)), 2))
    kept_ks, kept_mmd = KSDetector().fit(reference), MMDDetector().fit(reference)
    for shift in (0.0, 0.1, 0.5, 0.0):
        window = FeatureMatrix(names, np.round(rng.normal(shift, 1.0, size=(100, 3)), 2))
        assert kept_ks.score(window) == KSDetector().fit(reference).score(window)
        mmd_kernel._KERNELS.clear()
        fresh = MMDDetector().fit(reference).score(window)
        assert kept_mmd.score(window) == fresh
