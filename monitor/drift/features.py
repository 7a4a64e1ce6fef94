"""What the detectors see of an inference event: one numeric row and one categorical row.

An event becomes a float64 row (pixel statistics, numeric DICOM metadata, then the model's
scores per finding; NaN = missing) and a row of small integer codes for the categorical metadata
(-1 = missing). Rows accumulate in a :class:`RowBuffer`, which hands the detectors their inputs
(:class:`~monitor.drift.base.FeatureMatrix`, categorical columns) and serialises to plain arrays,
so per-site state stays a few hundred kilobytes and restores exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from monitor.drift.base import CategoricalColumns, FeatureMatrix
from monitor.events import DicomMetadata, InferenceEvent, InferenceEventV2
from monitor.pixel_names import PIXEL_STAT_NAMES

NUMERIC_METADATA: Final = (
    "KVP",
    "XRayTubeCurrent",
    "Exposure",
    "ExposureTime",
    "SliceThickness",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "Rows",
    "Columns",
    "BitsStored",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
)
"""Numeric allowlisted attributes; a multi-valued one (PixelSpacing) counts by its first value."""

CATEGORICAL_METADATA: Final = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ConvolutionKernel",
    "PhotometricInterpretation",
    "ViewPosition",
    "BodyPartExamined",
    "PatientSex",
    "PatientAgeBand",
)
"""Categorical allowlisted attributes; a multi-valued one counts as its values joined by '\\'."""

EMBEDDING_PREFIX: Final = "emb_"
"""Embedding components are named ``emb_00``, ``emb_01``, ... in the projection's order."""

PIXEL_FIELD: Final = "pixel_stats"
"""The name missingness uses for the pixel-statistic block (present or absent as a whole)."""


@dataclass(frozen=True, slots=True)
class FeatureSchema:
    """Column layout of one (site, model, version): fixed when its first event arrives.

    The embedding columns (``emb_00`` ...) and ``embedding_id`` come from the first event of
    the reference (:meth:`with_embedding_of`): a v1 stream, or one whose first reference event
    carries no embedding, has none, and its rows are exactly those of a stream before
    embeddings existed.
    """

    findings: tuple[str, ...]
    pixels: tuple[str, ...] = PIXEL_STAT_NAMES
    metadata: tuple[str, ...] = NUMERIC_METADATA
    categorical: tuple[str, ...] = CATEGORICAL_METADATA
    embedding: tuple[str, ...] = ()
    embedding_id: str | None = None
    """The projection the embedding columns hold; another projection's embedding is missing."""

    @classmethod
    def for_event(cls, event: InferenceEvent) -> FeatureSchema:
        """The schema of a model whose outputs are those of ``event`` (sorted findings)."""
        return cls(findings=tuple(sorted(event.prediction.scores))).with_embedding_of(event)

    def with_embedding_of(self, event: InferenceEvent) -> FeatureSchema:
        """This schema with the embedding layout of ``event`` (none when it carries none)."""
        vector, embedding_id = _embedding(event)
        names = tuple(f"{EMBEDDING_PREFIX}{i:02d}" for i in range(len(vector or ())))
        return dataclasses.replace(self, embedding=names, embedding_id=embedding_id)

    @property
    def numeric(self) -> tuple[str, ...]:
        return (*self.pixels, *self.metadata, *self.findings, *self.embedding)

    def pixel_columns(self) -> slice:
        return slice(0, len(self.pixels))

    def metadata_columns(self) -> slice:
        start = len(self.pixels)
        return slice(start, start + len(self.metadata))

    def finding_columns(self) -> slice:
        start = len(self.pixels) + len(self.metadata)
        return slice(start, start + len(self.findings))

    def embedding_columns(self) -> slice:
        start = len(self.pixels) + len(self.metadata) + len(self.findings)
        return slice(start, start + len(self.embedding))

    def numeric_row(self, event: InferenceEvent) -> NDArray[np.float64]:
        """Pixel statistics, numeric metadata and scores of ``event``; NaN where absent.

        Scores of findings outside the schema are ignored: a model version has a fixed set of
        outputs, and a finding it did not report when first seen is not monitored.
        """
        pixel_stats = event.pixel_stats or {}
        scores = event.prediction.scores
        values = [pixel_stats.get(name, np.nan) for name in self.pixels]
        values += [_number(event.metadata, name) for name in self.metadata]
        values += [scores.get(name, np.nan) for name in self.findings]
        if self.embedding:
            vector, embedding_id = _embedding(event)
            matches = embedding_id == self.embedding_id and len(vector or ()) == len(self.embedding)
            values += (
                list(vector) if vector is not None and matches else [np.nan] * len(self.embedding)
            )
        return np.array(values, dtype=np.float64)

    def categorical_row(self, event: InferenceEvent) -> list[str | None]:
        return [_text(event.metadata, name) for name in self.categorical]


def _embedding(event: InferenceEvent) -> tuple[list[float] | None, str | None]:
    """The event's embedding and its projection id (None, None for v1 or no embedding)."""
    if isinstance(event, InferenceEventV2) and event.embedding is not None:
        return [float(value) for value in event.embedding], event.embedding_id
    return None, None


def _number(metadata: DicomMetadata, name: str) -> float:
    value = getattr(metadata, name)
    if isinstance(value, list):
        value = value[0] if value else None
    return np.nan if value is None else float(value)


def _text(metadata: DicomMetadata, name: str) -> str | None:
    value = getattr(metadata, name)
    if isinstance(value, list):
        return "\\".join(value) if value else None
    return value  # type: ignore[no-any-return]


@dataclass
class Vocabulary:
    """Category <-> small integer code, per categorical feature, grown as values appear."""

    values: list[list[str]]
    _codes: list[dict[str, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._codes = [{value: code for code, value in enumerate(v)} for v in self.values]

    @classmethod
    def empty(cls, n_features: int) -> Vocabulary:
        return cls([[] for _ in range(n_features)])

    def encode(self, row: Sequence[str | None]) -> NDArray[np.int32]:
        codes = np.full(len(row), -1, dtype=np.int32)
        for i, value in enumerate(row):
            if value is None:
                continue
            code = self._codes[i].get(value)
            if code is None:
                code = self._codes[i][value] = len(self.values[i])
                self.values[i].append(value)
            codes[i] = code
        return codes

    def decode(self, feature: int, codes: NDArray[np.int32]) -> list[str | None]:
        names = self.values[feature]
        return [names[code] if code >= 0 else None for code in codes.tolist()]


class RowBuffer:
    """Rows of a reference or a window: numeric values, categorical codes, event times."""

    def __init__(self, n_numeric: int, n_categorical: int, capacity: int = 64) -> None:
        self._numeric = np.empty((capacity, n_numeric), dtype=np.float64)
        self._codes = np.empty((capacity, n_categorical), dtype=np.int32)
        self._times = np.empty(capacity, dtype=np.float64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, numeric: NDArray[np.float64], codes: NDArray[np.int32], time: float) -> None:
        if self._size == len(self._times):
            self._grow()
        self._numeric[self._size] = numeric
        self._codes[self._size] = codes
        self._times[self._size] = time
        self._size += 1

    def clear(self) -> None:
        self._size = 0

    @property
    def numeric(self) -> NDArray[np.float64]:
        return self._numeric[: self._size]

    @property
    def codes(self) -> NDArray[np.int32]:
        return self._codes[: self._size]

    @property
    def times(self) -> NDArray[np.float64]:
        """Event times (POSIX seconds, UTC) in arrival order."""
        return self._times[: self._size]

    def matrix(self, names: tuple[str, ...], columns: slice) -> FeatureMatrix:
        return FeatureMatrix(names, self.numeric[:, columns])

    def categorical(self, names: Sequence[str], vocabulary: Vocabulary) -> CategoricalColumns:
        return {name: vocabulary.decode(i, self.codes[:, i]) for i, name in enumerate(names)}

    def arrays(self) -> dict[str, NDArray[np.generic]]:
        """The rows as plain arrays (copies), for persistence."""
        return {
            "numeric": self.numeric.copy(),
            "codes": self.codes.copy(),
            "times": self.times.copy(),
        }

    @classmethod
    def from_arrays(
        cls, numeric: NDArray[np.float64], codes: NDArray[np.int32], times: NDArray[np.float64]
    ) -> RowBuffer:
        buffer = cls(numeric.shape[1], codes.shape[1], capacity=max(64, len(times)))
        size = len(times)
        buffer._numeric[:size] = numeric
        buffer._codes[:size] = codes
        buffer._times[:size] = times
        buffer._size = size
        return buffer

    def nbytes(self) -> int:
        return self._numeric.nbytes + self._codes.nbytes + self._times.nbytes

    def _grow(self) -> None:
        capacity = 2 * len(self._times)
        self._numeric = np.resize(self._numeric, (capacity, self._numeric.shape[1]))
        self._codes = np.resize(self._codes, (capacity, self._codes.shape[1]))
        self._times = np.resize(self._times, capacity)
