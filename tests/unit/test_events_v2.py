"""inference-event/v2: the optional embedding and its embedding_id, accepted and refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from monitor.events import (
    EMBEDDING_MAX_LENGTH,
    REDACTED,
    InferenceEvent,
    InferenceEventV2,
    InvalidEvent,
    RejectCode,
    parse_event,
    to_json,
)
from tests.factories import inference_event

EMBEDDING_ID = "cxr-lesion@3/pca8-5f2c0a1b9e77"


def _v2(**fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(to_json(inference_event(1)))
    return {**document, "schema": "inference-event/v2", **fields}


def _reject(document: dict[str, Any] | bytes) -> InvalidEvent:
    raw = document if isinstance(document, bytes) else orjson.dumps(document)
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, "inference-event")
    return caught.value


def test_a_v2_event_with_an_embedding_round_trips() -> None:
    embedding = [0.5, -2.25, 1e-3] + [0.0] * (EMBEDDING_MAX_LENGTH - 3)
    event = parse_event(orjson.dumps(_v2(embedding=embedding, embedding_id=EMBEDDING_ID)))
    assert isinstance(event, InferenceEventV2) and isinstance(event, InferenceEvent)
    assert event.embedding == embedding and event.embedding_id == EMBEDDING_ID
    assert parse_event(to_json(event)) == event


def test_a_v2_event_without_an_embedding_is_valid_and_v1_still_is() -> None:
    assert isinstance(parse_event(orjson.dumps(_v2())), InferenceEventV2)
    v1 = parse_event(to_json(inference_event(2)), "inference-event")
    assert type(v1) is InferenceEvent and v1.schema_id == "inference-event/v1"


def test_an_embedding_longer_than_allowed_is_refused() -> None:
    refused = _reject(_v2(embedding=[0.1] * (EMBEDDING_MAX_LENGTH + 1), embedding_id=EMBEDDING_ID))
    assert refused.code is RejectCode.INVALID
    assert refused.reason == "embedding: List should have at most 32 items after validation, not 33"
    assert refused.redacted is not None and refused.redacted["embedding"] == REDACTED


def test_an_embedding_without_its_id_is_refused() -> None:
    refused = _reject(_v2(embedding=[0.1, 0.2]))
    assert refused.reason == "embedding_id: required when embedding is present (which projection)"


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_embedding_values_are_refused(token: bytes) -> None:
    raw = orjson.dumps(_v2(embedding=[0.1, 12345.0], embedding_id=EMBEDDING_ID))
    refused = _reject(raw.replace(b"12345.0", token))
    assert refused.code is RejectCode.NOT_JSON
    assert "every number must be finite" in refused.reason


def test_non_finite_values_built_in_python_are_refused() -> None:
    with pytest.raises(ValueError, match=r"embedding\.1\n  Input should be a finite number"):
        InferenceEventV2.model_validate(
            _v2(embedding=[0.1, float("inf")], embedding_id=EMBEDDING_ID)
        )


def test_a_v1_event_may_not_carry_an_embedding() -> None:
    document = _v2(embedding=[0.1], embedding_id=EMBEDDING_ID, schema="inference-event/v1")
    assert _reject(document).reason == "embedding: unexpected field; embedding_id: unexpected field"


def test_an_embedding_id_must_be_short_and_printable() -> None:
    refused = _reject(_v2(embedding=[0.1], embedding_id="model with spaces"))
    assert refused.reason.startswith("embedding_id: String should match pattern")
