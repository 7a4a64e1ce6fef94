"""`radsentry extract --model`: DICOM files in, ``inference-event/v2`` lines out.

With a registered model version and the projection stored with it (``retrain.embedding``), each
image is scored and embedded: the event carries the calibrated scores, the PHI-free features
the plain extractor writes (study_key, modality, allowlisted metadata, pixel statistics) and
the embedding, at most 32 numbers (docs/events.md, "Embeddings"). The image goes through the
same decoding as training images (``retrain.images``), so the edge sees what the model saw.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from monitor.dicom import ExtractionError, extract_features
from monitor.dicom.extract import read_dataset
from monitor.events import InferenceEventV2, Prediction, to_json
from monitor.phi import PhiRule
from monitor.service.ingest.edge import Extracted, iter_files
from retrain.embedding import Projection, check_fits, embed
from retrain.images import ImageError, modality_values, to_training_image
from retrain.mlflow_names import CHAMPION
from retrain.model import TrainedModel, predict
from retrain.tracking import Registry, TrackingError


class EdgeModelError(Exception):
    """The model reference names no version, or the version has no usable projection."""


@dataclass(frozen=True)
class EdgeModel:
    """One registered model version with its embedding projection, ready to score images."""

    name: str
    version: str
    trained: TrainedModel
    projection: Projection

    @property
    def embedding_id(self) -> str:
        """The ``embedding_id`` its events carry."""
        return self.projection.embedding_id(self.name, self.version)


def parse_reference(reference: str) -> tuple[str, str]:
    """``NAME[@alias]`` or ``NAME@VERSION`` as (name, alias or version); no alias: champion."""
    name, _, selector = reference.partition("@")
    if not name:
        raise EdgeModelError("--model needs a model name: NAME, NAME@alias or NAME@version")
    return name, selector or CHAMPION


def load_edge_model(registry: Registry, reference: str) -> EdgeModel:
    """The version ``reference`` names, its bundle and its projection (checked to fit)."""
    name, selector = parse_reference(reference)
    try:
        if selector.isdigit():
            version = registry.version(name, selector).version
        else:
            found = registry.version_by_alias(name, selector)
            if found is None:
                raise EdgeModelError(f"{name} has no version with the alias {selector!r}")
            version = found.version
        trained = registry.load_model(name, version)
        projection = registry.load_projection(name, version)
    except TrackingError as exc:
        raise EdgeModelError(str(exc)) from None
    check_fits(projection, trained)
    return EdgeModel(name, version, trained, projection)


def inference_event(
    path: Path, site_key: bytes, site_id: str, model: EdgeModel, now: datetime
) -> tuple[InferenceEventV2, Mapping[str, PhiRule]]:
    """Score and embed one DICOM file; also the text fields dropped as possible PHI (names and
    rules). ExtractionError or ImageError when the file cannot be used."""
    dataset = read_dataset(path)
    features = extract_features(dataset, site_key)
    image = to_training_image(modality_values(dataset), model.trained.spec.input_size)
    batch = image[np.newaxis, np.newaxis]
    scores = predict(model.trained, batch)[0]
    findings = model.trained.spec.findings
    thresholds = model.trained.thresholds
    event = InferenceEventV2(
        event_id=uuid.uuid4(),
        site_id=site_id,
        model_name=model.name,
        model_version=model.version,
        occurred_at=now,
        study_key=features.study_key,
        modality=features.modality,
        metadata=features.metadata,
        pixel_stats=features.pixel_stats,
        prediction=Prediction(
            scores={finding: float(score) for finding, score in zip(findings, scores, strict=True)},
            threshold=thresholds[0] if len(thresholds) == 1 else None,
        ),
        embedding=[float(value) for value in embed(model.trained, model.projection, batch)[0]],
        embedding_id=model.embedding_id,
    )
    return event, features.phi_dropped


def event_lines(
    paths: Iterable[Path],
    site_key: bytes,
    site_id: str,
    model: EdgeModel,
) -> Iterator[Extracted]:
    """One ``inference-event/v2`` line per usable file; the typed error for any other file,
    as the plain extractor writes it (never the path)."""
    for path in iter_files(paths):
        try:
            event, dropped = inference_event(path, site_key, site_id, model, datetime.now(UTC))
        except (ExtractionError, ImageError) as exc:
            error = {"error": type(exc).__name__, "message": str(exc)}
            yield Extracted(orjson.dumps(error).decode(), False)
            continue
        yield Extracted(to_json(event).decode(), True, dropped)
