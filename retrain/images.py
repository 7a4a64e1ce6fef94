"""Training images from ``dicom_uri``: fetched, decoded as the edge extractor decodes, resized.

A ``dicom_uri`` is ``file://`` (a path the training job can read) or ``http(s)://`` (a WADO-RS
resource of a DICOMweb service, fetched with ``dicomweb-client``). Either way the data set goes
through the edge extractor's pixel pipeline (``monitor.dicom.pixels``): the same decoder
selection, frame decoding, modality LUT precedence and MONOCHROME1 inversion, so the values a
model trains on are the values whose statistics the monitor watches. Only then is the first frame
normalised to [0, 1] and resized.

Every failure comes out as :class:`ImageError` (or an ``ExtractionError`` from the pipeline,
which it wraps), with a message that names neither the path nor any UID.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import numpy as np
import requests
import torch
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.uri import URI, URIType
from numpy.typing import NDArray
from pydicom import Dataset

from monitor.dicom.errors import ExtractionError
from monitor.dicom.extract import read_dataset
from monitor.dicom.pixels import (
    PIXEL_KEYWORDS,
    DecodedPixels,
    decode_frames,
    modality_luts,
    stored_range,  # MONOCHROME1 inverts about exactly the extractor's range
)

Image = NDArray[np.float32]


class ImageError(Exception):
    """A ``dicom_uri`` that gives no training image (unreachable, not DICOM, not greyscale)."""


class DicomWebSource(Protocol):
    """Our port to a DICOMweb service: one WADO-RS resource URL in, its data sets out."""

    def retrieve(self, uri: str) -> list[Dataset]:
        """Every instance of the study, series or instance that ``uri`` names."""
        ...


class DicomWebClientSource:
    """:class:`DicomWebSource` over ``dicomweb-client`` (WADO-RS, ``application/dicom``).

    ``uri`` is ``<service>/studies/<id>[/series/<id>[/instances/<id>]]``. The ids are opaque:
    an edge hands out locators, not DICOM UIDs (``monitor.events.DicomUri``), so they are parsed
    permissively.
    """

    def __init__(self, session: requests.Session | None = None, timeout_s: float = 30.0) -> None:
        self._session = session
        self._timeout_s = timeout_s

    def retrieve(self, uri: str) -> list[Dataset]:
        """Fetch the instances of the resource named by ``uri``."""
        try:
            resource = URI.from_string(uri, permissive=True)
        except ValueError:
            raise ImageError("not a WADO-RS study, series or instance URL") from None
        client = DICOMwebClient(
            url=resource.base_url,
            session=self._session,
            permissive_uid=True,
            timeout=self._timeout_s,
        )
        study = resource.study_instance_uid
        series = resource.series_instance_uid
        if resource.type == URIType.STUDY and study is not None:
            return client.retrieve_study(study)
        if resource.type == URIType.SERIES and study is not None and series is not None:
            return client.retrieve_series(study, series)
        if resource.type == URIType.INSTANCE and study and series and resource.sop_instance_uid:
            return [client.retrieve_instance(study, series, resource.sop_instance_uid)]
        raise ImageError("the URL names no study, series or instance")


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """One training image and the SHA-256 of its decoded pixel content."""

    pixels: Image
    content_sha256: str


def read_uri(uri: str, dicomweb: DicomWebSource | None = None) -> Dataset:
    """The image data set behind ``uri``.

    For a DICOMweb resource holding several images, the one with the smallest SOP Instance UID
    is taken, so the choice is the same on every run.
    """
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        try:
            return read_dataset(_file_path(uri))
        except ExtractionError as exc:
            raise ImageError(str(exc)) from exc
    if scheme not in ("http", "https"):
        raise ImageError(f"unsupported dicom_uri scheme {scheme[:16]!r}")
    source = dicomweb if dicomweb is not None else DicomWebClientSource()
    try:
        datasets = source.retrieve(uri)
    except ImageError:
        raise
    except Exception as exc:  # the network boundary: HTTP, multipart and parse errors alike
        raise ImageError(f"DICOMweb retrieval failed ({type(exc).__name__})") from exc
    images = [ds for ds in datasets if any(keyword in ds for keyword in PIXEL_KEYWORDS)]
    if not images:
        raise ImageError("the DICOMweb resource holds no image")
    return min(images, key=lambda ds: str(ds.get("SOPInstanceUID", "")))


def modality_values(ds: Dataset) -> NDArray[np.float64]:
    """The first frame as the extractor analyses it: modality LUT applied, MONOCHROME1 inverted.

    Its values and their counts equal ``monitor.dicom.pixels.value_histogram`` of a
    single-frame greyscale image.
    """
    decoded = _decode(ds)
    if decoded.array.ndim != 3:
        raise ImageError(f"only greyscale images are supported ({decoded.photometric[:32]!r})")
    frame = decoded.array[0]
    lut = modality_luts(ds, decoded.frame_indices[:1])[0]
    values = lut.apply(frame, ds)
    if decoded.photometric == "MONOCHROME1":
        stored = np.array([frame.min(), frame.max()])
        ends = lut.apply(stored_range(ds, stored), ds)
        values = ends.min() + ends.max() - values
    return values


def content_sha256(ds: Dataset) -> str:
    """SHA-256 of the decoded first frame (dtype, shape and bytes).

    Taken over decoded pixels, not file bytes, so the same image hashes the same whether it was
    read from disk or fetched over DICOMweb, in any transfer syntax, whatever its header says.
    """
    array = np.ascontiguousarray(_decode(ds).array[0])
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def to_training_image(values: NDArray[Any], size: int) -> Image:
    """Min-max normalise to [0, 1], then resize to ``size`` x ``size``.

    Area averaging when shrinking (no aliasing of noise and ribs), bilinear when enlarging.
    Non-square images are stretched: chest radiographs are near-square, and padding would teach
    the model where the border is.
    """
    if size < 1:
        raise ValueError("size must be positive")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    tensor = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))[None, None]
    shrinking = tensor.shape[-2] >= size and tensor.shape[-1] >= size
    if shrinking:
        resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="area")
    else:
        resized = torch.nn.functional.interpolate(
            tensor, size=(size, size), mode="bilinear", align_corners=False
        )
    result: Image = resized[0, 0].clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)
    return result


def fetch_image(uri: str, size: int, dicomweb: DicomWebSource | None = None) -> FetchedImage:
    """Read ``uri`` and return its training image and content hash."""
    ds = read_uri(uri, dicomweb)
    return FetchedImage(to_training_image(modality_values(ds), size), content_sha256(ds))


def load_image(uri: str, size: int, dicomweb: DicomWebSource | None = None) -> Image:
    """The ``size`` x ``size`` float32 training image in [0, 1] behind ``uri``."""
    return fetch_image(uri, size, dicomweb).pixels


def uri_content_sha256(uri: str, dicomweb: DicomWebSource | None = None) -> str:
    """:func:`content_sha256` of the image behind ``uri``."""
    return content_sha256(read_uri(uri, dicomweb))


def _decode(ds: Dataset) -> DecodedPixels:
    try:
        return decode_frames(ds)
    except ExtractionError as exc:
        raise ImageError(str(exc)) from exc


def _file_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ImageError("file:// URIs on another host are not supported")
    return Path(unquote(parts.path))
