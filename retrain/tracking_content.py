"""What one training run records in MLflow: its parameters, metrics, tags and MLflow model.

Pure functions of a :class:`RunRecord` (the git commit aside), kept apart from
:mod:`retrain.tracking`, which talks to MLflow, so the content can be read in one place: the
names here are what dashboards, the PCCP change log and auditors look up.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import torch
from mlflow.entities import Metric
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from torch import Tensor, nn

from retrain.config import TrainConfig
from retrain.dataset import DatasetManifest, Side
from retrain.mlflow_names import (
    CONFIG_TAG,
    DATASET_TAG,
    GIT_COMMIT_TAG,
    MODEL_NAME_TAG,
    SPEC_TAG,
)
from retrain.model import ModelSpec, TrainedModel
from retrain.train import TrainResult

UNKNOWN_COMMIT: Final = "unknown"
_REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_COMMIT: Final = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass(frozen=True)
class RunRecord:
    """Everything one training run logs."""

    model_name: str
    result: TrainResult
    train_config: TrainConfig
    manifest: DatasetManifest
    tags: Mapping[str, str]
    """Lineage: ``radsentry.request_id``, ``radsentry.alert_id``, ``radsentry.trigger``..."""
    params: Mapping[str, str | int | float] = field(default_factory=dict)
    """Extra parameters (e.g. the job configuration's fingerprint)."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Extra final metrics (e.g. champion and candidate AUROC per site)."""

    def __post_init__(self) -> None:
        # A record whose config is not the one the result was trained with would log a lie.
        if self.train_config.fingerprint() != self.result.config_fingerprint:
            raise ValueError("train_config is not the configuration the result was trained with")


def run_tags(record: RunRecord, git_commit: str) -> dict[str, str]:
    """Run tags: the code, configuration and data identities, then the record's own tags."""
    result = record.result
    return {
        GIT_COMMIT_TAG: git_commit,
        "mlflow.source.git.commit": git_commit,  # shown by the MLflow UI
        CONFIG_TAG: result.config_fingerprint,
        SPEC_TAG: result.spec_fingerprint,
        DATASET_TAG: record.manifest.sha256(),
        MODEL_NAME_TAG: record.model_name,
        **record.tags,
    }


def run_params(record: RunRecord) -> dict[str, str]:
    """Every training and spec field, the data set's summary, then the record's own params."""
    result, manifest = record.result, record.manifest
    params: dict[str, object] = {
        **{f"train.{k}": v for k, v in record.train_config.model_dump(mode="json").items()},
        **{f"spec.{k}": v for k, v in result.model.spec.model_dump(mode="json").items()},
        "dataset.sha256": manifest.sha256(),
        "dataset.cases": len(manifest.cases),
        "dataset.train_cases": manifest.totals_by_split.get(Side.TRAIN, 0),
        "dataset.validation_cases": manifest.totals_by_split.get(Side.VALIDATION, 0),
        "dataset.dropped_without_uri": manifest.dropped_without_uri,
        "dataset.seed": manifest.seed,
        "dataset.validation_share": manifest.validation_share,
        "dataset.locked_test_sha256": manifest.locked_test_sha256,
        "result.device": result.device,
        "result.stopped_early": result.stopped_early,
        "result.resumed_from_epoch": result.resumed_from_epoch,
    }
    if clash := sorted(params.keys() & record.params.keys()):
        raise ValueError(f"record.params may not redefine {', '.join(clash)}")
    params |= record.params
    # MLflow params are strings; JSON keeps lists, booleans and None readable and unambiguous.
    return {key: v if isinstance(v, str) else json.dumps(v) for key, v in params.items()}


def run_metrics(record: RunRecord, timestamp_ms: int) -> list[Metric]:
    """Per-epoch curves (step = epoch), then the final numbers at step 0."""
    result, findings = record.result, record.result.model.spec.findings
    metrics: list[Metric] = []
    for epoch in result.history:
        values = {
            "train_loss": epoch.train_loss,
            "val_loss": epoch.val_loss,
            "epoch_seconds": epoch.seconds,
            **{
                f"val_auroc_{f}": a
                for f, a in zip(findings, epoch.val_auroc, strict=True)
                if a is not None
            },
        }
        metrics += [Metric(k, float(v), timestamp_ms, epoch.epoch) for k, v in values.items()]
    calibration, trained = result.calibration, result.model
    final: dict[str, float] = {"best_epoch": result.best_epoch}
    for index, finding in enumerate(findings):
        final |= {
            f"calibration_nll_before_{finding}": calibration.nll_before[index],
            f"calibration_nll_after_{finding}": calibration.nll_after[index],
            f"calibration_ece_before_{finding}": calibration.ece_before[index],
            f"calibration_ece_after_{finding}": calibration.ece_after[index],
            f"temperature_{finding}": trained.temperature[index],
            f"threshold_{finding}": trained.thresholds[index],
        }
    final |= {**result.extra, **record.metrics}
    return metrics + [Metric(k, float(v), timestamp_ms, 0) for k, v in final.items()]


class CalibratedModel(nn.Module):
    """The logged MLflow model: images ``[N, 1, S, S]`` -> calibrated probabilities ``[N, F]``.

    Serving the probabilities (not logits) means no consumer of the MLflow model can forget
    the temperature; :func:`retrain.model.predict` computes the same numbers.
    """

    temperature: Tensor

    def __init__(self, trained: TrainedModel) -> None:
        super().__init__()
        self.network = trained.module()
        self.register_buffer("temperature", torch.tensor(trained.temperature, dtype=torch.float32))
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        """sigmoid(logit / temperature) per finding."""
        probabilities: Tensor = torch.sigmoid(self.network(images) / self.temperature)
        return probabilities


def model_signature(spec: ModelSpec) -> ModelSignature:
    """float32 ``[-1, 1, S, S]`` in, float32 ``[-1, F]`` calibrated probabilities out."""
    size, findings = spec.input_size, len(spec.findings)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, findings))]),
    )


def example_images(spec: ModelSpec) -> Tensor:
    """What ``torch.export`` traces with: a batch of two, so the batch size stays dynamic
    (a batch of one would be specialised to a constant)."""
    return torch.full((2, 1, spec.input_size, spec.input_size), 0.5)


@functools.cache
def git_commit() -> str:
    """The checked-out commit of this code, or "unknown" (no git, not a checkout): never fails.

    Cached: the code of a running process does not change under it.
    """
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and _COMMIT.match(commit) else UNKNOWN_COMMIT
