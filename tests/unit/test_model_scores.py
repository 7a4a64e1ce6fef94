"""A trained model as the simulator's scorer: the scores training would give, nothing else changed.

The model here is untrained (seeded random weights): what is tested is that the simulator
carries exactly ``retrain.model.predict``'s probabilities of the images as training reads them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from monitor.dicom import read_dataset
from monitor.events import Event, InferenceEvent, LabelEvent
from monitor.simulate import FINDING, SimulationConfig, simulate
from monitor.simulate.model_scores import TrainedModelScorer
from retrain.images import fetch_image
from retrain.model import ModelError, ModelSpec, TrainedModel, build_model, predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = ModelSpec(input_size=32, channels=(4, 8))
CONFIG = SimulationConfig(
    seed=11,
    start=datetime(2026, 2, 1, tzinfo=UTC),
    sites=2,
    studies_per_site=6,
    image_size=64,
    label_rate=0.5,
    change_site="site-02",
    change_at_index=3,
)


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    torch.manual_seed(0)
    weights = build_model(SPEC).state_dict()
    return TrainedModel(SPEC, weights, temperature=(1.3,), thresholds=(0.42,))


@pytest.fixture(scope="module")
def runs(
    model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Event], Path, list[Event]]:
    """The same config without and with the scorer, each into its own directory."""
    plain_dir, scored_dir = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("scored")
    plain = list(simulate(CONFIG, plain_dir))
    scored = list(simulate(CONFIG, scored_dir, TrainedModelScorer(model, "3")))
    return plain_dir, plain, scored_dir, scored


def test_the_scorer_gives_predict_on_the_training_image(
    model: TrainedModel, runs: tuple[Path, list[Event], Path, list[Event]]
) -> None:
    scorer = TrainedModelScorer(model, "3")
    files = sorted(runs[2].rglob("*.dcm"))
    assert files
    for path in files:
        image = fetch_image(path.as_uri(), SPEC.input_size).pixels
        expected = float(predict(model, image[None, None])[0, 0])
        ds = read_dataset(path)
        assert scorer.score(ds) == {FINDING: expected}
        assert scorer.score(ds) == {FINDING: expected}  # deterministic: eval mode, no state


def test_simulate_with_a_scorer_carries_its_scores_threshold_and_version(
    model: TrainedModel, runs: tuple[Path, list[Event], Path, list[Event]]
) -> None:
    scored_dir, scored = runs[2], runs[3]
    inferences = [event for event in scored if isinstance(event, InferenceEvent)]
    assert len(inferences) == 12
    for event in inferences:
        assert event.model_version == "3"
        assert event.prediction.threshold == pytest.approx(0.42)
        assert event.dicom_uri is not None
        image = fetch_image(event.dicom_uri, SPEC.input_size).pixels
        assert event.prediction.scores == {FINDING: float(predict(model, image[None, None])[0, 0])}
    assert {path.parent for path in scored_dir.rglob("*.dcm")} == {
        scored_dir / "site-01",
        scored_dir / "site-02",
    }


def test_a_scorer_changes_nothing_but_the_prediction_and_version(
    runs: tuple[Path, list[Event], Path, list[Event]],
) -> None:
    plain_dir, plain, scored_dir, scored = runs
    assert [type(event) for event in plain] == [type(event) for event in scored]
    changed = {"prediction", "model_version", "dicom_uri"}
    for before, after in zip(plain, scored, strict=True):
        if isinstance(before, LabelEvent):
            assert before == after
        else:
            assert isinstance(after, InferenceEvent)
            assert before.model_dump(exclude=changed) == after.model_dump(exclude=changed)
            assert before.prediction != after.prediction
    plain_files = {p.relative_to(plain_dir): p.read_bytes() for p in plain_dir.rglob("*.dcm")}
    scored_files = {p.relative_to(scored_dir): p.read_bytes() for p in scored_dir.rglob("*.dcm")}
    assert plain_files == scored_files


def test_a_scorer_needs_the_simulator_finding_and_a_valid_version(model: TrainedModel) -> None:
    other = ModelSpec(input_size=32, channels=(4, 8), findings=("effusion",))
    weights = build_model(other).state_dict()
    with pytest.raises(ModelError, match="lesion"):
        TrainedModelScorer(TrainedModel(other, weights, (1.0,), (0.5,)), "1")
    with pytest.raises(ValueError, match="model_version"):
        TrainedModelScorer(model, "not a version!")


def test_scores_of_a_multi_finding_model_name_every_finding(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=32, channels=(4, 8), findings=("effusion", FINDING))
    weights = build_model(spec).state_dict()
    scorer = TrainedModelScorer(TrainedModel(spec, weights, (1.0, 2.0), (0.3, 0.7)), "2")
    assert scorer.threshold == 0.7
    config = SimulationConfig(seed=1, start=CONFIG.start, sites=1, studies_per_site=1)
    events = list(simulate(config, tmp_path, scorer))
    assert isinstance(events[0], InferenceEvent)
    scores = events[0].prediction.scores
    assert set(scores) == {"effusion", FINDING}
    assert all(0.0 <= value <= 1.0 for value in scores.values())
