"""Exact pixel statistics from one histogram of distinct values.

The image is reduced once to (distinct stored value, count) pairs: ``np.bincount`` for 8/16-bit
data (and wider integers of modest range), ``np.unique`` otherwise. Everything else (the modality
LUT, MONOCHROME1 inversion, percentiles, mean, std, bins, entropy) works on those pairs, so the
per-pixel cost is one pass, and the results still equal ``np.percentile``/``np.mean``/``np.std``
on the full array of LUT-applied values (docs/extraction.md states the rules).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import as_pixel_options, get_expected_length
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from monitor.dicom.errors import (
    CorruptPixelDataError,
    DecoderMissingError,
    ExtractionError,
    NoPixelDataError,
    UnsupportedPixelDataError,
)
from monitor.dicom.metadata import first_item, get_value
from monitor.pixel_names import HIST_BINS, PERCENTILES

MAX_FRAMES: Final = 64
"""Frames beyond this are sampled: 64 evenly spaced frames, first and last included."""

PIXEL_KEYWORDS: Final = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_REQUIRED: Final = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")
_LUMA_WEIGHTS: Final = (299, 587, 114)
"""ITU-R BT.601 luma weights in thousandths, so luma stays an exact integer until the end."""
_MAX_BINCOUNT_SPAN: Final = 1 << 22
"""Wider integers whose range is at most this are counted with bincount, not sorted."""
_PVT: Final = "PixelValueTransformationSequence"

Floats = NDArray[np.float64]
Counts = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DecodedPixels:
    """Decoded frames, shaped (frames, rows, columns[, samples]), as pydicom returns them."""

    array: NDArray[Any]
    photometric: str
    frame_indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ValueHistogram:
    """Analysed values in ascending order with their pixel counts (equal values may repeat).

    ``entropy_counts`` are the counts of distinct values before the modality LUT (stored values,
    palette indices or luma), from which the entropy is taken.
    """

    values: Floats
    counts: Counts
    entropy_counts: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ModalityLut:
    """Rescale slope/intercept, or the data set's Modality LUT Sequence when ``table``."""

    slope: float = 1.0
    intercept: float = 0.0
    table: bool = False

    def apply(self, stored: NDArray[Any], ds: Dataset) -> Floats:
        """Map stored values to modality values (HU for CT), as float64."""
        if self.table:
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        # Same operations, in the same order, as pydicom's apply_modality_lut: bit-identical.
        values = stored.astype(np.float64) * self.slope
        values += self.intercept
        return values


def pixel_statistics(ds: Dataset) -> dict[str, float]:
    """The named pixel statistics (``PIXEL_STAT_NAMES``) of the image in ``ds``.

    Raises an :class:`ExtractionError` subclass when the pixel data is absent, undecodable or of
    an unsupported kind.
    """
    return summarise(value_histogram(ds, decode_frames(ds)))


def sample_frames(total: int) -> tuple[int, ...]:
    """All frames up to ``MAX_FRAMES``, else ``MAX_FRAMES`` evenly spaced ones (deterministic)."""
    if total <= MAX_FRAMES:
        return tuple(range(total))
    return tuple(int(i) for i in np.linspace(0, total - 1, MAX_FRAMES).round())


def decode_frames(ds: Dataset) -> DecodedPixels:
    """Decode the sampled frames of ``ds`` (colour converted to RGB by pydicom)."""
    keyword = _pixel_keyword(ds)
    _require_image_attributes(ds, keyword)
    tsyntax = transfer_syntax(ds, keyword)
    decoder = _decoder(tsyntax)
    total = _frame_count(ds)
    try:
        # A view of the buffer is possible only when no unused high bits need clearing: asking
        # for one otherwise makes pydicom copy anyway and warn, on every 10- or 12-bit image.
        view = ds.get("BitsStored") == ds.get("BitsAllocated")
        options = as_pixel_options(ds, view_only=view, number_of_frames=total)
        indices = sample_frames(total)
        if len(indices) == total:
            array, properties = decoder.as_array(ds, **options)
            frames = [array]
        else:
            decoded = [decoder.as_array(ds, index=i, **options) for i in indices]
            frames, properties = [a for a, _ in decoded], decoded[-1][1]
    except Exception as exc:
        raise _decode_failure(ds, keyword, tsyntax, exc) from None
    frame_ndim = 2 if int(properties["samples_per_pixel"]) == 1 else 3
    shaped = [f[np.newaxis] if f.ndim == frame_ndim else f for f in frames]
    array = shaped[0] if len(shaped) == 1 else np.concatenate(shaped)
    photometric = str(properties.get("photometric_interpretation", "")).strip()
    return DecodedPixels(array, photometric, indices)


def transfer_syntax(ds: Dataset, keyword: str = "PixelData") -> UID:
    """The declared transfer syntax, else the native one matching how the data set was read."""
    file_meta = getattr(ds, "file_meta", None)
    declared = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if declared:
        return UID(str(declared))
    if ds[keyword].is_undefined_length:
        raise UnsupportedPixelDataError("compressed pixel data without a Transfer Syntax UID")
    implicit, little = ds.original_encoding
    if little is None:
        raise UnsupportedPixelDataError("no Transfer Syntax UID and the encoding is unknown")
    if not little:
        return ExplicitVRBigEndian  # only the byte order matters for native pixel data
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def value_histogram(ds: Dataset, pixels: DecodedPixels) -> ValueHistogram:
    """Distinct analysed values and counts: modality values, palette luma or colour luma."""
    array = pixels.array
    if array.size == 0:
        raise CorruptPixelDataError("the image has no pixels")
    if pixels.photometric == "PALETTE COLOR" and array.ndim == 3:
        return _palette_histogram(ds, array)
    if array.ndim == 4:
        return _colour_histogram(array, pixels.photometric)
    luts = modality_luts(ds, pixels.frame_indices)
    return _grey_histogram(ds, array, luts, invert=pixels.photometric == "MONOCHROME1")


def modality_luts(ds: Dataset, frame_indices: tuple[int, ...]) -> list[ModalityLut]:
    """The modality LUT of each sampled frame.

    Precedence: Modality LUT Sequence, top-level Rescale Slope/Intercept, the shared functional
    group's Pixel Value Transformation, then each frame's own; identity when none is present.
    """
    if get_value(ds, "ModalityLUTSequence"):
        return [ModalityLut(table=True)] * len(frame_indices)
    for source in (ds, first_item(first_item(ds, "SharedFunctionalGroupsSequence"), _PVT)):
        if (lut := _rescale(source)) is not None:
            return [lut] * len(frame_indices)
    per_frame = get_value(ds, "PerFrameFunctionalGroupsSequence")
    items = list(per_frame) if isinstance(per_frame, Sequence) else []
    return [
        _rescale(first_item(items[i], _PVT) if i < len(items) else None) or ModalityLut()
        for i in frame_indices
    ]


def _rescale(item: Dataset | None) -> ModalityLut | None:
    if item is None:
        return None
    slope, intercept = get_value(item, "RescaleSlope"), get_value(item, "RescaleIntercept")
    if slope is None and intercept is None:
        return None
    # A zero or unreadable slope would flatten the image; treat it, like absence, as 1.
    return ModalityLut(_finite(slope, 1.0, nonzero=True), _finite(intercept, 0.0))


def _finite(value: object, default: float, nonzero: bool = False) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default
    if not np.isfinite(number) or (nonzero and number == 0.0):
        return default
    return number


def distinct_values(array: NDArray[Any]) -> tuple[NDArray[Any], Counts]:
    """Sorted distinct values of ``array`` and how often each occurs (non-finite ones dropped)."""
    flat = array.reshape(-1)
    if flat.dtype.kind == "b":
        flat = flat.view(np.uint8)
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    if flat.dtype.kind in "ui" and flat.dtype.itemsize <= 2:
        # Flipping the sign bit maps signed values onto unsigned ones in the same order.
        offset = 1 << (8 * flat.dtype.itemsize - 1) if flat.dtype.kind == "i" else 0
        unsigned = flat.view(f"u{flat.dtype.itemsize}")
        counts = np.bincount(unsigned ^ unsigned.dtype.type(offset) if offset else unsigned)
        present = np.flatnonzero(counts)
        return present - offset, counts[present]
    if flat.dtype.kind in "ui" and flat.dtype.itemsize <= 4:
        low, high = int(flat.min()), int(flat.max())
        if high - low < _MAX_BINCOUNT_SPAN:
            counts = np.bincount(flat.astype(np.int64) - low)
            present = np.flatnonzero(counts)
            return present + low, counts[present]
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            raise UnsupportedPixelDataError("the image has no finite pixel values")
    values, counts = np.unique(flat, return_counts=True)
    return values, counts.astype(np.int64)


def summarise(histogram: ValueHistogram) -> dict[str, float]:
    """Every statistic of ``PIXEL_STAT_NAMES`` from a value histogram."""
    values, counts = histogram.values, histogram.counts
    total = int(counts.sum())
    weights = counts.astype(np.float64)
    # Element-wise sums rather than np.dot: a BLAS dot product wakes OpenBLAS's thread pool,
    # which on a busy 2-core edge box made extraction 2-3x slower.
    mean = float((values * weights).sum() / total)
    std = float(np.sqrt(((values - mean) ** 2 * weights).sum() / total))
    quantiles = percentiles(values, counts, PERCENTILES)
    bins = _bins(values, weights, float(quantiles[0]), float(quantiles[-1])) / total
    share = histogram.entropy_counts / histogram.entropy_counts.sum()
    stats = {"mean": mean, "std": std}
    stats |= {f"p{q:02d}": float(v) for q, v in zip(PERCENTILES, quantiles, strict=True)}
    stats |= {f"hist_{i}": float(v) for i, v in enumerate(bins)}
    stats["entropy"] = max(0.0, float(-(share * np.log2(share)).sum()))
    stats["frac_at_min"] = float(counts[values == values[0]].sum() / total)
    stats["frac_at_max"] = float(counts[values == values[-1]].sum() / total)
    if not all(np.isfinite(v) for v in stats.values()):
        raise UnsupportedPixelDataError("pixel values are too large for finite statistics")
    return stats


def percentiles(values: Floats, counts: Counts, qs: tuple[float, ...]) -> Floats:
    """``np.percentile(full_array, qs)`` (linear method) from sorted values and their counts.

    The virtual index, the neighbouring ranks and the interpolation mirror numpy's own code
    step by step, so the results are bit-identical, not merely close.
    """
    total = int(counts.sum())
    virtual = (total - 1) * np.true_divide(np.asarray(qs, dtype=np.float64), 100)
    previous = np.floor(virtual)
    following = previous + 1
    at_end = virtual >= total - 1
    previous[at_end] = following[at_end] = total - 1
    gamma = virtual - previous
    rank_ends = np.cumsum(counts)
    low = values[np.searchsorted(rank_ends, previous, side="right")]
    high = values[np.searchsorted(rank_ends, following, side="right")]
    diff = high - low
    result: Floats = low + diff * gamma
    np.subtract(high, diff * (1 - gamma), out=result, where=gamma >= 0.5)
    return result


def _bins(values: Floats, weights: Floats, low: float, high: float) -> Floats:
    if low == high:
        everything: Floats = np.zeros(HIST_BINS, dtype=np.float64)
        everything[0] = weights.sum()
        return everything
    clipped = np.clip(values, low, high)
    counts, _ = np.histogram(clipped, bins=HIST_BINS, range=(low, high), weights=weights)
    return np.asarray(counts, dtype=np.float64)


def _grey_histogram(
    ds: Dataset, array: NDArray[Any], luts: list[ModalityLut], invert: bool
) -> ValueHistogram:
    frames_by_lut: dict[ModalityLut, list[int]] = defaultdict(list)
    for position, lut in enumerate(luts):
        frames_by_lut[lut].append(position)
    parts: list[tuple[NDArray[Any], Floats, Counts]] = []
    for lut, positions in frames_by_lut.items():
        frames = array if len(frames_by_lut) == 1 else array[positions]
        stored, counts = distinct_values(frames)
        values = lut.apply(stored, ds)
        if invert:
            ends = lut.apply(stored_range(ds, stored), ds)
            values = ends.min() + ends.max() - values
        parts.append((stored, values, counts))
    return _merged(parts)


def stored_range(ds: Dataset, stored: NDArray[Any]) -> NDArray[Any]:
    """The smallest and largest stored values that BitsStored/PixelRepresentation allow."""
    bits = _finite(get_value(ds, "BitsStored"), _finite(get_value(ds, "BitsAllocated"), 0.0))
    if stored.dtype.kind == "f" or not 1 <= bits <= 32:
        return np.array([stored[0], stored[-1]])
    width = int(bits)
    if get_value(ds, "PixelRepresentation") == 1:
        return np.array([-(1 << (width - 1)), (1 << (width - 1)) - 1], dtype=np.int64)
    return np.array([0, (1 << width) - 1], dtype=np.int64)


def _palette_histogram(ds: Dataset, array: NDArray[Any]) -> ValueHistogram:
    indices, counts = distinct_values(array)
    try:
        rgb = np.asarray(apply_color_lut(indices.astype(np.int64), ds), dtype=np.int64)
    except Exception as exc:
        raise CorruptPixelDataError(
            f"the palette colour lookup tables are missing or invalid ({type(exc).__name__})",
            original=exc,
        ) from None
    luma = (rgb @ np.asarray(_LUMA_WEIGHTS, dtype=np.int64)) / 1000
    return _merged([(indices, luma, counts)])


def _colour_histogram(array: NDArray[Any], photometric: str) -> ValueHistogram:
    if array.shape[-1] != 3:
        raise UnsupportedPixelDataError(f"{array.shape[-1]} samples per pixel are not supported")
    if not photometric.startswith(("RGB", "YBR")):
        raise UnsupportedPixelDataError(f"photometric interpretation {photometric[:64]!r}")
    wide = np.int32 if array.dtype.itemsize <= 2 else np.int64
    if photometric.startswith("YBR"):
        # pydicom returns RGB for every YBR form it can convert; if one is left, the Y plane
        # is already BT.601 luma.
        luma_thousandths = array[..., 0].astype(wide) * 1000
    else:
        weights = np.asarray(_LUMA_WEIGHTS, dtype=wide)
        luma_thousandths = sum(array[..., c].astype(wide) * weights[c] for c in range(3))
    distinct, counts = distinct_values(luma_thousandths)
    return _merged([(distinct, distinct / 1000, counts)])


def _merged(parts: list[tuple[NDArray[Any], Floats, Counts]]) -> ValueHistogram:
    values = np.concatenate([values for _, values, _ in parts])
    counts = np.concatenate([counts for _, _, counts in parts])
    order = np.argsort(values, kind="stable")
    if len(parts) == 1:
        entropy_counts = parts[0][2].astype(np.float64)
    else:
        stored = np.concatenate([stored for stored, _, _ in parts])
        _, inverse = np.unique(stored, return_inverse=True)
        sums = np.bincount(inverse, weights=counts.astype(np.float64))
        entropy_counts = np.asarray(sums, dtype=np.float64)
    return ValueHistogram(values[order], counts[order], entropy_counts)


def _pixel_keyword(ds: Dataset) -> str:
    present = [keyword for keyword in PIXEL_KEYWORDS if keyword in ds]
    if not present:
        raise NoPixelDataError("the data set has no pixel data (not an image)")
    return present[0]


def _require_image_attributes(ds: Dataset, keyword: str) -> None:
    required = _REQUIRED + (("PixelRepresentation",) if keyword == "PixelData" else ())
    for attribute in required:
        if get_value(ds, attribute) in (None, ""):
            raise CorruptPixelDataError(f"required attribute {attribute} is missing or invalid")


def _frame_count(ds: Dataset) -> int:
    value = get_value(ds, "NumberOfFrames")
    if value in (None, "", 0):
        return 1  # as pydicom does: absent or zero means a single frame
    try:
        total = int(str(value).strip())
    except ValueError:
        raise CorruptPixelDataError("NumberOfFrames is not an integer") from None
    if total < 1:
        raise CorruptPixelDataError("NumberOfFrames is negative")
    return total


def _decoder(tsyntax: UID) -> Decoder:
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedPixelDataError(
            f"transfer syntax {_describe(tsyntax)} has no pixel data decoder in pydicom"
        ) from None
    if not decoder.is_available:
        raise DecoderMissingError(str(tsyntax), tsyntax.name)
    return decoder


def _describe(tsyntax: UID) -> str:
    shown = str(tsyntax) if tsyntax.is_valid else "(not a valid UID)"
    return f"{tsyntax.name} ({shown})" if tsyntax.name != str(tsyntax) else shown


def _decode_failure(ds: Dataset, keyword: str, tsyntax: UID, exc: Exception) -> ExtractionError:
    if isinstance(exc, ExtractionError):
        return exc
    if not tsyntax.is_encapsulated:
        try:
            expected, actual = int(get_expected_length(ds)), len(ds[keyword].value)
        except Exception:  # the attributes that would tell are themselves unreadable
            expected = actual = 0
        if actual < expected:
            return CorruptPixelDataError(
                f"pixel data is truncated: {actual} bytes, {expected} expected", original=exc
            )
    return CorruptPixelDataError(
        f"pixel data could not be decoded as {_describe(tsyntax)} ({type(exc).__name__})",
        original=exc,
    )
