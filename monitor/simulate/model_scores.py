"""A trained model as the simulator's scorer: real scores on the simulated images.

:class:`TrainedModelScorer` implements ``stream.StudyScorer`` for a ``retrain.model.TrainedModel``.
It scores a study's image exactly as training sees it: ``retrain.images.modality_values`` (the
edge extractor's decoding), ``to_training_image`` at the spec's input size, then the model's
calibrated probability ``sigmoid(logit / temperature)``, the computation of
``retrain.model.predict`` on a batch of one. The module is built once, not per study.

Kept out of ``monitor.simulate``'s namespace: importing it imports torch, and the simulator
without a trained model needs none.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError
from pydicom import Dataset

from monitor.events import Identifier
from monitor.simulate.scores import FINDING
from retrain.embedding import Projection, check_fits, penultimate_features
from retrain.images import modality_values, to_training_image
from retrain.model import ModelError, TrainedModel

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


class TrainedModelScorer:
    """Scores simulated studies with a trained model (CPU, no gradients).

    ``version`` becomes the events' ``model_version`` (e.g. the registry version, "1"); the
    threshold is the model's operating threshold for ``FINDING``. The scores are every finding
    of the model.
    """

    def __init__(self, model: TrainedModel, version: str) -> None:
        findings = model.spec.findings
        if FINDING not in findings:
            raise ModelError(
                f"the model's findings {list(findings)} lack the simulator's {FINDING!r}"
            )
        try:
            self._version = _IDENTIFIER.validate_python(version)
        except ValidationError:
            raise ValueError(f"version {version!r} is not a valid model_version") from None
        self._findings = findings
        self._size = model.spec.input_size
        self._threshold = model.thresholds[findings.index(FINDING)]
        self._temperature = torch.tensor(model.temperature, dtype=torch.float32)
        self._module = model.module()

    @property
    def version(self) -> str:
        """The ``model_version`` of the events this scorer scores."""
        return self._version

    @property
    def threshold(self) -> float:
        """The model's operating threshold for ``FINDING``."""
        return self._threshold

    def score(self, ds: Dataset) -> dict[str, float]:
        """Calibrated probability per finding of the image in ``ds``."""
        image = to_training_image(modality_values(ds), self._size)
        batch = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        with torch.no_grad():
            probabilities = torch.sigmoid(self._module(batch) / self._temperature)[0]
        values = probabilities.double().tolist()
        return dict(zip(self._findings, values, strict=True))


class TrainedModelEmbedder:
    """Embeds simulated studies with a trained model and its projection (``retrain.embedding``):
    the ``stream.StudyEmbedder`` that makes the simulator emit ``inference-event/v2``."""

    def __init__(
        self, model: TrainedModel, projection: Projection, model_name: str, version: str
    ) -> None:
        check_fits(projection, model)
        self._projection = projection
        self._embedding_id = projection.embedding_id(model_name, version)
        self._size = model.spec.input_size
        self._module = model.module()

    @property
    def embedding_id(self) -> str:
        """``<model>@<version>/pca<k>-<fingerprint>``."""
        return self._embedding_id

    def embed(self, ds: Dataset) -> list[float]:
        """The projected penultimate features of the image in ``ds``."""
        image = to_training_image(modality_values(ds), self._size)
        batch = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        features = penultimate_features(self._module, [batch])
        return [float(value) for value in self._projection.project(features)[0]]
