"""Known embedding directions for the drift engine, read from MLflow and cached.

The engine is pure (:mod:`monitor.drift.engine`): it asks a
:class:`~monitor.drift.engine.DirectionSource` for a stream's directions once per stream and
process, when it first scores the stream's embedding detector. This source reads the set logged
with the model version (``retrain.tracking.Registry.load_directions``), keeps it per (model,
version), and hands it over only when it was fitted in the projection the stream's embeddings
come from (the ``embedding_id`` names it). No directions (none logged, another projection, or
MLflow unreachable, which is logged) only means explanations name embedding components.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from monitor.drift.alerts import StreamKey
from monitor.drift.directions import Direction, DirectionSet

if TYPE_CHECKING:
    from retrain.tracking import Registry

log = structlog.get_logger(__name__)


class RegistryDirections:
    """A :class:`~monitor.drift.engine.DirectionSource` over the model registry."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        """``registry`` builds the registry on first need: a consumer whose streams carry no
        embeddings never opens MLflow."""
        self._make_registry = registry
        self._registry: Registry | None = None
        self._cache: dict[tuple[str, str], DirectionSet | None] = {}

    def __call__(self, key: StreamKey, embedding_id: str) -> tuple[Direction, ...]:
        found = self._load(key.model_name, key.model_version)
        if found is None or not found.binds(embedding_id):
            return ()
        return found.directions

    def _load(self, model_name: str, version: str) -> DirectionSet | None:
        cached = (model_name, version)
        if cached not in self._cache:
            from retrain.mlflow_calls import TrackingError

            try:
                if self._registry is None:
                    self._registry = self._make_registry()
                self._cache[cached] = self._registry.load_directions(model_name, version)
            # An unregistered version, MLflow down, or an unreadable document (a ValueError from
            # its validation): explanations without names, never a consumer batch that fails
            # and is redelivered for ever.
            except (TrackingError, ValueError, OSError) as exc:
                log.warning(
                    "no embedding directions", model=model_name, version=version, error=str(exc)
                )
                self._cache[cached] = None
        return self._cache[cached]
