"""Known embedding directions fitted from the simulator's content shifts: each one names the
shift it was fitted from when a fresh set of studies (another seed) shows that shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from monitor.drift.directions import alignments
from monitor.simulate.content import ContentShiftKind
from monitor.simulate.examples import DIRECTION_DESCRIPTIONS, content_examples, simulated_directions
from monitor.simulate.stream import RenderedStudy
from retrain.embedding import embed
from retrain.images import modality_values, to_training_image
from retrain.model import ModelSpec
from retrain.train import TrainConfig, TrainResult, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A small model: its penultimate features respond to image content, trained or not."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(64, 1, SIZE, SIZE, generator=generator)
    labels = (torch.rand(64, 1, generator=generator) > 0.5).float()
    return train(
        ModelSpec(input_size=SIZE, channels=(8,)),
        TrainConfig(max_epochs=1, patience=5, batch_size=16, device="cpu"),
        (images[:48], labels[:48]),
        (images[48:], labels[48:]),
        checkpoint_dir=Path(tmp_path_factory.mktemp("checkpoints")),
        progress=False,
    )


def _images(studies: tuple[RenderedStudy, ...]) -> npt.NDArray[np.float32]:
    return np.stack([to_training_image(modality_values(s.dataset), SIZE)[None] for s in studies])


def test_each_fresh_content_shift_points_along_the_direction_fitted_for_it(
    trained: TrainResult,
) -> None:
    assert trained.projection is not None
    known = simulated_directions(trained.model, trained.projection, n=24, seed=0)

    assert known.projection_fingerprint == trained.projection.fingerprint()
    assert {d.name for d in known.directions} == {kind.value for kind in ContentShiftKind}
    assert {d.description for d in known.directions} == set(DIRECTION_DESCRIPTIONS.values())
    for kind in ContentShiftKind:
        fresh = content_examples(kind, 24, seed=7)  # other studies than the fitted ones
        shift = embed(trained.model, trained.projection, _images(fresh.shifted)).mean(
            axis=0
        ) - embed(trained.model, trained.projection, _images(fresh.baseline)).mean(axis=0)
        ranked = alignments(shift, known.directions)
        assert ranked[0].direction.name == kind.value, (kind, ranked[:2])
        assert ranked[0].cosine > 0.5
