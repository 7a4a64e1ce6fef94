"""Known embedding directions for the drift engine, read from MLflow and cached.

The engine is pure (:mod:`monitor.drift.engine`): before each window its embedding detector
scores, it asks a :class:`~monitor.drift.engine.DirectionSource` for the stream's directions.
This source reads the set logged with the model version
(``retrain.tracking.Registry.load_directions``), keeps it per (model, version), and hands it
over only when it was fitted in the projection the stream's embeddings come from (the
``embedding_id`` names it). A version found without directions (none logged yet, or MLflow
unreachable, which is logged) is asked again after ``retry_s``, so directions logged after the
consumer started are picked up; until then explanations name embedding components.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import structlog

from monitor.drift.alerts import StreamKey
from monitor.drift.directions import Direction, DirectionSet

if TYPE_CHECKING:
    from retrain.tracking import Registry

log = structlog.get_logger(__name__)

RETRY_S: Final = 600.0


class RegistryDirections:
    """A :class:`~monitor.drift.engine.DirectionSource` over the model registry."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``registry`` builds the registry on first need: a consumer whose streams carry no
        embeddings never opens MLflow."""
        self._make_registry = registry
        self._registry: Registry | None = None
        self._retry_s, self._clock = retry_s, clock
        self._found: dict[tuple[str, str], DirectionSet] = {}
        self._missing_since: dict[tuple[str, str], float] = {}

    def __call__(self, key: StreamKey, embedding_id: str) -> tuple[Direction, ...]:
        found = self._load(key.model_name, key.model_version)
        if found is None or not found.binds(embedding_id):
            return ()
        return found.directions

    def _load(self, model_name: str, version: str) -> DirectionSet | None:
        cached = (model_name, version)
        if cached in self._found:
            return self._found[cached]
        missed = self._missing_since.get(cached)
        if missed is not None and self._clock() - missed < self._retry_s:
            return None
        from retrain.mlflow_calls import TrackingError

        try:
            if self._registry is None:
                self._registry = self._make_registry()
            found = self._registry.load_directions(model_name, version)
        # An unregistered version, MLflow down, or an unreadable document (a ValueError from
        # its validation): explanations without names, never a consumer batch that fails and
        # is redelivered for ever.
        except (TrackingError, ValueError, OSError) as exc:
            log.warning(
                "no embedding directions", model=model_name, version=version, error=str(exc)
            )
            found = None
        if found is None:
            self._missing_since[cached] = self._clock()
        else:
            self._found[cached] = found
        return found
