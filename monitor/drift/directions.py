"""Known directions in a model's embedding space, and which one a window's shift points to.

A :class:`Direction` is a named unit vector with a description for people ("towards lateral
views"), fitted by :func:`fit_direction` from the embeddings of two example sets projected the
same way: a baseline (the images the model was validated on) and shifted examples (lateral
views, paediatric studies, ...). The vector is their normalised mean difference; its
``noise_scale`` is the standard deviation of single baseline embeddings along it, so a window's
movement along the direction can be read in units of image-to-image variation.

A :class:`DirectionSet` binds directions to the projection they were fitted in (its
fingerprint, ``retrain.embedding.Projection.fingerprint``): the same numbers from another
projection mean something else. :func:`aligned` names the direction a window's mean shift points
to when it is clearly aligned (cosine at least ``min_cosine``), else None, and the embedding
detector (:mod:`monitor.drift.embedding_mmd`) then names its top components instead.

Pure: numpy and pydantic only. The service loads a model version's set from MLflow
(``retrain.tracking.Registry.load_directions``) and hands it to the engine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

DIRECTIONS_SCHEMA: Final = "radsentry-directions/v1"
DIRECTION_PREFIX: Final = "direction:"
"""Attributions of a known direction are named ``direction:<name>``."""
MIN_EXAMPLES: Final = 2
_UNIT_TOLERANCE: Final = 1e-6


class DirectionError(ValueError):
    """Example sets a direction cannot be fitted from (too few, unequal widths, no difference)."""


class Direction(BaseModel):
    """A named unit vector in embedding space and the spread of baseline images along it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]{0,63}$")
    description: str = Field(min_length=1, max_length=200)
    """For people, read after "the window moved ...": e.g. "towards lateral views"."""
    vector: tuple[float, ...] = Field(min_length=1)
    noise_scale: float = Field(gt=0.0)
    """Standard deviation of baseline embeddings projected on ``vector``."""
    separation: float = Field(ge=0.0)
    """|mean difference| of the example sets / ``noise_scale``: how distinct they were."""
    n_baseline: int = Field(ge=MIN_EXAMPLES)
    n_shifted: int = Field(ge=MIN_EXAMPLES)

    @model_validator(mode="after")
    def _unit_and_finite(self) -> Self:
        vector = np.asarray(self.vector)
        if not np.isfinite(vector).all():
            raise ValueError("a direction's values must be finite")
        if abs(float(np.linalg.norm(vector)) - 1.0) > _UNIT_TOLERANCE:
            raise ValueError("a direction's vector must have unit length")
        return self


class DirectionSet(BaseModel):
    """The known directions of one projection (stored beside it in MLflow)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_id: str = Field(DIRECTIONS_SCHEMA, alias="schema", pattern="^radsentry-directions/v1$")
    projection_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    directions: tuple[Direction, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [direction.name for direction in self.directions]
        if len(set(names)) != len(names):
            raise ValueError("direction names must be unique")
        if len({len(direction.vector) for direction in self.directions}) > 1:
            raise ValueError("every direction must have the projection's dimension")
        return self

    def binds(self, embedding_id: str) -> bool:
        """Whether ``embedding_id`` (``<model>@<version>/pca<k>-<fingerprint[:12]>``) names the
        projection these directions were fitted in."""
        return embedding_id.endswith(f"-{self.projection_fingerprint[:12]}")

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DirectionSet:
        return cls.model_validate_json(data)


def fit_direction(
    name: str, description: str, baseline: ArrayLike, shifted: ArrayLike
) -> Direction:
    """The direction from ``baseline`` to ``shifted`` embeddings (``[n, k]`` each).

    Raises DirectionError for fewer than two examples on a side, unequal widths, non-finite
    values, or example sets whose means coincide (no direction to name).
    """
    base, moved = _examples(baseline, "baseline"), _examples(shifted, "shifted")
    if base.shape[1] != moved.shape[1]:
        raise DirectionError(f"baseline has {base.shape[1]} components, shifted {moved.shape[1]}")
    difference = moved.mean(axis=0) - base.mean(axis=0)
    length = float(np.linalg.norm(difference))
    if length <= 1e-12 * max(1.0, float(np.abs(base).max())):
        raise DirectionError(f"{name}: the two example sets have the same mean")
    vector = difference / length
    noise = float(np.std(base @ vector, ddof=1))
    noise = noise if noise > 0 else length  # identical baseline images: scale by the shift
    return Direction(
        name=name,
        description=description,
        vector=tuple(float(v) for v in vector),
        noise_scale=noise,
        separation=length / noise,
        n_baseline=len(base),
        n_shifted=len(moved),
    )


@dataclass(frozen=True, slots=True)
class Alignment:
    """How a window's mean shift relates to one known direction."""

    direction: Direction
    cosine: float
    """Cosine between the mean shift and the direction (1: exactly along it)."""
    along: float
    """The mean shift projected on the direction, in ``noise_scale`` units."""

    def explanation(self) -> str:
        return (
            f"window mean moved {self.direction.description} "
            f"({self.along:.2g} image sd along it, cosine {self.cosine:.2f})"
        )


def alignments(shift: NDArray[np.float64], directions: tuple[Direction, ...]) -> list[Alignment]:
    """Every direction of ``shift``'s dimension with its cosine, most aligned first."""
    norm = float(np.linalg.norm(shift))
    found = []
    for direction in directions:
        vector = np.asarray(direction.vector)
        if len(vector) != len(shift) or norm == 0.0:
            continue
        along = float(shift @ vector)
        found.append(Alignment(direction, along / norm, along / direction.noise_scale))
    return sorted(found, key=lambda item: item.cosine, reverse=True)


def aligned(
    shift: NDArray[np.float64], directions: tuple[Direction, ...], min_cosine: float
) -> Alignment | None:
    """The direction ``shift`` points to, if its cosine is at least ``min_cosine``."""
    ranked = alignments(shift, directions)
    return ranked[0] if ranked and ranked[0].cosine >= min_cosine else None


def _examples(values: ArrayLike, side: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or len(array) < MIN_EXAMPLES:
        raise DirectionError(
            f"{side} needs at least {MIN_EXAMPLES} embeddings as rows, got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise DirectionError(f"{side} embeddings must be finite")
    return array
