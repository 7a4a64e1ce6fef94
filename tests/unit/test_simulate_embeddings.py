"""The simulator with an embedder: inference-event/v2 carrying the model's embedding of each
simulated image (``retrain.embedding.embed`` of the image as training reads it), the rest of the
stream exactly as without it. The model is untrained (seeded random weights), which is enough:
what is tested is that the simulator carries the projection's embedding, not what it means."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import torch

from monitor.events import InferenceEvent, InferenceEventV2, LabelEvent, to_json
from monitor.simulate import SimulationConfig, simulate
from monitor.simulate.model_scores import TrainedModelEmbedder
from retrain.embedding import EmbeddingError, embed, fit_projection_on_images
from retrain.images import fetch_image
from retrain.model import ModelSpec, TrainedModel, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(input_size=32, channels=(4, 8))
CONFIG = SimulationConfig(
    seed=12, start=datetime(2026, 2, 1, tzinfo=UTC), sites=2, studies_per_site=4, image_size=64
)


def model(seed: int) -> TrainedModel:
    torch.manual_seed(seed)
    return TrainedModel(SPEC, build_model(SPEC).state_dict(), (1.0,), (0.5,))


def test_an_embedder_turns_inference_events_into_v2_and_changes_nothing_else(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    trained = model(0)
    images = torch.rand(30, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    projection = fit_projection_on_images(trained, images, components=5)
    embedder = TrainedModelEmbedder(trained, projection, "cxr-lesion", "3")

    plain = list(simulate(CONFIG, tmp_path_factory.mktemp("plain")))
    embedded = list(simulate(CONFIG, tmp_path_factory.mktemp("embedded"), embedder=embedder))

    assert len(plain) == len(embedded)
    for before, after in zip(plain, embedded, strict=True):
        if isinstance(before, LabelEvent):
            assert to_json(after) == to_json(before)
            continue
        assert type(before) is InferenceEvent and isinstance(after, InferenceEventV2)
        assert after.model_dump(
            exclude={"schema_id", "embedding", "embedding_id", "dicom_uri"}
        ) == (before.model_dump(exclude={"schema_id", "dicom_uri"}))
        assert after.embedding_id == projection.embedding_id("cxr-lesion", "3")
        assert after.dicom_uri is not None
        image = fetch_image(after.dicom_uri, SPEC.input_size).pixels
        expected = embed(trained, projection, image[None, None])[0]
        assert after.embedding == pytest.approx(expected.tolist(), abs=1e-9)
        assert len(after.embedding) == 5


def test_an_embedder_refuses_a_projection_of_other_weights() -> None:
    images = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    projection = fit_projection_on_images(model(0), images, components=2)
    with pytest.raises(EmbeddingError, match="other weights"):
        TrainedModelEmbedder(model(1), projection, "cxr-lesion", "4")
