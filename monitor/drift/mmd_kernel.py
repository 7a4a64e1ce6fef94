"""The torch arithmetic of the MMD test (:mod:`monitor.drift.mmd`): distances, bandwidth, kernel
matrix, permutations, batched MMD^2.

Apart from ``mmd.py`` so that importing the detector's config (the service settings do, and so
every ``radsentry`` command) does not import torch, which alone takes about a second; the
detector imports this module when it first fits or scores.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch
from numpy.typing import NDArray

_DISTANCE_FLOOR = 1e-30  # alibi's clip; also keeps sigma > 0 when most reference rows repeat
_TIE_TOLERANCE = 1e-12  # MMD^2 lies in [-2, 2]; float64 rounding is far below this


def as_points(rows: NDArray[np.float64]) -> torch.Tensor:
    """The rows as a float64 tensor sharing their memory."""
    return torch.from_numpy(rows)


def median_sigma(points: torch.Tensor) -> float:
    """alibi's ``sigma_median`` for a sample against itself (rule in mmd.py's docstring)."""
    distances = squared_distances(points, points)
    n = distances.shape[0]
    median_index = n + (n * n - n) // 2 - 1
    # kthvalue is 1-based and selects in linear time what sort()[median_index] would give.
    median = torch.kthvalue(distances.flatten(), median_index + 1).values
    return float((0.5 * median) ** 0.5)


def permutation_test(
    points: torch.Tensor,
    sigma: float,
    window: NDArray[np.float64],
    n_permutations: int,
    seed: int,
) -> tuple[float, float]:
    """Observed MMD^2 and its permutation p-value (alibi's definition, see mmd.py's docstring)."""
    window_points = torch.from_numpy(window)
    n_ref, n_window = len(points), len(window_points)
    kernel = _KERNELS.take(points, sigma, n_window)
    try:
        _fill_window(kernel, points, window_points, sigma)
        masks = _reference_masks(n_ref, n_window, n_permutations, seed)
        mmd2 = _batched_mmd2(kernel, masks, n_ref, n_window)
    finally:
        _KERNELS.give_back(points, sigma, kernel)
    observed, permuted = mmd2[0], mmd2[1:]
    p_value = (permuted >= observed - _TIE_TOLERANCE).double().mean()
    return float(observed), float(p_value)


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, computed and clipped as alibi-detect does."""
    x_norms = x.pow(2).sum(dim=1, keepdim=True)
    y_norms = y.pow(2).sum(dim=1, keepdim=True)
    distances = torch.addmm(y_norms.T, x, y.T, alpha=-2.0).add_(x_norms)
    return distances.clamp_min_(_DISTANCE_FLOOR)


def _gaussian_kernel(squared_distances: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-squared_distances / (2.0 * sigma**2))


def _zero_diagonal(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.fill_diagonal_(0.0)


def _reference_block(points: torch.Tensor, sigma: float) -> torch.Tensor:
    """The reference rows' kernel block, diagonal zeroed."""
    return _zero_diagonal(_gaussian_kernel(squared_distances(points, points), sigma))


def _fill_window(
    kernel: torch.Tensor, points: torch.Tensor, window: torch.Tensor, sigma: float
) -> None:
    """Write the window's blocks into the (n + m) x (n + m) kernel matrix whose reference
    block (rows and columns ``:n``) is filled: the matrix ``torch.cat`` of the four blocks
    gave, value for value."""
    n_ref = len(points)
    cross = _gaussian_kernel(squared_distances(points, window), sigma)
    kernel[:n_ref, n_ref:] = cross
    kernel[n_ref:, :n_ref] = cross.T
    kernel[n_ref:, n_ref:] = _zero_diagonal(
        _gaussian_kernel(squared_distances(window, window), sigma)
    )


class _KernelCache:
    """Joint kernel matrices kept between windows, at most ``budget`` bytes, least recently
    used dropped first.

    Every window of a stream is tested against the same reference, whose block of the kernel
    matrix (n x n of the (n + m) x (n + m)) is the same each time: computing it and copying it
    into a new matrix cost about a third of a window's test at 1,200 reference rows
    (docs/benchmarks.md, "Labelled replay: vectorised statistics"). A stream's matrix is kept
    here with its reference block filled and only the window's blocks are rewritten, so the
    numbers are those of a matrix built anew. The budget bounds what a consumer of many
    streams holds (a 2,000-row reference and a 100-row window make 35 MB): past it, the least
    recently tested reference is computed again when its next window comes, as before the
    cache. A matrix is taken out while a test uses it, so two threads testing against one
    reference never share one.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[int, tuple[weakref.ref[torch.Tensor], float, torch.Tensor]]
        self._entries = OrderedDict()
        self._lock = threading.Lock()

    def take(self, points: torch.Tensor, sigma: float, n_window: int) -> torch.Tensor:
        """A kernel matrix for ``points`` and a window of ``n_window`` rows, reference block
        filled (the window's blocks hold anything)."""
        n_ref = len(points)
        with self._lock:
            entry = self._entries.pop(id(points), None)
        kernel = torch.empty(n_ref + n_window, n_ref + n_window, dtype=torch.float64)
        if entry is None or entry[0]() is not points or entry[1] != sigma:
            kernel[:n_ref, :n_ref] = _reference_block(points, sigma)
            return kernel
        kept = entry[2]
        if kept.shape == kernel.shape:
            return kept
        kernel[:n_ref, :n_ref] = kept[:n_ref, :n_ref]  # another window size: the block moves
        return kernel

    def give_back(self, points: torch.Tensor, sigma: float, kernel: torch.Tensor) -> None:
        """Keep ``kernel`` (its reference block as :meth:`take` gave it) for the next window."""
        size = kernel.element_size() * kernel.nelement()
        if size > self.budget:
            return
        key = id(points)
        with self._lock:
            for gone in [k for k, entry in self._entries.items() if entry[0]() is None]:
                del self._entries[gone]  # references no detector holds any more
            self._entries.pop(key, None)
            self._entries[key] = (weakref.ref(points), sigma, kernel)
            held = sum(
                entry[2].element_size() * entry[2].nelement() for entry in self._entries.values()
            )
            while held > self.budget:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                held -= dropped.element_size() * dropped.nelement()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_KERNEL_CACHE_BYTES = 128 * 2**20
"""Three streams of 2,000 reference rows and 100-row windows, or ten of 1,000 rows."""
_KERNELS = _KernelCache(_KERNEL_CACHE_BYTES)


@functools.lru_cache(maxsize=16)
def _reference_masks(n_ref: int, n_window: int, n_permutations: int, seed: int) -> torch.Tensor:
    """0/1 rows marking which pooled rows play the reference: the observed split, then one row
    per permutation.

    The loop only draws indices, one ``randperm`` per permutation exactly as alibi-detect does,
    so that both see the same permutations for the same seed; the statistics are batched.
    Cached: a stream's windows mostly have the same sizes, and drawing the permutations cost
    about as much as the kernel matrix. Callers must not modify the returned tensor.
    """
    total = n_ref + n_window
    generator = torch.Generator().manual_seed(seed)
    orders = torch.stack(
        [torch.arange(total)]
        + [torch.randperm(total, generator=generator) for _ in range(n_permutations)]
    )
    masks = torch.zeros(n_permutations + 1, total, dtype=torch.float64)
    masks.scatter_(1, orders[:, :n_ref], 1.0)
    return masks


def _batched_mmd2(
    kernel: torch.Tensor, reference_masks: torch.Tensor, n_ref: int, n_window: int
) -> torch.Tensor:
    """Unbiased MMD^2 for every row of ``reference_masks`` from one matrix product.

    With ``a`` the 0/1 reference mask and ``b = 1 - a``, the block sums are quadratic forms:
    ``sum(K_xx) = a K a``, ``sum(K_yy) = b K b``, ``sum(K_xy) = a K b``; the zeroed diagonal
    already removes the ``i == j`` terms the unbiased estimator leaves out.
    """
    window_masks = 1.0 - reference_masks
    kernel_a = reference_masks @ kernel  # K is symmetric, so row p holds (K a_p)^T
    kernel_b = kernel.sum(dim=0) - kernel_a
    sum_xx = (kernel_a * reference_masks).sum(dim=1)
    sum_yy = (kernel_b * window_masks).sum(dim=1)
    sum_xy = (kernel_a * window_masks).sum(dim=1)
    return (
        sum_xx / (n_ref * (n_ref - 1))
        + sum_yy / (n_window * (n_window - 1))
        - 2.0 * sum_xy / (n_ref * n_window)
    )
