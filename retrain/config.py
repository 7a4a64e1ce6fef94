"""The retraining configuration: plain values, cheap to import (no torch).

:class:`TrainConfig` says how a model is trained (``retrain.train``), :class:`JobConfig` how the
retraining job turns a request into a candidate (``monitor.service.retrain.jobs``), and
:class:`MlflowConfig` where runs are tracked and models registered (``retrain.tracking``). The
settings (``RADSENTRY_RETRAIN__*``, ``RADSENTRY_MLFLOW__*``) hold them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from monitor.drift.base import DetectorConfig

ThresholdPolicy = Literal["sensitivity", "youden"]


class TrainConfig(DetectorConfig):
    """How to train (not what): frozen and fingerprinted, stored with every run."""

    seed: int = 0
    max_epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 3
    """Epochs without a validation-loss improvement (by more than ``min_delta``) before stopping."""
    min_delta: float = 0.0
    monitor_from_epoch: int = Field(1, ge=1)
    """The first epoch early stopping watches (Keras' ``start_from_epoch``): before it an epoch
    can neither be the best nor count towards ``patience``. A model that needs some epochs to
    find the finding at all can show an early minimum of a noisy validation loss; watched from
    epoch 1, that minimum ends training with the half-learnt weights (docs/retraining.md). When
    training ends before this epoch, the last epoch's weights are returned."""
    average_from_epoch: int | None = Field(None, ge=1)
    """Stochastic weight averaging: from this epoch on, the weights at each epoch's end are
    averaged (``torch.optim.swa_utils``), and training returns the average, its batch-norm
    statistics recomputed on the training images, instead of the best epoch's weights. An
    average is less sensitive to the last epochs' arithmetic than a single epoch picked by a
    validation loss that jumps. None: the best epoch's weights."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = 1
    """Write the checkpoint after every this many epochs (and always when training ends)."""
    threshold_policy: ThresholdPolicy = "sensitivity"
    target_sensitivity: float = 0.9
    """For the "sensitivity" policy: the highest threshold reaching this validation sensitivity."""


class JobConfig(DetectorConfig):
    """How the retraining job builds a candidate from a request (frozen, fingerprinted)."""

    train: TrainConfig = TrainConfig()
    split_seed: int = 0
    """Seed of the study-level train/validation split (``retrain.dataset.split_of``)."""
    validation_share: float = Field(0.2, gt=0.0, lt=1.0)
    locked_test_set: Path | None = None
    """The PCCP locked test set manifest; None means an empty one (recorded as such)."""
    warm_start: bool = True
    """Start from the champion's weights (True) or from a fresh initialisation."""
    rehearsal_cases: Path | None = None
    """Labelled cases trained on beside the new labels (a case file, ``retrain.dataset.
    write_cases``): the data the champion was developed on, so that a retrain that learns a
    new scanner does not forget the rooms it already read well (rehearsal). A case also among
    the new labels is taken once, with its new label. None: the new labels alone."""
    min_cases: int = Field(50, ge=2)
    """Fewer usable labelled cases than this fails the job: nothing worth training on."""
    max_attempts: int = Field(3, ge=1)
    """A request whose job died (process killed, MLflow down) is tried this many times."""
    image_workers: int = Field(4, ge=1)
    """Threads fetching and decoding images."""


class MlflowConfig(BaseModel):
    """Where runs are tracked and models registered."""

    tracking_uri: str | None = Field(
        None,
        description="An MLflow server (http://...) in production; None: a SQLite store and a "
        "local artifact folder under data_dir (embedded default).",
    )
    experiment: str = "radsentry-retrain"
    retry_attempts: int = Field(5, ge=1, description="Tries of each MLflow call before failing.")
    retry_initial_s: float = Field(1.0, gt=0, description="First backoff; doubles per retry.")
    retry_max_s: float = Field(30.0, gt=0, description="Longest single backoff.")
    request_timeout_s: float = Field(30.0, gt=0, description="HTTP timeout of one MLflow call.")
