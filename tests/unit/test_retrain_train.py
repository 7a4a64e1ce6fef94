"""Training library: learning, determinism, resume, early stopping, calibration, spec checks.

torch runs on one thread here (module-wide, set before any training): the test box is shared,
small convolutions gain nothing from more, and bit-identical weights need the same thread
count in the runs compared.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]
from torch import Tensor

from benchmarks.bench_train import synthetic_radiographs
from retrain.config import TrainConfig
from retrain.model import (
    IncompatibleModelError,
    ModelSpec,
    TrainedModel,
    build_model,
    calibrate,
    check_compatible,
    choose_thresholds,
    predict,
    register_architecture,
)
from retrain.train import (
    CHECKPOINT_NAME,
    EpochMetrics,
    ResumeError,
    TrainError,
    TrainingStopped,
    resolve_device,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Data = tuple[Tensor, Tensor]
SPEC = ModelSpec(input_size=64, channels=(8, 16, 16))
FAST = TrainConfig(max_epochs=4, patience=4, batch_size=16, learning_rate=3e-3, device="cpu")


@pytest.fixture(scope="module")
def easy() -> tuple[Data, Data]:
    """Rendered radiographs with lesions 6x the simulator's contrast: an easy task."""
    return (
        synthetic_radiographs(240, 64, seed=1, lesion_gain=6.0),
        synthetic_radiographs(120, 64, seed=2, lesion_gain=6.0),
    )


@pytest.fixture(scope="module")
def uninterrupted(
    easy: tuple[Data, Data], tmp_path_factory: pytest.TempPathFactory
) -> TrainedModel:
    directory = tmp_path_factory.mktemp("uninterrupted")
    return train(SPEC, FAST, *easy, checkpoint_dir=directory, progress=False).model


def assert_same_weights(first: TrainedModel, second: TrainedModel) -> None:
    assert first.state_dict.keys() == second.state_dict.keys()
    for name, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[name]), name


def test_the_model_learns_an_easy_task(easy: tuple[Data, Data], tmp_path: Path) -> None:
    result = train(SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=False)
    assert len(result.history) == 4
    best = result.history[result.best_epoch - 1]
    assert best.val_auroc[0] is not None and best.val_auroc[0] > 0.8
    probabilities = predict(result.model, easy[1][0])
    assert probabilities.shape == (120, 1)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert result.config_fingerprint == FAST.fingerprint()
    assert result.spec_fingerprint == SPEC.fingerprint()
    assert result.device == "cpu"


def test_the_same_seed_gives_identical_weights(
    easy: tuple[Data, Data], uninterrupted: TrainedModel, tmp_path: Path
) -> None:
    again = train(SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=True).model
    assert_same_weights(uninterrupted, again)
    other_seed = train(
        SPEC,
        FAST.model_copy(update={"seed": 1}),
        *easy,
        checkpoint_dir=tmp_path / "other",
        progress=False,
    ).model
    assert not torch.equal(other_seed.state_dict["head.weight"], again.state_dict["head.weight"])


class Died(Exception):
    """Stands for the job being killed."""


def test_resume_reaches_the_uninterrupted_weights(
    easy: tuple[Data, Data], uninterrupted: TrainedModel, tmp_path: Path
) -> None:
    def die_after_two(metrics: EpochMetrics) -> None:
        if metrics.epoch == 2:
            raise Died

    with pytest.raises(Died):
        train(
            SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=False, on_epoch_end=die_after_two
        )
    assert not list(tmp_path.glob("*.partial"))
    resumed = train(SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=False, resume=True)
    assert resumed.resumed_from_epoch == 2
    assert [m.epoch for m in resumed.history] == [1, 2, 3, 4]
    assert_same_weights(uninterrupted, resumed.model)


def test_a_stop_asked_before_training_stops_it_after_one_batch(
    easy: tuple[Data, Data], tmp_path: Path
) -> None:
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return True

    with pytest.raises(TrainingStopped, match="after 0 of at most 4 epochs") as stopped:
        train(SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=False, should_stop=stop)
    assert stopped.value.epochs_done == 0 and len(asked) == 1  # one batch, then the stop
    assert not (tmp_path / CHECKPOINT_NAME).exists()  # nothing finished, nothing to resume


def test_a_stop_part_way_through_an_epoch_resumes_to_the_uninterrupted_weights(
    easy: tuple[Data, Data], uninterrupted: TrainedModel, tmp_path: Path
) -> None:
    """Ctrl-C in the demo while a model trains: the epoch in progress is dropped, the last
    finished one is checkpointed, and the resumed run ends where an unstopped one does."""
    finished: list[int] = []
    asked_since = itertools.count()

    def four_batches_into_the_third_epoch() -> bool:
        # Asked after epoch 2 ends (0: go on), then after each batch of epoch 3.
        return len(finished) == 2 and next(asked_since) == 4

    with pytest.raises(TrainingStopped) as stopped:
        train(
            SPEC,
            FAST,
            *easy,
            checkpoint_dir=tmp_path,
            progress=False,
            on_epoch_end=lambda metrics: finished.append(metrics.epoch),
            should_stop=four_batches_into_the_third_epoch,
        )
    assert stopped.value.epochs_done == 2 and finished == [1, 2]
    resumed = train(SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=False, resume=True)
    assert resumed.resumed_from_epoch == 2
    assert_same_weights(uninterrupted, resumed.model)


def test_resume_may_extend_max_epochs(
    easy: tuple[Data, Data], uninterrupted: TrainedModel, tmp_path: Path
) -> None:
    two = FAST.model_copy(update={"max_epochs": 2})
    train(SPEC, two, *easy, checkpoint_dir=tmp_path, progress=False)
    resumed = train(SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=False, resume=True)
    assert_same_weights(uninterrupted, resumed.model)


def test_resume_refuses_another_configuration_or_spec(
    easy: tuple[Data, Data], tmp_path: Path
) -> None:
    one = FAST.model_copy(update={"max_epochs": 1})
    train(SPEC, one, *easy, checkpoint_dir=tmp_path, progress=False)
    other_config = one.model_copy(update={"learning_rate": 1e-2})
    with pytest.raises(ResumeError, match="configuration"):
        train(SPEC, other_config, *easy, checkpoint_dir=tmp_path, progress=False, resume=True)
    other_spec = SPEC.model_copy(update={"pooling": "avg"})
    with pytest.raises(ResumeError, match="spec"):
        train(other_spec, one, *easy, checkpoint_dir=tmp_path, progress=False, resume=True)


def test_resume_accepts_a_checkpoint_written_before_a_field_was_added(
    easy: tuple[Data, Data], tmp_path: Path
) -> None:
    # A checkpoint from before average_from_epoch existed: its stored config lacks the key.
    one = FAST.model_copy(update={"max_epochs": 1})
    train(SPEC, one, *easy, checkpoint_dir=tmp_path, progress=False)
    checkpoint = next(tmp_path.rglob("*.pt"))
    payload = torch.load(checkpoint, weights_only=True)
    del payload["config"]["average_from_epoch"]
    torch.save(payload, checkpoint)
    resumed = train(SPEC, FAST, *easy, checkpoint_dir=tmp_path, progress=False, resume=True)
    assert resumed.resumed_from_epoch == 1
    averaged = FAST.model_copy(update={"average_from_epoch": 1})
    with pytest.raises(ResumeError, match="configuration"):
        train(SPEC, averaged, *easy, checkpoint_dir=tmp_path, progress=False, resume=True)


def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path: Path) -> None:
    # Labels are noise: the validation loss soon rises, and the best epoch is an early one.
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(160, 1, 32, 32, generator=generator)
    labels = (torch.rand(160, 1, generator=generator) < 0.5).float()
    spec = ModelSpec(input_size=32, channels=(8, 16))
    config = TrainConfig(max_epochs=30, patience=2, learning_rate=1e-2, batch_size=16, device="cpu")
    result = train(
        spec,
        config,
        (images[:80], labels[:80]),
        (images[80:], labels[80:]),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    losses = [m.val_loss for m in result.history]
    assert result.stopped_early
    assert len(losses) == result.best_epoch + config.patience < config.max_epochs
    assert result.best_epoch == int(np.argmin(losses)) + 1
    logits = result.model.module()(images[80:]).detach()
    restored = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[80:])
    assert float(restored) == pytest.approx(losses[result.best_epoch - 1], abs=1e-5)


def test_early_stopping_watches_from_monitor_from_epoch(tmp_path: Path) -> None:
    """The noise task of the test above: watched from epoch 1 it stops soon after an early
    minimum. Watched from the epoch after that minimum, the same epochs run (the same
    trajectory) and on: the best epoch is the loss minimum from there, and training stops
    ``patience`` epochs after it. Watched from beyond ``max_epochs``, nothing stops it and the
    last epoch's weights are returned."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(160, 1, 32, 32, generator=generator)
    labels = (torch.rand(160, 1, generator=generator) < 0.5).float()
    spec = ModelSpec(input_size=32, channels=(8, 16))
    data = {"train_data": (images[:80], labels[:80]), "val_data": (images[80:], labels[80:])}
    plain = TrainConfig(max_epochs=30, patience=2, learning_rate=1e-2, batch_size=16, device="cpu")
    early = train(spec, plain, **data, checkpoint_dir=tmp_path / "plain", progress=False)
    watched = plain.model_copy(update={"monitor_from_epoch": early.best_epoch + 1})
    later = train(spec, watched, **data, checkpoint_dir=tmp_path / "watched", progress=False)
    same = zip(early.history, later.history, strict=False)
    assert all((a.train_loss, a.val_loss) == (b.train_loss, b.val_loss) for a, b in same)
    losses = [m.val_loss for m in later.history]
    start = watched.monitor_from_epoch
    assert later.best_epoch == start + int(np.argmin(losses[start - 1 :]))
    assert later.best_epoch > early.best_epoch
    assert len(losses) == later.best_epoch + plain.patience or len(losses) == plain.max_epochs
    never = plain.model_copy(update={"max_epochs": 3, "monitor_from_epoch": 5})
    last = train(spec, never, **data, checkpoint_dir=tmp_path / "never", progress=False)
    assert not last.stopped_early and len(last.history) == 3 and last.best_epoch == 3
    logits = last.model.module()(images[80:]).detach()
    restored = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[80:])
    assert float(restored) == pytest.approx(last.history[-1].val_loss, abs=1e-5)


AVERAGED = FAST.model_copy(update={"average_from_epoch": 3})


def test_weight_averaging_returns_the_mean_of_the_last_epochs_weights(
    easy: tuple[Data, Data], tmp_path: Path
) -> None:
    # The epoch-3 and epoch-4 weights, from the checkpoints of plain runs (same seed, same
    # trajectory: averaging only reads the weights).
    epoch_weights = []
    for epochs in (3, 4):
        config = FAST.model_copy(update={"max_epochs": epochs})
        folder = tmp_path / f"plain-{epochs}"
        train(SPEC, config, *easy, checkpoint_dir=folder, progress=False)
        epoch_weights.append(torch.load(folder / CHECKPOINT_NAME, weights_only=True)["model"])
    result = train(SPEC, AVERAGED, *easy, checkpoint_dir=tmp_path / "avg", progress=False)
    averaged = result.model.state_dict
    parameters = dict(build_model(SPEC).named_parameters())
    for name in parameters:
        mean = (epoch_weights[0][name] + epoch_weights[1][name]) / 2
        torch.testing.assert_close(averaged[name], mean)
    # Batch-norm statistics are recomputed for the averaged weights, not kept from an epoch.
    running = [name for name in averaged if name.endswith("running_mean")]
    assert running
    for name in running:
        assert not torch.equal(averaged[name], epoch_weights[1][name])
    auroc = roc_auc_score(easy[1][1][:, 0].numpy(), predict(result.model, easy[1][0])[:, 0])
    assert auroc > 0.8


def test_resume_with_weight_averaging_reaches_the_uninterrupted_weights(
    easy: tuple[Data, Data], tmp_path: Path
) -> None:
    uninterrupted = train(SPEC, AVERAGED, *easy, checkpoint_dir=tmp_path / "a", progress=False)

    def die_after_three(metrics: EpochMetrics) -> None:
        if metrics.epoch == 3:
            raise Died

    folder = tmp_path / "b"
    with pytest.raises(Died):
        train(
            SPEC,
            AVERAGED,
            *easy,
            checkpoint_dir=folder,
            progress=False,
            on_epoch_end=die_after_three,
        )
    resumed = train(SPEC, AVERAGED, *easy, checkpoint_dir=folder, progress=False, resume=True)
    assert resumed.resumed_from_epoch == 3
    assert_same_weights(uninterrupted.model, resumed.model)


def test_temperature_scaling_fixes_overconfidence() -> None:
    generator = torch.Generator().manual_seed(3)
    true_logits = torch.randn(2000, 2, generator=generator) * 1.5
    labels = (torch.rand(2000, 2, generator=generator) < torch.sigmoid(true_logits)).float()
    temperature, report = calibrate(true_logits * torch.tensor([3.0, 0.5]), labels)
    assert temperature[0] == pytest.approx(3.0, rel=0.15)
    assert temperature[1] == pytest.approx(0.5, rel=0.15)
    for before, after in zip(report.nll_before, report.nll_after, strict=True):
        assert after < before
    for before, after in zip(report.ece_before, report.ece_after, strict=True):
        assert after < before


def test_calibration_never_worsens_validation_nll(easy: tuple[Data, Data], tmp_path: Path) -> None:
    config = FAST.model_copy(update={"max_epochs": 2})
    report = train(SPEC, config, *easy, checkpoint_dir=tmp_path, progress=False).calibration
    assert report.nll_after[0] <= report.nll_before[0]
    assert report.ece_after[0] <= report.ece_before[0] + 0.02


def test_thresholds_follow_the_policy() -> None:
    scores = np.linspace(0.0, 1.0, 101)[:, None]
    labels = (scores > 0.3).astype(float)
    assert choose_thresholds(scores, labels, "youden")[0] == pytest.approx(0.31)
    sensitivity = choose_thresholds(scores, labels, "sensitivity", target_sensitivity=0.5)[0]
    assert 0.3 < sensitivity <= 0.66
    assert choose_thresholds(scores, np.zeros_like(scores), "youden") == (0.5,)


@register_architecture("test_linear")
def _test_linear(spec: ModelSpec) -> torch.nn.Module:
    size = spec.input_size
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size * size, len(spec.findings)))


@pytest.mark.parametrize(
    "change",
    [
        {"architecture": "test_linear"},
        {"findings": ("lesion", "effusion")},
        {"input_size": 128},
        {"channels": (8, 16, 32)},
        {"normalise_std": 0.3},
    ],
)
def test_check_compatible_refuses_a_changed_family(change: dict[str, object]) -> None:
    check_compatible(SPEC, ModelSpec(input_size=64, channels=(8, 16, 16)))
    candidate = ModelSpec.model_validate(SPEC.model_dump() | change)
    with pytest.raises(IncompatibleModelError, match=next(iter(change))):
        check_compatible(SPEC, candidate)


def test_a_spec_names_a_registered_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelSpec(architecture="resnet-nobody-registered")


def test_build_model_gives_one_logit_per_finding() -> None:
    spec = ModelSpec(input_size=32, channels=(4, 8), findings=("lesion", "effusion", "nodule"))
    assert build_model(spec)(torch.rand(5, 1, 32, 32)).shape == (5, 3)


def test_trained_model_round_trips_through_a_file(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=32, channels=(4, 8), findings=("lesion", "effusion"))
    weights = build_model(spec).state_dict()
    bundle = TrainedModel(spec, weights, temperature=(1.5, 0.8), thresholds=(0.3, 0.6))
    bundle.save(tmp_path / "model.pt")
    loaded = TrainedModel.load(tmp_path / "model.pt")
    assert loaded.spec == spec and loaded.temperature == (1.5, 0.8)
    images = torch.rand(4, 1, 32, 32)
    np.testing.assert_array_equal(predict(bundle, images), predict(loaded, images))


def test_cuda_is_chosen_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(TrainError, match="not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
