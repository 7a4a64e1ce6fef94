"""The embedding detector and known directions, on their own (seeded, both ways)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from monitor.drift.base import FeatureMatrix
from monitor.drift.directions import (
    Direction,
    DirectionError,
    DirectionSet,
    aligned,
    fit_direction,
)
from monitor.drift.embedding_mmd import EmbeddingMMDConfig, EmbeddingMMDDetector
from tests.embedding_events import DIMENSIONS, SPREAD, embeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = tuple(f"emb_{i:02d}" for i in range(DIMENSIONS))
LATERAL = np.zeros(DIMENSIONS)
LATERAL[[1, 2]] = [0.8, -0.6]


def matrix(values: np.ndarray) -> FeatureMatrix:
    return FeatureMatrix(NAMES, values)


def lateral_direction(seed: int = 100) -> Direction:
    baseline = embeddings(300, seed)
    shifted = embeddings(300, seed + 1, shift=2.0 * LATERAL)
    return fit_direction("lateral_views", "towards lateral views", baseline, shifted)


def detector(seed: int = 0) -> EmbeddingMMDDetector:
    config = EmbeddingMMDConfig(max_reference=500, seed=seed)
    return EmbeddingMMDDetector(config).fit(matrix(embeddings(500, seed)))


def test_fit_direction_recovers_the_normalised_mean_difference() -> None:
    direction = lateral_direction()
    assert np.linalg.norm(direction.vector) == pytest.approx(1.0)
    assert float(np.dot(direction.vector, LATERAL)) > 0.97
    # Baseline images spread along it by about the per-component sd there.
    expected = float(np.sqrt(np.sum((LATERAL * SPREAD) ** 2)))
    assert direction.noise_scale == pytest.approx(expected, rel=0.15)
    assert direction.separation == pytest.approx(2.0 / expected, rel=0.2)


def test_fit_direction_refuses_example_sets_it_cannot_name() -> None:
    same = embeddings(10, 1)
    with pytest.raises(DirectionError, match="same mean"):
        fit_direction("none", "nowhere", same, same.copy())
    with pytest.raises(DirectionError, match="at least 2"):
        fit_direction("few", "too few", same[:1], same)
    with pytest.raises(DirectionError, match="components"):
        fit_direction("wide", "unequal", same, same[:, :3])


def test_a_direction_set_is_bound_to_its_projection_and_round_trips() -> None:
    directions = DirectionSet(projection_fingerprint="ab" * 32, directions=(lateral_direction(),))
    assert DirectionSet.from_json(directions.to_json()) == directions
    assert directions.binds("cxr@1/pca8-" + "ab" * 6)
    assert not directions.binds("cxr@1/pca8-" + "cd" * 6)


def test_aligned_names_a_direction_only_when_clearly_aligned() -> None:
    direction = lateral_direction()
    along = 0.5 * np.asarray(direction.vector)
    assert aligned(along, (direction,), 0.5) is not None
    orthogonal = np.zeros(DIMENSIONS)
    orthogonal[5] = 1.0
    assert aligned(orthogonal + 0.1 * along, (direction,), 0.5) is None


def test_false_alarms_on_the_same_distribution_stay_at_the_nominal_rate() -> None:
    fitted = detector()
    alarms = sum(fitted.score(matrix(embeddings(100, 1000 + seed))).is_drift for seed in range(200))
    assert binomtest(alarms, 200, 0.05).pvalue > 0.01


def test_detects_a_mean_shift_and_names_the_components_that_moved() -> None:
    shift = np.zeros(DIMENSIONS)
    shift[4] = 0.7 * SPREAD[4]
    fitted = detector()
    results = [fitted.score(matrix(embeddings(100, 2000 + s, shift=shift))) for s in range(20)]
    assert sum(result.is_drift for result in results) >= 18
    assert all(result.detector == "embedding_mmd" for result in results)
    assert all(result.attributions[0].feature == "emb_04" for result in results)
    assert "emb_04: window mean" in (results[0].attributions[0].explanation or "")
    assert "sd above reference" in (results[0].attributions[0].explanation or "")


def test_a_shift_along_a_known_direction_is_named() -> None:
    direction = lateral_direction()
    other = fit_direction(
        "small_anatomy",
        "towards smaller anatomy",
        embeddings(200, 7),
        embeddings(200, 8, [1.0] * 8),
    )
    result = detector().score(
        matrix(embeddings(100, 3000, shift=0.6 * LATERAL)), (other, direction)
    )
    assert result.is_drift
    leading = result.attributions[0]
    assert leading.feature == "direction:lateral_views"
    assert leading.statistic >= 0.5
    assert leading.explanation is not None
    assert leading.explanation.startswith("window mean moved towards lateral views")
    # The components still follow, for the detail.
    assert {a.feature for a in result.attributions[1:3]} == {"emb_01", "emb_02"}


def test_an_unaligned_shift_names_components_not_a_direction() -> None:
    shift = np.zeros(DIMENSIONS)
    shift[6] = 0.8 * SPREAD[6]
    result = detector().score(matrix(embeddings(100, 4000, shift=shift)), (lateral_direction(),))
    assert result.is_drift
    assert result.attributions[0].feature == "emb_06"
    assert not any(a.feature.startswith("direction:") for a in result.attributions)
