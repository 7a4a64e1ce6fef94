"""JSON Schemas of the event contract, generated from the pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from monitor.events import (
    INFERENCE_SCHEMA,
    INFERENCE_SCHEMA_V2,
    LABEL_SCHEMA,
    InferenceEvent,
    InferenceEventV2,
    LabelEvent,
)

SCHEMA_FILES: dict[str, type[InferenceEvent] | type[LabelEvent]] = {
    INFERENCE_SCHEMA.replace("/", ".") + ".schema.json": InferenceEvent,
    INFERENCE_SCHEMA_V2.replace("/", ".") + ".schema.json": InferenceEventV2,
    LABEL_SCHEMA.replace("/", ".") + ".schema.json": LabelEvent,
}


def json_schema(model: type[InferenceEvent] | type[LabelEvent]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://radsentry.dev/schemas/{model.model_fields['schema_id'].default}"
    return schema


def render(model: type[InferenceEvent] | type[LabelEvent]) -> bytes:
    options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    return orjson.dumps(json_schema(model), option=options) + b"\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_FILES.items():
        path = directory / name
        path.write_bytes(render(model))
        written.append(path)
    return written
