"""The consumer's direction source: lazy, cached per model version, bound to the projection."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.drift.alerts import StreamKey
from monitor.drift.directions import DirectionSet, fit_direction
from monitor.service.drift.directions import RegistryDirections
from retrain.mlflow_calls import TrackingError

KEY = StreamKey("site-01", "cxr", "3")
FINGERPRINT = "ab" * 32
DIRECTIONS = DirectionSet(
    projection_fingerprint=FINGERPRINT,
    directions=(
        fit_direction(
            "lateral_views",
            "towards lateral views",
            np.eye(3)[:2],
            np.add(np.eye(3)[:2], [0.0, 0.0, 1.0]),
        ),
    ),
)


class CountingRegistry:
    """Our registry's one method the source uses, counting the calls."""

    def __init__(self, found: DirectionSet | None, fail: Exception | None = None) -> None:
        self.found, self.fail, self.calls = found, fail, 0

    def load_directions(self, model_name: str, version: str) -> DirectionSet | None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return self.found


def test_directions_are_read_once_per_version_and_only_for_their_projection() -> None:
    registry = CountingRegistry(DIRECTIONS)
    built: list[CountingRegistry] = []

    def build() -> CountingRegistry:
        built.append(registry)
        return registry

    source = RegistryDirections(build)  # type: ignore[arg-type]
    assert built == []  # nothing opened before a stream asks
    assert source(KEY, "cxr@3/pca3-" + FINGERPRINT[:12]) == DIRECTIONS.directions
    assert source(KEY, "cxr@3/pca3-ffffffffffff") == ()
    assert registry.calls == 1 and len(built) == 1


@pytest.mark.parametrize(
    "failure",
    [
        TrackingError("load directions failed after 3 attempts: connection refused"),
        ValueError("1 validation error for DirectionSet"),
    ],
)
def test_an_unreachable_registry_or_bad_document_means_no_directions_not_a_failed_batch(
    failure: Exception,
) -> None:
    registry = CountingRegistry(None, fail=failure)
    source = RegistryDirections(lambda: registry)  # type: ignore[arg-type,return-value]
    assert source(KEY, "cxr@3/pca3-" + FINGERPRINT[:12]) == ()
    assert source(KEY, "cxr@3/pca3-" + FINGERPRINT[:12]) == ()
    assert registry.calls == 1


def test_a_version_without_directions_is_asked_again_after_the_retry_interval() -> None:
    registry = CountingRegistry(None)
    now = [0.0]
    source = RegistryDirections(lambda: registry, retry_s=600, clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    embedding_id = "cxr@3/pca3-" + FINGERPRINT[:12]
    assert source(KEY, embedding_id) == ()
    registry.found = DIRECTIONS  # logged after the consumer started
    now[0] = 599.0
    assert source(KEY, embedding_id) == () and registry.calls == 1
    now[0] = 601.0
    assert source(KEY, embedding_id) == DIRECTIONS.directions and registry.calls == 2
    now[0] = 5000.0
    assert source(KEY, embedding_id) == DIRECTIONS.directions and registry.calls == 2
