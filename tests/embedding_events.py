"""Seeded inference-event/v2 streams for the embedding detector's tests: the feature simulator's
events (``monitor.simulate.features``) with an embedding per event drawn from a fixed Gaussian,
whose mean moves by ``shift`` from event ``change_at`` on."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from monitor.events import InferenceEvent, InferenceEventV2

DIMENSIONS = 8
EMBEDDING_ID = "cxr-lesion@1.0.0/pca8-0123456789ab"
SPREAD = 2.0 / np.sqrt(1.0 + np.arange(DIMENSIONS))
"""Per-component standard deviations, decreasing as a PCA's do."""


def embeddings(
    n: int, seed: int, shift: Sequence[float] | NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """``n`` embeddings of the stable distribution (plus ``shift`` when given)."""
    values = np.random.default_rng(seed).normal(size=(n, DIMENSIONS)) * SPREAD
    return values + (np.asarray(shift) if shift is not None else 0.0)


def with_embeddings(
    events: Iterable[InferenceEvent],
    seed: int,
    *,
    change_at: int | None = None,
    shift: Sequence[float] | NDArray[np.float64] | None = None,
    embedding_id: str = EMBEDDING_ID,
    missing_every: int | None = None,
) -> list[InferenceEvent]:
    """``events`` as v2 events with embeddings; every ``missing_every``-th carries none."""
    source = list(events)
    vectors = embeddings(len(source), seed)
    if change_at is not None and shift is not None:
        vectors[change_at:] += np.asarray(shift)
    out: list[InferenceEvent] = []
    for index, (event, vector) in enumerate(zip(source, vectors, strict=True)):
        fields = event.model_dump(exclude={"schema_id"})
        if missing_every is not None and index % missing_every == missing_every - 1:
            out.append(InferenceEventV2(**fields))
        else:
            out.append(
                InferenceEventV2(**fields, embedding=vector.tolist(), embedding_id=embedding_id)
            )
    return out
