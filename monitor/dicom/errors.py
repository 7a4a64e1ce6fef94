"""Why a file yielded no features: one small, typed hierarchy.

Every message is safe to log and to export from the hospital edge: it names DICOM keywords,
transfer syntaxes, plugin names and byte counts, never a DICOM value outside the metadata
allowlist, a file path (file names often carry patient names) or a UID.
"""

from __future__ import annotations

from typing import ClassVar, Final

# The pip packages that give pydicom a decoder for each compressed transfer syntax, the ones this
# project installs first. pydicom itself decodes the native, deflated and RLE syntaxes.
_LIBJPEG: Final = ("pylibjpeg-libjpeg", "python-gdcm")
_OPENJPEG: Final = ("pylibjpeg-openjpeg", "python-gdcm")
DECODER_PACKAGES: Final[dict[str, tuple[str, ...]]] = {
    "1.2.840.10008.1.2.4.50": (*_LIBJPEG, "pillow"),  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": (*_LIBJPEG, "pillow"),  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": _LIBJPEG,  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG Lossless, First-Order Prediction (SV1)
    "1.2.840.10008.1.2.4.80": (*_LIBJPEG, "pyjpegls"),  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": (*_LIBJPEG, "pyjpegls"),  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": (*_OPENJPEG, "pillow"),  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": (*_OPENJPEG, "pillow"),  # JPEG 2000
    "1.2.840.10008.1.2.4.201": ("pylibjpeg-openjpeg",),  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": ("pylibjpeg-openjpeg",),  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": ("pylibjpeg-openjpeg",),  # HTJ2K
    "1.2.840.10008.1.2.5": ("pylibjpeg-rle",),  # RLE Lossless (pydicom's own is slower)
}


class ExtractionError(Exception):
    """A file or data set from which no :class:`StudyFeatures` could be extracted.

    ``code`` is a short, bounded label (safe as a metric label). ``original`` is the exception
    that caused this one, kept for debugging at the edge only: its message may contain DICOM
    values, so it is deliberately not chained (tracebacks and log handlers do not print it).
    """

    code: ClassVar[str] = "extraction_error"

    def __init__(self, message: str, *, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.original = original


class UnreadableFileError(ExtractionError):
    """The file could not be opened or read (missing, a directory, no permission)."""

    code = "unreadable_file"


class NotDicomError(ExtractionError):
    """The bytes are not a DICOM data set (no 'DICM' prefix and no recognisable data set)."""

    code = "not_dicom"


class MalformedDicomError(ExtractionError):
    """The file is DICOM but its data set could not be parsed."""

    code = "malformed_dicom"


class NoPixelDataError(ExtractionError):
    """The data set has no image (SR, RT plan, DICOMDIR, presentation state...)."""

    code = "no_pixel_data"


class MissingStudyUIDError(ExtractionError):
    """The data set has no StudyInstanceUID, so no study_key can be derived."""

    code = "missing_study_uid"


class DecoderMissingError(ExtractionError):
    """The pixel data is compressed and no installed plugin can decode it.

    ``transfer_syntax_uid`` and ``packages`` (the pip packages that would decode it) say what to
    install.
    """

    code = "decoder_missing"

    def __init__(self, transfer_syntax_uid: str, name: str) -> None:
        self.transfer_syntax_uid = transfer_syntax_uid
        self.packages = DECODER_PACKAGES.get(transfer_syntax_uid, ())
        needs = " or ".join(self.packages) if self.packages else "plugin (none known)"
        super().__init__(f"transfer syntax {name} ({transfer_syntax_uid}) needs decoder {needs}")


class CorruptPixelDataError(ExtractionError):
    """The pixel data is truncated, inconsistent with its attributes, or fails to decode."""

    code = "corrupt_pixel_data"


class UnsupportedPixelDataError(ExtractionError):
    """Valid pixel data of a kind the extractor does not handle (video, unknown colour model)."""

    code = "unsupported_pixel_data"


ERROR_CLASSES: tuple[type[ExtractionError], ...] = (
    ExtractionError,
    UnreadableFileError,
    NotDicomError,
    MalformedDicomError,
    NoPixelDataError,
    MissingStudyUIDError,
    DecoderMissingError,
    CorruptPixelDataError,
    UnsupportedPixelDataError,
)
"""Every class in the hierarchy, for exhaustive metric labels and tests."""
