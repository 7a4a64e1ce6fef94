"""The model family (a fingerprinted spec), its architectures, and the trained-model bundle.

A :class:`ModelSpec` fixes everything a retrain may not change: the architecture and its
widths, the input size, the preprocessing and the findings. Training changes only the weights,
the per-finding temperature and the per-finding operating threshold, all carried by
:class:`TrainedModel`. :func:`check_compatible` refuses a candidate that changes the family.
The temperature and threshold fits (:func:`calibrate`, :func:`choose_thresholds`) are here too.

Images enter every model as float32 ``[N, 1, H, W]`` with brightness in ``[0, 1]`` (bright =
dense, MONOCHROME2); the model's first layer applies the spec's normalisation, so whoever loads
the weights cannot forget it or use other constants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import field_validator, model_validator
from sklearn.metrics import roc_curve  # type: ignore[import-untyped]
from torch import Tensor, nn

from monitor.drift.base import DetectorConfig
from retrain.config import ThresholdPolicy


class ModelError(Exception):
    """Base class of the model library's errors."""


class IncompatibleModelError(ModelError):
    """A candidate changes the model family (architecture, input, preprocessing or findings)."""


ArchitectureBuilder = Callable[["ModelSpec"], nn.Module]
ARCHITECTURES: dict[str, ArchitectureBuilder] = {}
_PREDICT_BATCH: Final = 256


def register_architecture(name: str) -> Callable[[ArchitectureBuilder], ArchitectureBuilder]:
    """Register a builder ``spec -> nn.Module`` under ``name`` (one logit per finding)."""

    def decorate(builder: ArchitectureBuilder) -> ArchitectureBuilder:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHITECTURES[name] = builder
        return builder

    return decorate


class ModelSpec(DetectorConfig):
    """The model family: what a retrain must keep. Frozen and fingerprinted."""

    architecture: str = "small_cnn"
    input_size: int = 64
    """Images are ``input_size`` x ``input_size``, one channel."""
    channels: tuple[int, ...] = (16, 32, 64)
    """Output channels of each conv-bn-relu-pool block."""
    pooling: Literal["max", "avg"] = "max"
    """Global pooling before the head; max suits small focal findings (a lesion anywhere)."""
    normalise_mean: float = 0.5
    normalise_std: float = 0.25
    findings: tuple[str, ...] = ("lesion",)

    @field_validator("input_size")
    @classmethod
    def _input_size_fits(cls, value: int) -> int:
        if not 16 <= value <= 1024:
            raise ValueError("input_size must be between 16 and 1024 pixels")
        return value

    @field_validator("findings")
    @classmethod
    def _findings_named_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("findings must be a non-empty tuple of distinct names")
        return value

    @model_validator(mode="after")
    def _buildable(self) -> ModelSpec:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError("channels must be a non-empty tuple of positive widths")
        if self.input_size < 2 ** len(self.channels):
            raise ValueError("input_size is too small for the number of pooling blocks")
        if self.normalise_std <= 0:
            raise ValueError("normalise_std must be positive")
        return self


class Normalise(nn.Module):
    """``(x - mean) / std`` with the spec's constants, kept as buffers in the state dict."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: Tensor) -> Tensor:
        """Normalised images."""
        return (images - self.mean) / self.std


class SmallCNN(nn.Module):
    """Normalise, then conv-bn-relu-maxpool blocks, global (max or average) pool, linear head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalise(spec.normalise_mean, spec.normalise_std)]
        width_in = 1
        for width in spec.channels:
            layers += [
                nn.Conv2d(width_in, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            width_in = width
        pool = nn.AdaptiveMaxPool2d(1) if spec.pooling == "max" else nn.AdaptiveAvgPool2d(1)
        layers += [pool, nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width_in, len(spec.findings))

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[N, F]``, one per finding."""
        logits: Tensor = self.head(self.features(images))
        return logits


@register_architecture("small_cnn")
def _small_cnn(spec: ModelSpec) -> nn.Module:
    return SmallCNN(spec)


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model of the spec's family (initialisation draws from torch's RNG)."""
    return ARCHITECTURES[spec.architecture](spec)


def check_compatible(reference: ModelSpec, candidate: ModelSpec) -> None:
    """Raise :class:`IncompatibleModelError` unless ``candidate`` is the same family.

    Every field of the spec is part of the family, so equal fingerprints are required; the
    message names the fields that differ.
    """
    if reference.fingerprint() == candidate.fingerprint():
        return
    ours, theirs = reference.model_dump(), candidate.model_dump()
    changed = sorted(name for name in ours if ours[name] != theirs[name])
    raise IncompatibleModelError(
        "the candidate changes the model family: "
        + ", ".join(f"{name} {ours[name]!r} -> {theirs[name]!r}" for name in changed)
    )


@dataclass(frozen=True)
class TrainedModel:
    """A trained member of a family: the only things training may change, plus the spec."""

    spec: ModelSpec
    state_dict: Mapping[str, Tensor]
    temperature: tuple[float, ...]
    """Per finding; calibrated probability = sigmoid(logit / temperature)."""
    thresholds: tuple[float, ...]
    """Per finding operating threshold on the calibrated probability (positive if >=)."""

    def __post_init__(self) -> None:
        count = len(self.spec.findings)
        if len(self.temperature) != count or len(self.thresholds) != count:
            raise ModelError(f"temperature and thresholds need one value per finding ({count})")
        if min(self.temperature) <= 0:
            raise ModelError("temperatures must be positive")

    def module(self) -> nn.Module:
        """The model with these weights loaded, in eval mode, on the CPU."""
        model = build_model(self.spec)
        model.load_state_dict(dict(self.state_dict))
        return model.eval()

    def save(self, path: Path) -> None:
        """Write the bundle (weights as tensors, the rest as plain values) with ``torch.save``."""
        torch.save(
            {
                "spec": self.spec.model_dump(mode="json"),
                "state_dict": dict(self.state_dict),
                "temperature": list(self.temperature),
                "thresholds": list(self.thresholds),
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        """Read a bundle written by :meth:`save` (tensors only: ``weights_only=True``)."""
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return cls(
            spec=ModelSpec.model_validate(raw["spec"]),
            state_dict=raw["state_dict"],
            temperature=tuple(raw["temperature"]),
            thresholds=tuple(raw["thresholds"]),
        )


def as_image_batch(spec: ModelSpec, images: Tensor | npt.NDArray[np.floating]) -> Tensor:
    """``images`` as float32 ``[N, 1, S, S]``, or :class:`ModelError` if they do not fit."""
    batch = torch.as_tensor(images, dtype=torch.float32)
    if batch.ndim == 3:
        batch = batch.unsqueeze(1)
    size = spec.input_size
    if batch.ndim != 4 or tuple(batch.shape[1:]) != (1, size, size):
        raise ModelError(f"images must be [N, 1, {size}, {size}], got {tuple(batch.shape)}")
    return batch


def predict(
    trained: TrainedModel,
    images: Tensor | npt.NDArray[np.floating],
    *,
    device: torch.device | None = None,
) -> npt.NDArray[np.float64]:
    """Calibrated probabilities ``[N, F]``: sigmoid(logit / temperature), in batches."""
    batch = as_image_batch(trained.spec, images)
    device = device or torch.device("cpu")
    model = trained.module().to(device)
    temperature = torch.tensor(trained.temperature, dtype=torch.float32, device=device)
    chunks: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, len(batch), _PREDICT_BATCH):
            logits = model(batch[start : start + _PREDICT_BATCH].to(device))
            chunks.append(torch.sigmoid(logits / temperature).cpu())
    if not chunks:
        return np.zeros((0, len(trained.spec.findings)))
    return torch.cat(chunks).double().numpy()


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """Validation NLL and ECE per finding, before and after temperature scaling."""

    nll_before: tuple[float, ...]
    nll_after: tuple[float, ...]
    ece_before: tuple[float, ...]
    ece_after: tuple[float, ...]


def fit_temperature(logits: Tensor, labels: Tensor) -> tuple[float, ...]:
    """One temperature per finding minimising the NLL of sigmoid(logit / T) (LBFGS on log T).

    A temperature that does not lower the NLL below T = 1 (possible only through a failed
    line search) is replaced by 1, so calibration never makes the validation NLL worse.
    """
    temperatures: list[float] = []
    for column in range(logits.shape[1]):
        z, y = logits[:, column].double(), labels[:, column].double()
        fitted = _fit_one_temperature(z, y)
        temperatures.append(fitted if _nll(z, y, fitted) <= _nll(z, y, 1.0) else 1.0)
    return tuple(temperatures)


def _fit_one_temperature(logits: Tensor, labels: Tensor) -> float:
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(logits / log_t.exp(), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp())


def _nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    return float(nn.functional.binary_cross_entropy_with_logits(logits / temperature, labels))


def expected_calibration_error(
    probabilities: npt.NDArray[np.floating], labels: npt.NDArray[np.floating], bins: int = 10
) -> float:
    """ECE with ``bins`` equal-width bins: the count-weighted mean |observed - predicted|."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            gap = abs(float(labels[members].mean()) - float(probabilities[members].mean()))
            total += gap * int(members.sum())
    return total / max(len(probabilities), 1)


def calibrate(logits: Tensor, labels: Tensor) -> tuple[tuple[float, ...], CalibrationReport]:
    """Fit temperatures on validation logits and report NLL and ECE before and after."""
    temperature = fit_temperature(logits, labels)
    before = torch.sigmoid(logits).double().numpy()
    after = torch.sigmoid(logits / torch.tensor(temperature)).double().numpy()
    truth = labels.double().numpy()
    columns = range(logits.shape[1])
    report = CalibrationReport(
        nll_before=tuple(_nll(logits[:, c].double(), labels[:, c].double(), 1.0) for c in columns),
        nll_after=tuple(
            _nll(logits[:, c].double(), labels[:, c].double(), temperature[c]) for c in columns
        ),
        ece_before=tuple(expected_calibration_error(before[:, c], truth[:, c]) for c in columns),
        ece_after=tuple(expected_calibration_error(after[:, c], truth[:, c]) for c in columns),
    )
    return temperature, report


def choose_thresholds(
    probabilities: npt.NDArray[np.floating],
    labels: npt.NDArray[np.floating],
    policy: ThresholdPolicy,
    target_sensitivity: float = 0.9,
) -> tuple[float, ...]:
    """Per finding operating threshold on calibrated validation probabilities.

    "sensitivity": the highest threshold whose validation sensitivity reaches the target (so
    the best specificity at that sensitivity); "youden": the threshold maximising
    sensitivity + specificity - 1. A finding without both classes in validation gets 0.5.
    """
    thresholds: list[float] = []
    for column in range(probabilities.shape[1]):
        truth, scores = labels[:, column], probabilities[:, column]
        if truth.min() == truth.max():
            thresholds.append(0.5)
            continue
        fpr, tpr, cuts = roc_curve(truth, scores)
        if policy == "youden":
            index = int(np.argmax(tpr - fpr))
        else:
            index = int(np.argmax(tpr >= target_sensitivity))
        thresholds.append(float(min(cuts[index], 1.0)))
    return tuple(thresholds)
