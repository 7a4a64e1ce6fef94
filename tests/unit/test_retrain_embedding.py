"""The embedding projection (retrain/embedding.py): a PCA of the penultimate features, fitted
deterministically, serialised without pickling, and refused for weights it was not fitted to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.events import EMBEDDING_MAX_LENGTH
from retrain.embedding import (
    EmbeddingError,
    Projection,
    embed,
    fit_projection,
    fit_projection_on_images,
    penultimate_features,
)
from retrain.model import ModelSpec, TrainedModel, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(input_size=16, channels=(4, 40))


def untrained(seed: int) -> TrainedModel:
    torch.manual_seed(seed)
    weights = build_model(SPEC).state_dict()
    return TrainedModel(SPEC, weights, temperature=(1.0,), thresholds=(0.5,))


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_the_features_are_what_the_head_sees() -> None:
    model = untrained(1)
    features = penultimate_features(model.module(), [images(5)])
    module = model.module()
    expected = module.features(images(5)).double().detach().numpy()  # type: ignore[operator]
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    assert features.shape == (5, 40)


def test_the_projection_is_deterministic_and_capped_at_the_contract_limit() -> None:
    model = untrained(1)
    first = fit_projection_on_images(model, images(60), components=100)
    again = fit_projection_on_images(model, images(60), components=100)
    assert first == again and first.fingerprint() == again.fingerprint()
    assert first.dimensions == EMBEDDING_MAX_LENGTH
    ratios = np.array(first.explained_variance_ratio)
    assert np.all(np.diff(ratios) <= 1e-12) and ratios.sum() <= 1 + 1e-9


def test_embeddings_are_the_pca_scores_of_the_features() -> None:
    model = untrained(2)
    projection = fit_projection_on_images(model, images(50), components=6)
    embedded = embed(model, projection, images(7, seed=3))
    features = penultimate_features(model.module(), [images(7, seed=3)])
    centred = features - np.asarray(projection.mean)
    np.testing.assert_allclose(embedded, centred @ np.asarray(projection.components).T)
    assert embedded.shape == (7, 6)
    # Orthonormal axes: the scores keep the variance the fit explained, nothing is invented.
    axes = np.asarray(projection.components)
    np.testing.assert_allclose(axes @ axes.T, np.eye(6), atol=1e-9)


def test_the_json_round_trip_is_exact_and_validated() -> None:
    projection = fit_projection_on_images(untrained(1), images(20), components=4)
    assert Projection.from_json(projection.to_json()) == projection
    broken = projection.model_dump(by_alias=True)
    broken["components"] = [[*axis, 0.0] for axis in broken["components"]]
    with pytest.raises(ValueError, match="as many values as the mean"):
        Projection.model_validate(broken)
    broken = projection.model_dump(by_alias=True)
    broken["mean"] = [float("nan"), *broken["mean"][1:]]
    with pytest.raises(ValueError, match="must be finite"):
        Projection.model_validate(broken)


def test_other_weights_are_refused() -> None:
    projection = fit_projection_on_images(untrained(1), images(20), components=4)
    with pytest.raises(EmbeddingError, match="other weights"):
        embed(untrained(2), projection, images(2))


def test_featureless_inputs_give_a_projection_that_explains_nothing() -> None:
    projection = fit_projection(untrained(1), np.zeros((6, 40)), components=3)
    assert projection.explained_variance_ratio == (0.0, 0.0, 0.0)
    with pytest.raises(EmbeddingError, match="at least two images"):
        fit_projection(untrained(1), np.zeros((1, 40)))
