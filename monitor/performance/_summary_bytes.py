"""The storage bytes of a summary's counts (``PerformanceSummary.to_bytes``), both formats.

A summary is one int64 vector: the two score histograms (``histogram_size`` counts, 4,096 at
2,048 bins), then the confusion counts and the calibration sums (64 at 10 calibration bins).

* **Format 2** (written since 2026-12-07): an 11-byte header, the histogram in the narrowest
  unsigned type that holds its largest count, either dense or as (index, count) pairs of its
  non-empty bins, whichever is shorter, then the rest as little-endian int64. No compression:
  a refresh of 100 sites decodes 3,400 rows, and inflating the first format's zlib stream
  (33 KB of output a row) took 46-126 us a row on the shared 2-core box against 5-17 us to
  decode this format, and encoding 113 us against 25 us (docs/benchmarks.md, "Full refresh:
  statistics without zlib, lz4 snapshots"). Rows are 13 % larger on average: a day row with
  a few hundred cases is sparse (about 1.3 KB), a ``total`` row of 100,000 cases dense in 8-
  or 16-bit counts (4.6-8.7 KB against about 4 KB zlib-compressed).
* **Format 1** (zlib level 1 of the whole vector as little-endian int64; a zlib stream's
  first byte is 0x78): still read, so rows written before stay valid. A row is rewritten in
  format 2 when a batch next changes it (``summaries.record``), so ``total`` rows and the
  latest days, what a refresh reads, move to it as labels arrive; no migration rewrites the
  history.

Header (11 bytes): the tag byte 2, 0 (sparse) or 1 (dense), the count type's code (an index
into ``_COUNT_TYPES``), and as uint32 the histograms' size and the number of stored bins
(non-empty ones when sparse, all when dense). Indices are uint16 while the histograms have at
most 65,536 counts (2 x 32,768 bins), uint32 beyond.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

import numpy as np
from numpy.typing import NDArray

Counts = NDArray[np.int64]

TAG: Final = 2
"""First byte of a format-2 blob (a format-1 zlib stream begins with 0x78)."""
_HEADER: Final = struct.Struct("<BBBII")
_SPARSE, _DENSE = 0, 1
_COUNT_TYPES: Final = (np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<i8"))
_LIMITS: Final = tuple(int(np.iinfo(t).max) for t in _COUNT_TYPES)
_REST: Final = np.dtype("<i8")


class EncodingError(ValueError):
    """Bytes that are not a summary of the expected size (the caller says what it expected)."""


class NegativeCountError(EncodingError):
    """A summary whose bytes hold a negative count (checked on the stored values, before
    they are spread over the dense vector)."""


def encode(counts: Counts, histogram_size: int) -> bytes:
    """Format 2 of one summary's counts (``counts[:histogram_size]`` the histograms)."""
    histogram = counts[:histogram_size]
    rest = counts[histogram_size:].astype(_REST, copy=False).tobytes()
    low = int(histogram.min()) if histogram_size else 0
    peak = int(histogram.max()) if histogram_size else 0
    code = 3 if low < 0 else next(i for i, limit in enumerate(_LIMITS) if peak <= limit)
    count_type = _COUNT_TYPES[code]
    index_type = _index_type(histogram_size)
    filled = np.flatnonzero(histogram)
    sparse_size = filled.size * (index_type.itemsize + count_type.itemsize)
    if sparse_size < histogram_size * count_type.itemsize:
        return b"".join(
            (
                _HEADER.pack(TAG, _SPARSE, code, histogram_size, filled.size),
                filled.astype(index_type).tobytes(),
                histogram[filled].astype(count_type).tobytes(),
                rest,
            )
        )
    header = _HEADER.pack(TAG, _DENSE, code, histogram_size, histogram_size)
    return header + histogram.astype(count_type).tobytes() + rest


def decode_into(blob: bytes, out: Counts, histogram_size: int) -> None:
    """Fill ``out`` (int64, the summary's size) with the counts of a format-1 or format-2
    blob; EncodingError when the blob is not one or holds another number of counts,
    NegativeCountError when it holds a negative count."""
    if blob[:1] != bytes((TAG,)):
        _decode_zlib(blob, out)
        return
    if len(blob) < _HEADER.size:
        raise EncodingError("a truncated summary header")
    _, kind, code, size, stored = _HEADER.unpack_from(blob)
    if kind not in (_SPARSE, _DENSE) or code >= len(_COUNT_TYPES):
        raise EncodingError(f"an unknown summary layout {kind}/{code}")
    if size != histogram_size:
        raise EncodingError(
            f"a stored summary of {size} histogram counts, {histogram_size} expected"
        )
    count_type = _COUNT_TYPES[code]
    index_type = _index_type(histogram_size)
    at = _HEADER.size
    pairs = stored * (index_type.itemsize if kind == _SPARSE else 0)
    rest_size = out.size - histogram_size
    expected = at + pairs + stored * count_type.itemsize + rest_size * _REST.itemsize
    if len(blob) != expected or (kind == _DENSE and stored != size):
        raise EncodingError(f"a stored summary of {len(blob)} bytes, {expected} expected")
    counts: NDArray[np.integer] = np.frombuffer(blob, count_type, stored, at + pairs)
    rest = np.frombuffer(blob, _REST, rest_size, expected - rest_size * 8)
    signed = count_type.kind == "i"  # unsigned counts cannot be negative
    if (signed and bool((counts < 0).any())) or bool((rest < 0).any()):
        raise NegativeCountError("a stored performance summary holds a negative count")
    if kind == _DENSE:
        out[:histogram_size] = counts
    else:
        indices = np.frombuffer(blob, index_type, stored, at)
        if stored and int(indices.max()) >= histogram_size:
            raise EncodingError("a stored summary's bin lies outside its histograms")
        out[:histogram_size] = 0
        out[indices] = counts
    out[histogram_size:] = rest


def encode_format_1(counts: Counts) -> bytes:
    """Format 1 of one summary's counts: what the code before format 2 wrote and reads."""
    return zlib.compress(counts.astype(_REST, copy=False).tobytes(), 1)


def as_format_1(blob: bytes) -> bytes:
    """The counts of a stored summary in format 1, for a rollback past format 2 (migration
    0020's downgrade); a format-1 blob is returned as it is. Needs no layout: a format-2
    header holds the histograms' size, and the rest is whatever int64s follow them."""
    if blob[:1] != bytes((TAG,)):
        return blob
    if len(blob) < _HEADER.size:
        raise EncodingError("a truncated summary header")
    _, kind, code, size, stored = _HEADER.unpack_from(blob)
    if kind not in (_SPARSE, _DENSE) or code >= len(_COUNT_TYPES):
        raise EncodingError(f"an unknown summary layout {kind}/{code}")
    index_bytes = _index_type(size).itemsize if kind == _SPARSE else 0
    rest = len(blob) - _HEADER.size - stored * (index_bytes + _COUNT_TYPES[code].itemsize)
    if rest < 0 or rest % _REST.itemsize:
        raise EncodingError(f"a stored summary of {len(blob)} bytes does not hold whole counts")
    counts = np.empty(size + rest // _REST.itemsize, dtype=np.int64)
    decode_into(blob, counts, size)
    return encode_format_1(counts)


def _decode_zlib(blob: bytes, out: Counts) -> None:
    try:
        values = np.frombuffer(zlib.decompress(blob), dtype=_REST)
    except zlib.error as error:
        raise EncodingError(str(error)) from error
    if values.size != out.size:
        raise EncodingError(f"a stored summary of {values.size} counts, {out.size} expected")
    if (values < 0).any():
        raise NegativeCountError("a stored performance summary holds a negative count")
    out[...] = values


def _index_type(histogram_size: int) -> np.dtype[np.unsignedinteger]:
    return _COUNT_TYPES[1] if histogram_size <= 2**16 else _COUNT_TYPES[2]
