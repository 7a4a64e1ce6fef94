"""Training data sets from labelled inference events, with their lineage.

Values in, values out: the runtime builds :class:`LabelledCase` values from the database; this
module splits them, keeps the PCCP locked test set out, and describes the result in a
:class:`DatasetManifest` whose SHA-256 identifies the data set (same inputs, same hash).

**The unit of the split is the study.** Events are pseudonymous and carry no patient id, so two
studies of one patient cannot be recognised and may land on both sides; a patient-level split
needs a patient pseudonym from the edge (not in event contract v1). Each study goes to train or
validation by a hash of (seed, study_key) alone, so adding cases never moves an existing study
from one side to the other, and a model's validation score stays comparable across retrains.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitor.events import LabelSource, UtcDatetime

MANIFEST_VERSION: Final = 1
_STUDY_KEY: Final = re.compile(r"^[0-9a-f]{64}$")


class DatasetError(Exception):
    """Base of the errors raised while assembling a data set."""


class LockedTestSetError(DatasetError):
    """The locked test set's manifest is unreadable or its hash does not match its keys."""


class LockedTestOverlapError(DatasetError):
    """Some training candidates are in the locked test set: the job must not train on them."""

    def __init__(self, overlapping: Iterable[str]) -> None:
        keys = sorted(overlapping)
        self.count = len(keys)
        shown = ", ".join(key[:12] for key in keys[:3])
        more = f" and {self.count - 3} more" if self.count > 3 else ""
        super().__init__(
            f"{self.count} studies are in the locked test set (e.g. {shown}{more}); "
            "they must never be used for training or validation"
        )


class DuplicateStudyError(DatasetError):
    """One study appears more than once among the cases of a data set."""


class Side(StrEnum):
    """The side of the split a study is on."""

    TRAIN = "train"
    VALIDATION = "validation"


@dataclass(frozen=True, slots=True)
class LabelledCase:
    """One labelled study of one model: its labels in force and where its image is."""

    study_key: str
    site_id: str
    model_name: str
    labels: Mapping[str, int]
    label_source: LabelSource
    predicted_at: datetime
    labelled_at: datetime
    dicom_uri: str | None


@dataclass(frozen=True, slots=True)
class LockedTestSet:
    """The PCCP locked test set: study keys never trained or validated on.

    ``sha256`` is over the sorted keys, one per line; a manifest whose hash does not match its
    keys has been edited and is refused.
    """

    study_keys: frozenset[str]
    sha256: str

    @classmethod
    def from_keys(cls, study_keys: Iterable[str]) -> Self:
        """The set of ``study_keys`` with its hash computed."""
        keys = frozenset(study_keys)
        if bad := [key for key in keys if not _STUDY_KEY.match(key)]:
            raise LockedTestSetError(f"{len(bad)} entries are not 64-hex study keys")
        return cls(keys, _keys_sha256(keys))

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read ``{"study_keys": [...], "sha256": "..."}`` and verify the hash."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            keys, recorded = document["study_keys"], document["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LockedTestSetError(f"unreadable locked test set ({type(exc).__name__})") from exc
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise LockedTestSetError("study_keys must be a list of strings")
        locked = cls.from_keys(keys)
        if len(locked.study_keys) != len(keys):
            raise LockedTestSetError("the locked test set lists a study key twice")
        if locked.sha256 != recorded:
            raise LockedTestSetError(
                f"the locked test set's hash does not match its keys (recorded "
                f"{str(recorded)[:12]}, computed {locked.sha256[:12]}): it has been altered"
            )
        return locked

    def write(self, path: Path) -> None:
        """Store the manifest that :meth:`load` reads."""
        document = {"study_keys": sorted(self.study_keys), "sha256": self.sha256}
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def _keys_sha256(keys: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class Split:
    """Cases on each side of the split, ordered by study key."""

    train: tuple[LabelledCase, ...]
    validation: tuple[LabelledCase, ...]


def split_of(study_key: str, *, seed: int, validation_share: float) -> Side:
    """The side of the split a study is on: a function of (seed, study_key) only."""
    digest = hashlib.sha256(f"{seed}:{study_key}".encode("ascii")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return Side.VALIDATION if position < validation_share else Side.TRAIN


def split_cases(
    cases: Iterable[LabelledCase], *, seed: int, validation_share: float = 0.2
) -> Split:
    """Deterministic study-level split (see the module docstring for why the study)."""
    if not 0.0 <= validation_share < 1.0:
        raise ValueError("validation_share must be in [0, 1)")
    train: list[LabelledCase] = []
    validation: list[LabelledCase] = []
    for case in sorted(cases, key=lambda c: c.study_key):
        side = split_of(case.study_key, seed=seed, validation_share=validation_share)
        (validation if side is Side.VALIDATION else train).append(case)
    return Split(tuple(train), tuple(validation))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ManifestCase(_Frozen):
    """One study of a data set, as its lineage records it."""

    study_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    site_id: str
    side: Side
    labels: dict[str, int]
    label_source: LabelSource
    predicted_at: UtcDatetime
    labelled_at: UtcDatetime
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the decoded image (``retrain.images.content_sha256``)."""


class DatasetManifest(_Frozen):
    """What a data set is made of; :meth:`sha256` identifies it.

    Cases are kept sorted by study key and totals are derived from them, so equal inputs in
    any order give an equal manifest and an equal hash.
    """

    version: int = MANIFEST_VERSION
    model_name: str
    seed: int
    validation_share: float
    locked_test_sha256: str
    dropped_without_uri: int = Field(ge=0)
    cases: tuple[ManifestCase, ...]
    totals_by_split: dict[Side, int] = Field(default_factory=dict)
    totals_by_site: dict[str, dict[Side, int]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _canonical(cls, data: object) -> object:
        if not isinstance(data, dict) or "cases" not in data:
            return data
        cases = sorted(
            (ManifestCase.model_validate(c) for c in data["cases"]), key=lambda c: c.study_key
        )
        by_split = Counter(case.side for case in cases)
        by_site: dict[str, Counter[Side]] = {}
        for case in cases:
            by_site.setdefault(case.site_id, Counter())[case.side] += 1
        return data | {
            "cases": tuple(cases),
            "totals_by_split": {side: by_split[side] for side in Side},
            "totals_by_site": {
                site: {side: counts[side] for side in Side} for site, counts in by_site.items()
            },
        }

    def canonical_json(self) -> bytes:
        """The manifest as JSON with sorted keys and no whitespace: what :meth:`sha256` hashes."""
        document = self.model_dump(mode="json")
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def sha256(self) -> str:
        """SHA-256 of :meth:`canonical_json`: the data set's identity in lineage records."""
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def write(self, path: Path) -> str:
        """Store the canonical JSON at ``path`` and return its hash."""
        path.write_bytes(self.canonical_json())
        return self.sha256()

    @classmethod
    def read(cls, path: Path, expected_sha256: str | None = None) -> DatasetManifest:
        """Read a stored manifest, checking it against the hash recorded for it, if given."""
        manifest = cls.model_validate_json(path.read_bytes())
        if expected_sha256 is not None and manifest.sha256() != expected_sha256:
            raise DatasetError("the stored manifest does not match its recorded hash")
        return manifest


@dataclass(frozen=True, slots=True)
class Dataset:
    """An assembled data set: the cases on each side, and the manifest describing them."""

    split: Split
    manifest: DatasetManifest

    @property
    def dropped_without_uri(self) -> int:
        """Labelled cases left out because they have no ``dicom_uri``."""
        return self.manifest.dropped_without_uri


ContentHasher = Callable[[str], str]
"""``dicom_uri`` -> SHA-256 of its image; ``retrain.images.uri_content_sha256`` in the job."""


def assemble(
    cases: Iterable[LabelledCase],
    locked: LockedTestSet,
    *,
    seed: int,
    content_sha256: ContentHasher,
    validation_share: float = 0.2,
) -> Dataset:
    """Split ``cases`` into train and validation and describe the result.

    Cases without a ``dicom_uri`` are dropped and counted. Raises
    :class:`LockedTestOverlapError` if any case is in the locked test set (the job fails rather
    than silently dropping it: an overlap means the test set or the label feed is wrong), and
    :class:`DuplicateStudyError` or :class:`DatasetError` for inconsistent input.
    """
    candidates = list(cases)
    usable = [case for case in candidates if case.dicom_uri is not None]
    _check_cases(usable)
    check_locked(usable, locked)
    split = split_cases(usable, seed=seed, validation_share=validation_share)
    sides = [(Side.TRAIN, split.train), (Side.VALIDATION, split.validation)]
    manifest = DatasetManifest(
        model_name=usable[0].model_name if usable else "",
        seed=seed,
        validation_share=validation_share,
        locked_test_sha256=locked.sha256,
        dropped_without_uri=len(candidates) - len(usable),
        cases=tuple(
            _manifest_case(case, side, content_sha256) for side, group in sides for case in group
        ),
    )
    return Dataset(split, manifest)


class CaseRecord(_Frozen):
    """A :class:`LabelledCase` as one line of a case file (:func:`write_cases`)."""

    study_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    site_id: str
    model_name: str
    labels: dict[str, int]
    label_source: LabelSource
    predicted_at: UtcDatetime
    labelled_at: UtcDatetime
    dicom_uri: str

    def case(self) -> LabelledCase:
        """The labelled case this line holds."""
        return LabelledCase(**self.model_dump())


def write_cases(path: Path, cases: Iterable[LabelledCase]) -> None:
    """Store labelled cases (each with its image's URI) as JSON lines, sorted by study key:
    a data set that a later retraining can read back (:func:`read_cases`)."""
    records = [
        CaseRecord.model_validate(case, from_attributes=True).model_dump_json()
        for case in sorted(cases, key=lambda c: c.study_key)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(f"{line}\n" for line in records), encoding="utf-8")
    partial.replace(path)


def read_cases(path: Path) -> tuple[LabelledCase, ...]:
    """The cases :func:`write_cases` stored; :class:`DatasetError` naming the file and line
    for a missing file or a line that is not a case."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable case file ({type(exc).__name__})") from exc
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cases.append(CaseRecord.model_validate_json(line).case())
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: not a labelled case") from exc
    return tuple(cases)


def check_locked(cases: Iterable[LabelledCase], locked: LockedTestSet) -> None:
    """:class:`LockedTestOverlapError` if any case is in the locked test set."""
    if overlap := {case.study_key for case in cases} & locked.study_keys:
        raise LockedTestOverlapError(overlap)


def _check_cases(cases: list[LabelledCase]) -> None:
    if len({case.model_name for case in cases}) > 1:
        raise DatasetError("a data set is for one model; the cases name several")
    seen = Counter(case.study_key for case in cases)
    if duplicates := [key for key, count in seen.items() if count > 1]:
        raise DuplicateStudyError(f"{len(duplicates)} studies appear more than once")


def _manifest_case(case: LabelledCase, side: Side, hasher: ContentHasher) -> ManifestCase:
    assert case.dicom_uri is not None  # filtered by assemble
    return ManifestCase(
        study_key=case.study_key,
        site_id=case.site_id,
        side=side,
        labels=dict(case.labels),
        label_source=case.label_source,
        predicted_at=case.predicted_at,
        labelled_at=case.labelled_at,
        content_sha256=hasher(case.dicom_uri),
    )
