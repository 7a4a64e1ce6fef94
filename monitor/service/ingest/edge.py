"""The edge extractor as a command: walk paths, extract features, report typed errors.

No output line holds the input path: file names often carry patient names ("DOE_JOHN_CXR.dcm").
A caller that must match lines to files asks for ``file_key``, a keyed hash of the path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from monitor.dicom import ExtractionError, extract_features
from monitor.phi import PhiRule

FILE_KEY_CONTEXT: Final = b"radsentry extract file_key v1"
"""Derives the file-key secret from the site key, so a file key is never equal to a study key
(a file named after its StudyInstanceUID would otherwise hash to exactly its study_key)."""


@dataclass(frozen=True, slots=True)
class Extracted:
    """One output line and what the summary counts about it."""

    line: str
    ok: bool
    phi_dropped: Mapping[str, PhiRule] = field(default_factory=dict)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and every file below named directories, in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def file_key_for(path: str | os.PathLike[str], site_key: bytes) -> str:
    """HMAC-SHA256 (64 hex) of ``path`` under a key derived from the site key.

    ``path`` as the extractor names the file: the argument as pathlib renders it
    (``str(Path(arg))``), joined with the file's path below it when the argument is a directory.
    Without the site key nobody can test a guessed name ("DOE_JOHN.dcm") against it.
    """
    if not site_key:
        raise ValueError("site_key is empty; an unkeyed hash of a path is not a pseudonym")
    secret = hmac.new(site_key, FILE_KEY_CONTEXT, hashlib.sha256).digest()
    return hmac.new(secret, os.fsencode(path), hashlib.sha256).hexdigest()


def extract_paths(
    paths: Iterable[Path], site_key: bytes, *, file_keys: bool = False
) -> Iterator[Extracted]:
    """One JSON line per file; ``file_keys``: each line also holds the file's ``file_key``."""
    for path in iter_files(paths):
        head: dict[str, object] = {"file_key": file_key_for(path, site_key)} if file_keys else {}
        try:
            features = extract_features(path, site_key)
        except ExtractionError as exc:
            error = {**head, "error": type(exc).__name__, "message": str(exc)}
            yield Extracted(orjson.dumps(error).decode(), False)
            continue
        line: dict[str, object] = {
            **head,
            "study_key": features.study_key,
            "modality": features.modality,
            "metadata": features.metadata.model_dump(mode="json", exclude_none=True),
            "pixel_stats": features.pixel_stats,
            "phi_dropped": dict(sorted(features.phi_dropped.items())),
        }
        yield Extracted(orjson.dumps(line).decode(), True, features.phi_dropped)
