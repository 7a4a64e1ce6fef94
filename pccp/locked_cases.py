"""The locked test set's cases: labels, images and subgroup metadata of every locked study.

The plan fixes the locked test set by its study keys and their SHA-256
(``retrain.dataset.LockedTestSet``); this file says where each study's image is, its reference
labels, and the allowlisted DICOM metadata the gate groups by (``PatientSex``, ...). It is
JSON lines, one case per line, sorted by study key; :func:`read_locked_cases` refuses a file
whose study keys are not exactly the manifest's, so the gate can never evaluate on a set other
than the locked one. Nothing here is PHI: study keys are pseudonyms and the metadata is the
event contract's allowlist (``monitor.events.DicomMetadata``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, ValidationError

from monitor.dicom.extract import read_dataset
from monitor.dicom.metadata import extract_metadata
from monitor.events import DicomMetadata, LabelSource
from retrain.dataset import LabelledCase, LockedTestSet, LockedTestSetError


class LockedCase(BaseModel):
    """One study of the locked test set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_key: str
    site_id: str
    labels: dict[str, int]
    label_source: LabelSource
    dicom_uri: str
    metadata: DicomMetadata = DicomMetadata()

    def subgroup(self, field: str) -> str:
        """The case's value of a grouping field: ``site`` or a metadata keyword ("unknown" if
        the header does not say)."""
        if field == "site":
            return self.site_id
        value = getattr(self.metadata, field, None)
        return "unknown" if value is None else str(value)

    def as_labelled(self, model_name: str, at: datetime) -> LabelledCase:
        return LabelledCase(
            study_key=self.study_key,
            site_id=self.site_id,
            model_name=model_name,
            labels=self.labels,
            label_source=self.label_source,
            predicted_at=at,
            labelled_at=at,
            dicom_uri=self.dicom_uri,
        )


def from_labelled(cases: Sequence[LabelledCase]) -> list[LockedCase]:
    """Locked cases from labelled cases with local (``file://``) images, reading each header's
    allowlisted metadata (no pixels)."""
    locked = []
    for case in cases:
        if case.dicom_uri is None or not case.dicom_uri.startswith("file://"):
            raise LockedTestSetError(f"study {case.study_key[:12]} has no local image")
        header = read_dataset(unquote(urlparse(case.dicom_uri).path))
        locked.append(
            LockedCase(
                study_key=case.study_key,
                site_id=case.site_id,
                labels=dict(case.labels),
                label_source=case.label_source,
                dicom_uri=case.dicom_uri,
                metadata=extract_metadata(header),
            )
        )
    return locked


def write_locked_cases(path: Path, cases: Iterable[LockedCase]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [case.model_dump_json() for case in sorted(cases, key=lambda c: c.study_key)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_locked_cases(path: Path, locked: LockedTestSet) -> list[LockedCase]:
    """The cases of ``path``; :class:`LockedTestSetError` unless their keys are exactly the
    locked set's."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LockedTestSetError(
            f"{path}: the locked test cases are unreadable ({type(exc).__name__})"
        ) from exc
    cases: list[LockedCase] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cases.append(LockedCase.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as exc:
            raise LockedTestSetError(f"{path}:{number}: not a locked case ({exc})") from exc
    keys = [case.study_key for case in cases]
    missing = locked.study_keys - set(keys)
    extra = set(keys) - locked.study_keys
    if missing or extra or len(keys) != len(set(keys)):
        raise LockedTestSetError(
            f"{path}: its studies are not the locked test set ({len(missing)} missing, "
            f"{len(extra)} not in the set, {len(keys) - len(set(keys))} repeated)"
        )
    return cases
