"""The edge extractor as a command: walk paths, extract features, report typed errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from monitor.dicom import ExtractionError, extract_features


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and every file below named directories, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def extract_paths(paths: Iterable[Path], site_key: bytes) -> Iterator[tuple[str, bool]]:
    """One JSON line per file and whether it succeeded."""
    for path in iter_files(paths):
        try:
            features = extract_features(path, site_key)
        except ExtractionError as exc:
            error = {"file": str(path), "error": type(exc).__name__, "message": str(exc)}
            yield orjson.dumps(error).decode(), False
            continue
        line: dict[str, object] = {
            "file": str(path),
            "study_key": features.study_key,
            "modality": features.modality,
            "metadata": features.metadata.model_dump(mode="json", exclude_none=True),
            "pixel_stats": features.pixel_stats,
        }
        yield orjson.dumps(line).decode(), True
