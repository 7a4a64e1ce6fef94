"""Seeded, resumable training of a model family member, with calibration and a threshold.

``train`` fits the weights (AdamW, binary cross-entropy per finding), stops early on the
validation loss and restores the best epoch's weights (or, with ``average_from_epoch``, returns
the average of the weights from that epoch on: stochastic weight averaging), fits one
temperature per finding on the validation logits, and picks each finding's operating threshold
on the calibrated validation probabilities. A checkpoint (weights, optimizer, early-stopping
state, weight average, history, RNG states) is written atomically after every
``checkpoint_every`` epochs, and ``resume=True`` continues from it to the same weights an
uninterrupted run reaches (on the same device). ``should_stop`` (asked between batches) ends
training early with :class:`TrainingStopped`; a stopped run resumes from its checkpoint like a
killed one. The calibration and threshold fits live beside the bundle in :mod:`retrain.model`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError
from rich.progress import Progress
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from retrain.config import TrainConfig
from retrain.embedding import Projection, fit_projection, penultimate_features
from retrain.model import (
    CalibrationReport,
    ModelSpec,
    TrainedModel,
    build_model,
    calibrate,
    choose_thresholds,
)

CHECKPOINT_NAME: Final = "checkpoint.pt"
Sample = tuple[Tensor, Tensor]
TrainData = Dataset[Sample] | tuple[Tensor, Tensor]
"""A torch Dataset of (image float32 [1, H, W], labels float32 [F]), or the two stacked tensors."""


class TrainError(Exception):
    """Base class of the training library's errors."""


class ResumeError(TrainError):
    """The checkpoint belongs to another spec or another training configuration."""


class TrainingStopped(TrainError):
    """``should_stop`` asked training to stop before it finished: nothing was returned.

    ``epochs_done`` epochs were finished; an epoch stopped part-way is dropped. The checkpoint
    holds the last finished epoch (with ``checkpoint_every`` above 1, the last one written), so
    ``resume=True`` continues from there to the weights an uninterrupted run reaches."""

    def __init__(self, epochs_done: int, max_epochs: int) -> None:
        super().__init__(f"training stopped after {epochs_done} of at most {max_epochs} epochs")
        self.epochs_done = epochs_done
        self.max_epochs = max_epochs


@dataclass(frozen=True, slots=True)
class EpochMetrics:
    """One epoch's numbers, as the tracker logs them."""

    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: tuple[float | None, ...]
    """Per finding; None where the validation set lacks positives or negatives."""
    seconds: float
    """Wall time of the epoch's training pass (validation excluded)."""


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A training run's outcome: the trained bundle and everything needed to log it."""

    model: TrainedModel
    history: tuple[EpochMetrics, ...]
    best_epoch: int
    stopped_early: bool
    calibration: CalibrationReport
    device: str
    config_fingerprint: str
    spec_fingerprint: str
    resumed_from_epoch: int | None = None
    extra: Mapping[str, float] = field(default_factory=dict)
    projection: Projection | None = None
    """PCA of the trained model's penultimate features on its training images: what the edge
    projects ``inference-event/v2`` embeddings with (``retrain.embedding``)."""


@dataclass
class _State:
    """Everything the loop carries from epoch to epoch, and what a checkpoint restores."""

    epoch: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    stale_epochs: int = 0
    stopped_early: bool = False
    averaged: dict[str, Tensor] = field(default_factory=dict)
    """The running weight average's state (``AveragedModel``), once averaging has begun."""
    history: list[EpochMetrics] = field(default_factory=list)


def resolve_device(setting: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """ "auto" is CUDA when available, else the CPU; "cuda" without CUDA is an error."""
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if setting == "cuda":
        raise TrainError("device 'cuda' was asked for but CUDA is not available")
    return torch.device("cpu")


@dataclass(frozen=True)
class _Run:
    """What every epoch of one run works with."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    spec_fingerprint: str
    device: torch.device
    checkpoint: Path


def train(
    spec: ModelSpec,
    config: TrainConfig,
    train_data: TrainData,
    val_data: TrainData,
    *,
    checkpoint_dir: Path,
    progress: bool = True,
    init_state: Mapping[str, Tensor] | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``spec`` on ``train_data``, early-stop and calibrate on ``val_data``.

    ``init_state`` warm-starts from existing weights (e.g. the deployed model's). With
    ``resume`` the run continues from ``checkpoint_dir``'s checkpoint when there is one (its
    spec and configuration, ``max_epochs`` aside, must match; without one it starts afresh).
    ``on_epoch_end`` is called after each epoch, once its checkpoint is written.
    ``should_stop`` is asked after every batch (a batch of this family takes well under a
    second on a CPU); when it answers True, :class:`TrainingStopped` is raised.
    """
    with _deterministic():
        run = _start(spec, config, checkpoint_dir / CHECKPOINT_NAME, init_state)
        state, resumed_from = _State(), None
        if resume and run.checkpoint.exists():
            state = _load_checkpoint(run)
            resumed_from = state.epoch
        val_loader = _loader(val_data, config, shuffle_epoch=None)
        hooks = _Hooks(on_epoch_end, should_stop or _never)
        _run_epochs(run, state, train_data, val_loader, progress, hooks)
        if state.averaged:
            run.model.load_state_dict(_averaged_weights(run, state, train_data))
        else:
            run.model.load_state_dict(state.best_state or run.model.state_dict())
            state.best_epoch = state.best_epoch or state.epoch
        logits, labels = _predict_logits(run.model, val_loader, run.device)
    temperature, report = calibrate(logits, labels)
    calibrated = torch.sigmoid(logits / torch.tensor(temperature)).numpy()
    thresholds = choose_thresholds(
        calibrated, labels.numpy(), config.threshold_policy, config.target_sensitivity
    )
    weights = {name: value.detach().cpu().clone() for name, value in run.model.state_dict().items()}
    trained = TrainedModel(spec, weights, temperature, thresholds)
    return TrainResult(
        model=trained,
        history=tuple(state.history),
        best_epoch=state.best_epoch,
        stopped_early=state.stopped_early,
        calibration=report,
        device=str(run.device),
        config_fingerprint=config.fingerprint(),
        spec_fingerprint=spec.fingerprint(),
        resumed_from_epoch=resumed_from,
        projection=_fit_projection(run, trained, train_data),
    )


def _fit_projection(run: _Run, trained: TrainedModel, train_data: TrainData) -> Projection:
    """The embedding projection, fitted on the training images with the final weights (one
    forward pass in eval mode, cheaper than an epoch)."""
    batches = (images for images, _ in _loader(train_data, run.config, shuffle_epoch=None))
    features = penultimate_features(run.model, batches, run.device)
    return fit_projection(trained, features)


def _start(
    spec: ModelSpec, config: TrainConfig, checkpoint: Path, init_state: Mapping[str, Tensor] | None
) -> _Run:
    """Seed, build the model (optionally warm-started) and its optimizer on the device."""
    device = resolve_device(config.device)
    _seed_everything(config.seed)
    model = build_model(spec)
    if init_state is not None:
        model.load_state_dict(dict(init_state))
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    return _Run(model, optimizer, config, spec.fingerprint(), device, checkpoint)


def _never() -> bool:
    return False


@dataclass(frozen=True)
class _Hooks:
    """The caller's view into the loop: told each epoch's numbers, asked whether to stop."""

    on_epoch_end: Callable[[EpochMetrics], None] | None
    should_stop: Callable[[], bool]

    def check(self) -> None:
        """Between two batches: :class:`_StoppedPartWay` when the caller asks to stop."""
        if self.should_stop():
            raise _StoppedPartWay


class _StoppedPartWay(Exception):
    """Inside an epoch's passes; :func:`_run_epochs` turns it into :class:`TrainingStopped`."""


def _run_epochs(
    run: _Run,
    state: _State,
    train_data: TrainData,
    val_loader: DataLoader[Sample],
    progress: bool,
    hooks: _Hooks,
) -> None:
    """Epochs from ``state.epoch + 1`` until ``max_epochs``, early stopping or a stop."""
    config = run.config
    with Progress(disable=not progress, transient=True) as bar:
        while state.epoch < config.max_epochs and not state.stopped_early:
            epoch = state.epoch + 1
            loader = _loader(train_data, config, shuffle_epoch=epoch)
            task = bar.add_task(f"epoch {epoch}/{config.max_epochs}", total=len(loader))
            started = time.perf_counter()
            try:
                train_loss = _train_epoch(run, loader, partial(bar.advance, task), hooks)
                seconds = time.perf_counter() - started
                logits, labels = _predict_logits(run.model, val_loader, run.device, hooks)
            except _StoppedPartWay:  # the epoch is dropped; the checkpoint is the last one's
                raise TrainingStopped(state.epoch, config.max_epochs) from None
            bar.remove_task(task)
            metrics = EpochMetrics(
                epoch, train_loss, _bce(logits, labels), _aurocs(logits, labels), seconds
            )
            _record(state, metrics, run.model, config)
            finished = state.stopped_early or state.epoch == config.max_epochs
            saved = finished or state.epoch % config.checkpoint_every == 0
            if saved:
                _save_checkpoint(run, state)
            if hooks.on_epoch_end is not None:
                hooks.on_epoch_end(metrics)
            if not finished and hooks.should_stop():
                if not saved:  # a stopped run resumes from its last finished epoch
                    _save_checkpoint(run, state)
                raise TrainingStopped(state.epoch, config.max_epochs)


def _record(state: _State, metrics: EpochMetrics, model: nn.Module, config: TrainConfig) -> None:
    """Append the epoch and update the early-stopping bookkeeping and the weight average."""
    state.epoch = metrics.epoch
    start = config.average_from_epoch
    if start is not None and metrics.epoch >= start:
        averaged = AveragedModel(model)
        if state.averaged:
            averaged.load_state_dict(state.averaged)
        averaged.update_parameters(model)
        state.averaged = {k: v.detach().cpu().clone() for k, v in averaged.state_dict().items()}
    state.history.append(metrics)
    if metrics.epoch < config.monitor_from_epoch:
        return
    if metrics.val_loss < state.best_val_loss - config.min_delta:
        state.best_val_loss = metrics.val_loss
        state.best_epoch = metrics.epoch
        state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.stale_epochs = 0
    else:
        state.stale_epochs += 1
        state.stopped_early = state.stale_epochs >= config.patience


def _averaged_weights(run: _Run, state: _State, train_data: TrainData) -> dict[str, Tensor]:
    """The weight average, with batch-norm statistics recomputed on the training images (the
    averaged weights never ran with the last epoch's running statistics)."""
    averaged = AveragedModel(run.model)
    averaged.load_state_dict(state.averaged)
    loader = _loader(train_data, run.config, shuffle_epoch=None)
    update_bn(loader, averaged, run.device)
    return dict(averaged.module.state_dict())


def _train_epoch(
    run: _Run, loader: DataLoader[Sample], advance: Callable[[], None], hooks: _Hooks
) -> float:
    """One pass over the training data; the mean per-image loss."""
    model, optimizer, device = run.model, run.optimizer, run.device
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    total, count = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(images)
        count += len(images)
        advance()
        hooks.check()
    return total / max(count, 1)


def _predict_logits(
    model: nn.Module, loader: DataLoader[Sample], device: torch.device, hooks: _Hooks | None = None
) -> tuple[Tensor, Tensor]:
    """All logits and labels of ``loader``, on the CPU, in eval mode."""
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, batch_labels in loader:
            logits.append(model(images.to(device)).float().cpu())
            labels.append(batch_labels.float())
            if hooks is not None:
                hooks.check()
    return torch.cat(logits), torch.cat(labels)


def _bce(logits: Tensor, labels: Tensor) -> float:
    return float(nn.functional.binary_cross_entropy_with_logits(logits, labels))


def _aurocs(logits: Tensor, labels: Tensor) -> tuple[float | None, ...]:
    """AUROC per finding (sklearn), None where one class is missing."""
    aurocs: list[float | None] = []
    for column in range(labels.shape[1]):
        truth = labels[:, column].numpy()
        if truth.min() == truth.max():
            aurocs.append(None)
        else:
            aurocs.append(float(roc_auc_score(truth, logits[:, column].numpy())))
    return tuple(aurocs)


def _loader(data: TrainData, config: TrainConfig, shuffle_epoch: int | None) -> DataLoader[Sample]:
    """Single-process loader; training order is a function of (seed, epoch) alone."""
    if isinstance(data, Dataset):
        dataset: Dataset[Sample] = data
    else:
        dataset = cast(Dataset[Sample], TensorDataset(*data))
    if shuffle_epoch is None:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + shuffle_epoch)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)


def _seed_everything(seed: int) -> None:
    # numpy and random too: a Dataset's own augmentation may draw from them.
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration of training (cheap for this family)."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_benchmark


def _resumable_config(config: TrainConfig) -> dict[str, object]:
    """The configuration a resume must match: all of it but ``max_epochs``."""
    return config.model_dump(mode="json", exclude={"max_epochs"})


def _same_training(saved: dict[str, object], config: TrainConfig) -> bool:
    """Whether a checkpoint's configuration is ``config`` but for ``max_epochs``.

    Compared as configurations, not as stored dicts, so a checkpoint written before a field
    was added (``average_from_epoch``) resumes when the field is at its default: it trained
    the same way.
    """
    try:
        restored = TrainConfig.model_validate({**saved, "max_epochs": config.max_epochs})
    except ValidationError:
        return False
    return restored == config


def _save_checkpoint(run: _Run, state: _State) -> None:
    """Write the checkpoint to a temporary file, fsync it, then rename it into place."""
    numpy_state = cast(tuple[str, npt.NDArray[np.uint32], int, int, float], np.random.get_state())
    payload = {
        "spec": run.spec_fingerprint,
        "config": _resumable_config(run.config),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "state": {**asdict(state), "history": [asdict(m) for m in state.history]},
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_numpy": [
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            *numpy_state[2:],
        ],
        "rng_python": list(random.getstate()),
    }
    path = run.checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _load_checkpoint(run: _Run) -> _State:
    """Restore model, optimizer, RNG states and loop state; refuse another run's checkpoint."""
    path = run.checkpoint
    payload = torch.load(path, map_location=run.device, weights_only=True)
    if payload["spec"] != run.spec_fingerprint:
        raise ResumeError(f"{path} was written for another model spec")
    if not _same_training(payload["config"], run.config):
        raise ResumeError(f"{path} was written with another training configuration")
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng_torch"].cpu())
    if payload["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng_cuda"])
    name, keys, *rest = payload["rng_numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = payload["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    raw = payload["state"]
    history = [EpochMetrics(**{**m, "val_auroc": tuple(m["val_auroc"])}) for m in raw["history"]]
    return _State(**{**raw, "history": history})
