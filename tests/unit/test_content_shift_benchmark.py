"""The content-shift benchmark's core on tiny pools: every family is run on the same windows,
windows without a shift rarely alarm, and a lateral-view mixture is caught by the header test.

The model is untrained (seeded random weights and a projection fitted on random images): what
is tested is the benchmark's plumbing and the detectors' calibration, not what a trained model
sees (docs/benchmarks.md has that)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.content_shift import (
    DETECTORS,
    NO_SHIFT,
    Model,
    Pool,
    detector_alpha,
    evaluate,
    pool_config,
    render_pool,
)
from monitor.drift.config import EngineConfig
from monitor.simulate.content import ContentShiftKind
from retrain.embedding import fit_projection_on_images
from retrain.model import ModelSpec, TrainedModel, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(input_size=32, channels=(4, 8))
SIZE = 64
TRIALS = 30


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pool]:
    torch.manual_seed(0)
    trained = TrainedModel(SPEC, build_model(SPEC).state_dict(), (1.0,), (0.5,))
    images = torch.rand(40, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    projection = fit_projection_on_images(trained, images, components=4)
    model = Model(trained, projection, tmp_path_factory.mktemp("model"))
    return {
        "base": render_pool(model, pool_config(1, 140, None, SIZE)),
        "lateral": render_pool(model, pool_config(2, 30, ContentShiftKind.LATERAL, SIZE)),
    }


def test_each_family_is_scored_on_every_window_and_no_shift_rarely_alarms(
    pools: dict[str, Pool],
) -> None:
    shifted = {"lateral": pools["lateral"]}
    cells = evaluate(pools["base"], shifted, [40], {40: TRIALS}, 0.3, reference_size=60)

    assert [(c.scenario, c.window, c.trials) for c in cells] == [
        (NO_SHIFT, 40, TRIALS),
        ("lateral", 40, TRIALS),
    ]
    none, lateral = cells
    assert set(none.detected) == {*DETECTORS, "any"}
    # Any family at 0.05 in all: 1.5 expected of 30; 7 or more has probability about 1e-3.
    assert none.detected["any"] <= 6, none.detected
    # About 12 of the 40 studies say ViewPosition LL/LATERAL, never seen in the reference.
    assert lateral.detected["metadata_chi2"] >= 0.7 * TRIALS
    power, low, high = lateral.power("metadata_chi2")
    assert low <= power <= high


def test_the_level_splits_the_family_alpha_over_the_window_detectors_and_embeddings() -> None:
    config = EngineConfig()
    assert config.family_alpha is not None
    k = len(set(config.detectors.batch()) | {"embedding_mmd"})
    assert detector_alpha(config) == pytest.approx(config.family_alpha / k)
