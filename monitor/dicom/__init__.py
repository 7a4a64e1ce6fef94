"""DICOM feature extraction at the hospital edge: allowlisted metadata, study key, pixel stats.

Nothing but :class:`StudyFeatures` leaves this package: a pseudonymous ``study_key`` (HMAC of the
StudyInstanceUID), the allowlisted header metadata and exact pixel statistics. docs/extraction.md
states the rules.
"""

from monitor.dicom.errors import (
    CorruptPixelDataError,
    DecoderMissingError,
    ExtractionError,
    MalformedDicomError,
    MissingStudyUIDError,
    NoPixelDataError,
    NotDicomError,
    UnreadableFileError,
    UnsupportedPixelDataError,
)
from monitor.dicom.extract import StudyFeatures, extract_features, read_dataset
from monitor.dicom.metadata import (
    ScreenedMetadata,
    age_band,
    extract_metadata,
    screen_metadata,
    study_key_for,
)
from monitor.dicom.pixels import MAX_FRAMES, pixel_statistics
from monitor.pixel_names import PIXEL_STAT_NAMES

__all__ = [
    "MAX_FRAMES",
    "PIXEL_STAT_NAMES",
    "CorruptPixelDataError",
    "DecoderMissingError",
    "ExtractionError",
    "MalformedDicomError",
    "MissingStudyUIDError",
    "NoPixelDataError",
    "NotDicomError",
    "ScreenedMetadata",
    "StudyFeatures",
    "UnreadableFileError",
    "UnsupportedPixelDataError",
    "age_band",
    "extract_features",
    "extract_metadata",
    "pixel_statistics",
    "read_dataset",
    "screen_metadata",
    "study_key_for",
]
