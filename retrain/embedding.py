"""The deployed model's own view of an image: a PCA projection of its penultimate features.

:func:`fit_projection` fits the projection on the features of the model's training images;
:func:`embed` maps images to at most :data:`~monitor.events.EMBEDDING_MAX_LENGTH` numbers with
it, which ``inference-event/v2`` carries as ``embedding``. A :class:`Projection` is fitted to
one set of weights: it records the weights' hash and refuses other weights, since the features
of a retrained model live in another space.

The projection is stored as JSON (``projection.json``), never pickled, beside the model bundle
of the MLflow run (``retrain.tracking``). Why the embedding carries no PHI: docs/events.md,
"Embeddings".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.decomposition import PCA  # type: ignore[import-untyped]
from torch import Tensor, nn

from monitor.drift.directions import Direction, DirectionSet, fit_direction
from monitor.events import EMBEDDING_MAX_LENGTH
from retrain.model import ModelError, TrainedModel, as_image_batch

DEFAULT_COMPONENTS: Final = 16
"""Components kept when the caller does not say (capped by the feature width and samples)."""
PROJECTION_SCHEMA: Final = "radsentry-projection/v1"
_BATCH: Final = 256


class EmbeddingError(ModelError):
    """A projection that does not fit the model it is used with, or cannot be fitted."""


class Projection(BaseModel):
    """A fitted PCA of one model version's penultimate features. Frozen, JSON-serialisable."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_id: str = Field(PROJECTION_SCHEMA, alias="schema", pattern="^radsentry-projection/v1$")
    spec_fingerprint: str
    weights_sha256: str
    """SHA-256 of the weights the features came from (:func:`weights_sha256`)."""
    mean: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]
    """``[k, d]``: the principal axes, in decreasing order of explained variance."""
    explained_variance_ratio: tuple[float, ...]
    samples: int = Field(ge=2)

    @model_validator(mode="after")
    def _shapes_agree(self) -> Projection:
        width = len(self.mean)
        if not 1 <= len(self.components) <= EMBEDDING_MAX_LENGTH:
            raise ValueError(f"a projection keeps 1 to {EMBEDDING_MAX_LENGTH} components")
        if any(len(axis) != width for axis in self.components):
            raise ValueError("every component must have as many values as the mean")
        if len(self.explained_variance_ratio) != len(self.components):
            raise ValueError("one explained-variance ratio per component")
        values = np.array([*self.mean, *np.ravel(self.components), *self.explained_variance_ratio])
        if not np.isfinite(values).all():
            raise ValueError("every value of a projection must be finite")
        return self

    @property
    def dimensions(self) -> int:
        """How many numbers an embedding has."""
        return len(self.components)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: names exactly this projection."""
        return hashlib.sha256(self.to_json()).hexdigest()

    def embedding_id(self, model_name: str, model_version: str) -> str:
        """An event's ``embedding_id``: ``<model>@<version>/pca<k>-<fingerprint[:12]>``."""
        return f"{model_name}@{model_version}/pca{self.dimensions}-{self.fingerprint()[:12]}"

    def to_json(self) -> bytes:
        """The canonical JSON stored as the MLflow artifact."""
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Projection:
        """Read what :meth:`to_json` wrote (pydantic validation, no unpickling)."""
        return cls.model_validate_json(data)

    def project(self, features: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """``(features - mean) @ components.T``: ``[N, d]`` in, ``[N, k]`` out."""
        centred = np.asarray(features, dtype=np.float64) - np.asarray(self.mean)
        projected: npt.NDArray[np.float64] = centred @ np.asarray(self.components).T
        return projected


def weights_sha256(trained: TrainedModel) -> str:
    """SHA-256 over the weights' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(trained.state_dict):
        tensor = trained.state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def penultimate_features(
    model: nn.Module, batches: Iterable[Tensor], device: torch.device | None = None
) -> npt.NDArray[np.float64]:
    """The input of the model's ``head`` (its last linear layer) for every image, ``[N, d]``.

    Every registered architecture ends in a ``head`` (``retrain.model``); the features are read
    with a forward hook, so the architectures need no second forward method.
    """
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise EmbeddingError("the architecture has no linear 'head' whose input to project")
    captured: list[Tensor] = []

    def keep(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        captured.append(inputs[0].detach().double().cpu())

    model.eval()
    hook = head.register_forward_pre_hook(keep)
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch.to(device) if device is not None else batch)
    finally:
        hook.remove()
    if not captured:
        return np.zeros((0, head.in_features))
    return torch.cat(captured).numpy()


def fit_projection(
    trained: TrainedModel, features: npt.NDArray[np.floating], components: int = DEFAULT_COMPONENTS
) -> Projection:
    """PCA of ``features`` (the model's penultimate features of its training images).

    Keeps ``components`` axes, at most :data:`EMBEDDING_MAX_LENGTH`, the feature width and one
    fewer than the samples. The full SVD solver makes the fit deterministic (signs included).
    """
    rows, width = np.shape(features)
    if rows < 2:
        raise EmbeddingError("a projection needs the features of at least two images")
    kept = min(components, EMBEDDING_MAX_LENGTH, width, rows - 1)
    if kept < 1:
        raise EmbeddingError("components must be at least 1")
    with np.errstate(invalid="ignore", divide="ignore"):  # zero variance: handled below
        pca = PCA(n_components=kept, svd_solver="full").fit(np.asarray(features, np.float64))
    return Projection(
        spec_fingerprint=trained.spec.fingerprint(),
        weights_sha256=weights_sha256(trained),
        mean=tuple(float(v) for v in pca.mean_),
        components=tuple(tuple(float(v) for v in axis) for axis in pca.components_),
        # Features without any variance (a degenerate model) give 0/0 ratios: none explained.
        explained_variance_ratio=tuple(
            float(v) for v in np.nan_to_num(pca.explained_variance_ratio_, nan=0.0)
        ),
        samples=rows,
    )


def fit_projection_on_images(
    trained: TrainedModel,
    images: Tensor | npt.NDArray[np.floating],
    components: int = DEFAULT_COMPONENTS,
) -> Projection:
    """:func:`fit_projection` on the features of ``images`` (``[N, 1, S, S]`` in [0, 1])."""
    batch = as_image_batch(trained.spec, images)
    chunks = (batch[start : start + _BATCH] for start in range(0, len(batch), _BATCH))
    return fit_projection(trained, penultimate_features(trained.module(), chunks), components)


def check_fits(projection: Projection, trained: TrainedModel) -> None:
    """Raise :class:`EmbeddingError` unless ``projection`` was fitted to these very weights."""
    if projection.spec_fingerprint != trained.spec.fingerprint():
        raise EmbeddingError("the projection was fitted to another model family")
    if projection.weights_sha256 != weights_sha256(trained):
        raise EmbeddingError("the projection was fitted to other weights of this model")


def embed(
    trained: TrainedModel, projection: Projection, images: Tensor | npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """The embeddings ``[N, k]`` of ``images`` (``[N, 1, S, S]`` in [0, 1])."""
    check_fits(projection, trained)
    batch = as_image_batch(trained.spec, images)
    chunks = (batch[start : start + _BATCH] for start in range(0, len(batch), _BATCH))
    return projection.project(penultimate_features(trained.module(), chunks))


def fit_direction_on_images(
    trained: TrainedModel,
    projection: Projection,
    name: str,
    description: str,
    baseline: Tensor | npt.NDArray[np.floating],
    shifted: Tensor | npt.NDArray[np.floating],
) -> Direction:
    """A known direction (``monitor.drift.directions``) from two example image sets, embedded
    with ``projection``: e.g. PA views (baseline) and lateral views (shifted), "towards lateral
    views". Log a model version's directions with ``Registry.log_directions`` as a
    :func:`direction_set`."""
    return fit_direction(
        name,
        description,
        embed(trained, projection, baseline),
        embed(trained, projection, shifted),
    )


def direction_set(projection: Projection, directions: Iterable[Direction]) -> DirectionSet:
    """``directions`` bound to the projection they were fitted in."""
    return DirectionSet(
        projection_fingerprint=projection.fingerprint(), directions=tuple(directions)
    )
