"""The edge extractor: one DICOM file in, PHI-free :class:`StudyFeatures` out.

``extract_features`` is a boundary: whatever goes wrong with a file comes out as an
:class:`ExtractionError` subclass whose message is safe to export, never as a pydicom, numpy or
OS exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from monitor.dicom.errors import (
    CorruptPixelDataError,
    ExtractionError,
    MalformedDicomError,
    MissingStudyUIDError,
    NoPixelDataError,
    NotDicomError,
    UnreadableFileError,
)
from monitor.dicom.metadata import get_value, screen_metadata, study_key_for
from monitor.dicom.pixels import PIXEL_KEYWORDS, pixel_statistics
from monitor.events import DicomMetadata
from monitor.phi import PhiRule

UNKNOWN_MODALITY: Final = "OT"
_MODALITY: Final = re.compile(r"^[A-Z0-9]{1,16}$")
_DATASET_GROUPS: Final = (0x0002, 0x0008)


@dataclass(frozen=True, slots=True)
class StudyFeatures:
    """What leaves the edge for one image: a pseudonymous key, allowlisted metadata, statistics.

    ``study_key`` is the HMAC of the StudyInstanceUID under the site key (64 lowercase hex);
    ``modality`` is the DICOM Modality, or "OT" when absent or invalid; ``pixel_stats`` holds the
    names of ``PIXEL_STAT_NAMES``.
    """

    study_key: str
    modality: str
    metadata: DicomMetadata
    pixel_stats: dict[str, float]
    phi_dropped: Mapping[str, PhiRule] = field(default_factory=dict)
    """Text fields left out of ``metadata`` because their value looked like PHI: keyword ->
    the rule it matched (monitor/phi.py). Names and rules only, never the values."""


def extract_features(source: str | os.PathLike[str] | Dataset, site_key: bytes) -> StudyFeatures:
    """Read a DICOM file (or take a data set) and return its features.

    Raises an :class:`ExtractionError` subclass for any file that yields no features: not DICOM,
    no pixel data, no StudyInstanceUID, missing decoder, corrupt or unsupported pixel data. An
    empty ``site_key`` is a programming error and raises ValueError.
    """
    if not site_key:
        raise ValueError("site_key is empty; an unkeyed hash of a UID is not a pseudonym")
    ds = source if isinstance(source, Dataset) else read_dataset(source)
    with _stage("checking the data set"):
        # Checked before the UID so that a non-image (SR, RT plan, DICOMDIR) is reported as such.
        if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
            raise NoPixelDataError("the data set has no pixel data (not an image)")
        uid = get_value(ds, "StudyInstanceUID")
        if not isinstance(uid, str) or not uid.strip(" \x00"):
            raise MissingStudyUIDError("the data set has no StudyInstanceUID")
        study_key = study_key_for(uid, site_key)
    with _stage("reading the allowlisted metadata"):
        screened = screen_metadata(ds)
    metadata = screened.metadata
    with _stage("computing pixel statistics"):
        stats = pixel_statistics(ds)
    modality = metadata.Modality if metadata.Modality is not None else ""
    return StudyFeatures(
        study_key=study_key,
        modality=modality if _MODALITY.match(modality) else UNKNOWN_MODALITY,
        metadata=metadata,
        pixel_stats=stats,
        phi_dropped=screened.phi_dropped,
    )


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a whole DICOM file, accepting data sets written without the Part 10 header."""
    try:
        with open(path, "rb") as file:
            return _read(file)
    except OSError as exc:
        # The path is not in the message: file names often carry patient names.
        reason = exc.strerror or type(exc).__name__
        raise UnreadableFileError(f"cannot read the file: {reason}", original=exc) from None


def _read(file: BinaryIO) -> Dataset:
    try:
        ds = pydicom.dcmread(file)
        if len(ds) == 0:
            _raise_if_cut_short(file)
        return ds
    except InvalidDicomError:
        pass  # no 'DICM' prefix: maybe a bare data set (ACR-NEMA style, old exports)
    except (OSError, ExtractionError):
        raise
    except Exception as exc:
        raise MalformedDicomError(
            f"the DICOM data set could not be parsed ({type(exc).__name__})", original=exc
        ) from None
    file.seek(0)
    if not _starts_like_dataset(file.read(4)):
        raise NotDicomError("not a DICOM file: no 'DICM' prefix and no data set at the start")
    file.seek(0)
    try:
        return pydicom.dcmread(file, force=True)
    except Exception as exc:
        raise NotDicomError(
            f"not a DICOM file: no 'DICM' prefix and unparsable ({type(exc).__name__})",
            original=exc,
        ) from None


def _raise_if_cut_short(file: BinaryIO) -> None:
    """Explain an empty read: pydicom drops the whole data set when a file ends inside
    encapsulated pixel data, though everything before the pixel data is intact."""
    file.seek(0)
    if len(pydicom.dcmread(file, stop_before_pixels=True)) > 0:
        raise CorruptPixelDataError("pixel data is truncated: the file ends inside it")


def _starts_like_dataset(head: bytes) -> bool:
    """Whether the first tag is in group 0002 or 0008, as in any data set, in either byte order.

    ``force=True`` would "read" any bytes as elements, so it is used only on files whose first
    bytes already look like a data set.
    """
    if len(head) < 4:
        return False
    little, big = int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")
    return little in _DATASET_GROUPS or big in _DATASET_GROUPS


@contextmanager
def _stage(action: str) -> Iterator[None]:
    """Turn an unexpected exception into an :class:`ExtractionError` saying what was going on."""
    try:
        yield
    except ExtractionError:
        raise
    except Exception as exc:  # the boundary: a bad file must never surface as anything else
        raise ExtractionError(
            f"unexpected {type(exc).__name__} while {action}", original=exc
        ) from None
