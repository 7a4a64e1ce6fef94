"""The label-delay sketch: quantiles within its stated error, exact merge and subtract."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.performance.delays import DelaySketch

ERROR = 2 ** (1 / 16)
"""Half a bin: the stated bound on (1 + |quantile|) read from the sketch vs the true one."""


@pytest.mark.parametrize("seed", range(5))
def test_quantiles_are_within_half_a_bin_of_the_exact_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    delays = np.concatenate([rng.lognormal(np.log(48), 1.2, 3000), -rng.exponential(2, 300)])
    sketch = DelaySketch()
    sketch.add(delays.tolist())
    for q in (0.05, 0.5, 0.9, 0.99):
        exact = float(np.quantile(delays, q, method="inverted_cdf"))
        mine = sketch.quantile(q)
        assert mine is not None and np.sign(mine) == np.sign(exact)
        ratio = (1 + abs(mine)) / (1 + abs(exact))
        assert 1 / ERROR - 1e-9 <= ratio <= ERROR + 1e-9, (q, mine, exact)
    summary = sketch.summary()
    assert summary is not None
    assert (1 + summary["max"]) / (1 + delays.max()) <= ERROR + 1e-9


def test_merge_and_subtract_are_exact() -> None:
    rng = np.random.default_rng(7)
    first, second = rng.lognormal(3, 1, 500).tolist(), (-rng.lognormal(0, 1, 50)).tolist()
    a, b, pooled = DelaySketch(), DelaySketch(), DelaySketch()
    a.add(first)
    b.add(second)
    pooled.add(first + second)
    assert a.merge(b).counts == pooled.counts
    pooled.subtract(second)
    only_first = DelaySketch()
    only_first.add(first)
    assert pooled.counts == only_first.counts
    assert DelaySketch.from_dict(pooled.to_dict()).counts == pooled.counts


def test_subtracting_a_delay_never_added_is_refused_and_changes_nothing() -> None:
    sketch = DelaySketch()
    sketch.add([10.0, 20.0])
    with pytest.raises(ValueError, match="does not hold"):
        sketch.subtract([10.0, 5000.0])
    assert sketch.n == 2
    with pytest.raises(ValueError, match="finite"):
        sketch.add([float("nan")])
    with pytest.raises(ValueError, match="negative"):
        DelaySketch.from_dict({"3": -1})
    assert DelaySketch().summary() is None and DelaySketch().quantile(0.5) is None
