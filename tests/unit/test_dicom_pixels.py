"""Pixel statistics against an independent numpy computation on the full array.

``reference_statistics`` is the naive definition (``ds.pixel_array``, ``apply_modality_lut``,
``np.percentile``...); the extractor's histogram path must agree with it exactly for the
percentiles and to floating precision for the rest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.pixels.decoders.base import JPEG2000Decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.uid import MPEG2MPML, ExplicitVRBigEndian, ExplicitVRLittleEndian

from monitor.dicom import (
    MAX_FRAMES,
    PIXEL_STAT_NAMES,
    CorruptPixelDataError,
    DecoderMissingError,
    NoPixelDataError,
    UnsupportedPixelDataError,
    pixel_statistics,
)
from monitor.dicom.extract import read_dataset
from monitor.dicom.pixels import distinct_values, percentiles, sample_frames

QS = (1, 5, 25, 50, 75, 95, 99)
STUDY_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def image_dataset(
    pixels: NDArray[Any],
    photometric: str = "MONOCHROME2",
    *,
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    **attributes: Any,
) -> Dataset:
    """An in-memory image data set (Explicit VR Little Endian) around ``pixels``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = STUDY_UID
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _frames(ds: Dataset) -> NDArray[Any]:
    array = ds.pixel_array
    single = array.ndim == (2 if int(ds.SamplesPerPixel) == 1 else 3)
    array = array[np.newaxis] if single else array
    if len(array) > MAX_FRAMES:
        array = array[np.linspace(0, len(array) - 1, MAX_FRAMES).round().astype(int)]
    return array


def _luma(rgb: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[Any]]:
    wide = rgb.astype(np.int64)
    thousandths = wide[..., 0] * 299 + wide[..., 1] * 587 + wide[..., 2] * 114
    return thousandths / 1000, thousandths


def _linear(ds: Dataset, stored: NDArray[Any]) -> NDArray[np.float64]:
    if "ModalityLUTSequence" in ds or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    return stored.astype(np.float64) * slope + intercept


def _monochrome_values(ds: Dataset, stored: NDArray[Any]) -> NDArray[np.float64]:
    values = _linear(ds, stored)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        bits = int(ds.BitsStored)
        signed = int(ds.PixelRepresentation) == 1
        ends = [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1]
        mapped = _linear(ds, np.array(ends))
        values = mapped.min() + mapped.max() - values
    return values


def reference_statistics(ds: Dataset) -> dict[str, float]:
    """The statistics computed the obvious way, on every pixel of the sampled frames."""
    stored = _frames(ds)
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        values, entropy_source = _luma(apply_color_lut(stored, ds))[0], stored
    elif int(ds.SamplesPerPixel) == 3:
        values, entropy_source = _luma(stored)
    else:
        values, entropy_source = _monochrome_values(ds, stored), stored
    values = values.ravel()
    quantiles = np.percentile(values, QS)
    low, high = quantiles[0], quantiles[-1]
    if low == high:
        bins = np.zeros(8)
        bins[0] = values.size
    else:
        bins, _ = np.histogram(np.clip(values, low, high), bins=8, range=(low, high))
    _, counts = np.unique(entropy_source, return_counts=True)
    share = counts / counts.sum()
    stats = {"mean": np.mean(values), "std": np.std(values)}
    stats |= {f"p{q:02d}": v for q, v in zip(QS, quantiles, strict=True)}
    stats |= {f"hist_{i}": v / values.size for i, v in enumerate(bins)}
    stats["entropy"] = -(share * np.log2(share)).sum() + 0.0
    stats["frac_at_min"] = np.mean(values == values.min())
    stats["frac_at_max"] = np.mean(values == values.max())
    return {name: float(value) for name, value in stats.items()}


def assert_matches_reference(ds: Dataset, stats: dict[str, float] | None = None) -> None:
    """Percentiles and bins bit-exact; moments and entropy to floating precision."""
    stats = pixel_statistics(ds) if stats is None else stats
    expected = reference_statistics(ds)
    assert tuple(stats) == PIXEL_STAT_NAMES
    for name in PIXEL_STAT_NAMES:
        if name in ("mean", "std", "entropy"):
            assert math.isclose(stats[name], expected[name], rel_tol=1e-9, abs_tol=1e-9), name
        else:
            assert stats[name] == expected[name], name


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


def test_uint8(rng: np.random.Generator) -> None:
    assert_matches_reference(image_dataset(rng.integers(0, 256, (64, 80), dtype=np.uint8)))


def test_uint16_with_12_bits_stored(rng: np.random.Generator) -> None:
    pixels = rng.normal(1800, 400, (128, 96)).clip(0, 4095).astype(np.uint16)
    assert_matches_reference(image_dataset(pixels, bits_stored=12))


def test_int16_ct_in_hounsfield_units(rng: np.random.Generator) -> None:
    pixels = rng.normal(0, 500, (128, 128)).clip(-2000, 3000).astype(np.int16)
    ds = image_dataset(pixels, slope=1.0, intercept=-1024.0, Modality="CT")
    stats = pixel_statistics(ds)
    assert_matches_reference(ds, stats)
    assert stats["p50"] == pytest.approx(np.median(pixels.astype(float) - 1024))


def test_negative_slope_keeps_percentiles_ordered(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 1000, (50, 60), dtype=np.uint16)
    ds = image_dataset(pixels, slope=-0.5, intercept=100.0)
    stats = pixel_statistics(ds)
    assert_matches_reference(ds, stats)
    assert stats["p01"] <= stats["p50"] <= stats["p99"]


def test_slope_without_intercept_means_intercept_zero(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 4096, (40, 40), dtype=np.uint16)
    ds = image_dataset(pixels, slope=2.5)
    assert_matches_reference(ds)
    assert pixel_statistics(ds)["mean"] == pytest.approx(2.5 * pixels.mean())


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_monochrome1_is_inverted_so_higher_means_brighter(
    rng: np.random.Generator, dtype: type[np.integer[Any]]
) -> None:
    info = np.iinfo(dtype)
    pixels = rng.integers(max(info.min, -2048), min(info.max, 2047), (60, 70), dtype=dtype)
    mono1 = image_dataset(pixels, "MONOCHROME1", bits_stored=12, slope=1.0, intercept=0.0)
    assert_matches_reference(mono1)
    # Dark in MONOCHROME1 is a high stored value: the inverted image's ranks reverse.
    mono2 = image_dataset(pixels, "MONOCHROME2", bits_stored=12, slope=1.0, intercept=0.0)
    inverted, plain = pixel_statistics(mono1), pixel_statistics(mono2)
    low, high = (-2048, 2047) if dtype is np.int16 else (0, 4095)
    assert inverted["p01"] == pytest.approx(low + high - plain["p99"])
    assert inverted["frac_at_max"] == plain["frac_at_min"]


def test_monochrome1_with_rescale_and_negative_slope(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 1024, (30, 30), dtype=np.uint16)
    ds = image_dataset(pixels, "MONOCHROME1", bits_stored=10, slope=-2.0, intercept=7.0)
    assert_matches_reference(ds)


def test_multi_frame_pools_all_frames(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 4096, (5, 32, 32), dtype=np.uint16)
    pixels[4] = 4095  # a saturated frame must count
    ds = image_dataset(pixels, bits_stored=12)
    stats = pixel_statistics(ds)
    assert_matches_reference(ds, stats)
    assert stats["frac_at_max"] >= 0.2


def test_more_than_max_frames_samples_evenly_and_deterministically(
    rng: np.random.Generator,
) -> None:
    pixels = rng.integers(0, 200, (150, 8, 8), dtype=np.uint8)
    ds = image_dataset(pixels)
    assert_matches_reference(ds)
    chosen = sample_frames(150)
    assert len(chosen) == MAX_FRAMES and chosen[0] == 0 and chosen[-1] == 149
    assert chosen == sample_frames(150) and list(chosen) == sorted(set(chosen))
    assert sample_frames(3) == (0, 1, 2)


def test_rgb_uses_bt601_luma(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    ds = image_dataset(pixels, "RGB")
    stats = pixel_statistics(ds)
    assert_matches_reference(ds, stats)
    expected_mean = 0.299 * pixels[..., 0] + 0.587 * pixels[..., 1] + 0.114 * pixels[..., 2]
    assert stats["mean"] == pytest.approx(expected_mean.mean(), rel=1e-12)


def test_pure_colours_have_the_luma_of_their_weights() -> None:
    pixels = np.zeros((1, 3, 3), dtype=np.uint8)
    pixels[0, 0, 0], pixels[0, 1, 1], pixels[0, 2, 2] = 255, 255, 255
    stats = pixel_statistics(image_dataset(pixels, "RGB"))
    # Three pixels: pure blue, red and green, whose lumas are 0.114, 0.299 and 0.587 of 255.
    assert stats["p50"] == pytest.approx(0.299 * 255)
    assert stats["mean"] == pytest.approx(255 / 3)


def test_multi_frame_rgb_16_bit(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 65536, (3, 20, 20, 3), dtype=np.uint16)
    assert_matches_reference(image_dataset(pixels, "RGB"))


def test_ybr_full_is_converted_to_rgb_before_luma() -> None:
    ds = read_dataset(get_testdata_file("SC_ybr_full_uncompressed.dcm"))  # type: ignore[arg-type]
    assert ds.PhotometricInterpretation == "YBR_FULL"
    assert_matches_reference(ds)


def test_palette_colour_applies_the_palette() -> None:
    ds = read_dataset(get_testdata_file("examples_palette.dcm"))  # type: ignore[arg-type]
    stats = pixel_statistics(ds)
    assert_matches_reference(ds, stats)
    assert stats["p99"] > 255  # a 16-bit palette: luma is on the palette's scale


def test_constant_image_puts_everything_in_the_first_bin() -> None:
    stats = pixel_statistics(image_dataset(np.full((16, 16), 7, dtype=np.uint8)))
    assert stats["hist_0"] == 1.0 and sum(stats[f"hist_{i}"] for i in range(8)) == 1.0
    assert stats["entropy"] == 0.0 and stats["std"] == 0.0
    assert stats["frac_at_min"] == stats["frac_at_max"] == 1.0


def test_single_pixel() -> None:
    stats = pixel_statistics(image_dataset(np.array([[42]], dtype=np.int16), intercept=-2.0))
    assert {stats[f"p{q:02d}"] for q in QS} == {40.0}


def test_histogram_is_normalised_and_covers_the_tails(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 65536, (100, 100), dtype=np.uint16)
    stats = pixel_statistics(image_dataset(pixels))
    assert sum(stats[f"hist_{i}"] for i in range(8)) == pytest.approx(1.0)
    assert stats["hist_0"] >= 0.01 and stats["hist_7"] >= 0.01  # the clipped tails land here


def test_entropy_of_uniform_bytes_is_close_to_eight_bits() -> None:
    pixels = np.arange(256 * 64, dtype=np.uint16).reshape(128, 128) % 256
    stats = pixel_statistics(image_dataset(pixels.astype(np.uint8)))
    assert stats["entropy"] == pytest.approx(8.0)


def test_big_endian_pixel_data(rng: np.random.Generator) -> None:
    pixels = rng.integers(-1000, 1000, (20, 20), dtype=np.int16)
    ds = image_dataset(pixels, slope=1.0, intercept=-1024.0)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = pixels.astype(">i2").tobytes()
    stats = pixel_statistics(ds)
    assert stats["p50"] == np.percentile(pixels.astype(np.float64) - 1024.0, 50)


def test_float_pixel_data(rng: np.random.Generator) -> None:
    pixels = rng.normal(0, 1, (16, 16)).astype(np.float32)
    pixels[0, 0] = np.nan  # non-finite values are left out
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 16, 16, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FloatPixelData = pixels.tobytes()
    stats = pixel_statistics(ds)
    finite = pixels[np.isfinite(pixels)].astype(np.float64)
    assert stats["p50"] == np.percentile(finite, 50)
    assert stats["mean"] == pytest.approx(finite.mean())


def test_enhanced_shared_functional_group_rescale(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 3000, (2, 16, 16), dtype=np.uint16)
    ds = image_dataset(pixels)
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 1.0, -1024.0
    shared = Dataset()
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    assert pixel_statistics(ds)["p50"] == np.percentile(pixels.astype(np.float64) - 1024, 50)


def test_enhanced_per_frame_rescale_differs_by_frame(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 100, (3, 8, 8), dtype=np.uint16)
    ds = image_dataset(pixels)
    per_frame = []
    for frame in range(3):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = float(frame + 1), 10.0 * frame
        group = Dataset()
        group.PixelValueTransformationSequence = [transform]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    values = np.concatenate(
        [pixels[f].astype(np.float64).ravel() * (f + 1) + 10.0 * f for f in range(3)]
    )
    stats = pixel_statistics(ds)
    assert [stats[f"p{q:02d}"] for q in QS] == list(np.percentile(values, QS))
    assert stats["mean"] == pytest.approx(values.mean())
    _, counts = np.unique(pixels, return_counts=True)  # entropy: pooled stored values
    share = counts / counts.sum()
    assert stats["entropy"] == pytest.approx(-(share * np.log2(share)).sum())


def test_percentiles_equal_numpy_bit_for_bit(rng: np.random.Generator) -> None:
    full = rng.normal(0, 3, 1001).round(1)
    values, counts = np.unique(full, return_counts=True)
    qs = (0, 0.5, 1, 5, 25, 33.3, 50, 75, 95, 99, 99.99, 100)
    assert list(percentiles(values, counts, qs)) == list(np.percentile(full, qs))


def test_distinct_values_of_wide_and_float_arrays() -> None:
    wide = np.array([5, -(2**31), 2**31 - 1, 5], dtype=np.int32)
    values, counts = distinct_values(wide)
    assert list(values) == [-(2**31), 5, 2**31 - 1] and list(counts) == [1, 2, 1]
    narrow = np.array([70000, 70002, 70000], dtype=np.uint32)
    values, counts = distinct_values(narrow)
    assert list(values) == [70000, 70002] and list(counts) == [2, 1]
    floats = np.array([1.5, np.inf, 1.5, np.nan, -2.0])
    values, counts = distinct_values(floats)
    assert list(values) == [-2.0, 1.5] and list(counts) == [1, 2]


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.int16]),
    photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2"]),
    slope=st.sampled_from([1.0, 0.5, -1.0, 2.0, -0.25]),
    intercept=st.sampled_from([0.0, -1024.0, 3.5]),
)
def test_property_matches_reference(
    data: st.DataObject,
    dtype: type[np.integer[Any]],
    photometric: str,
    slope: float,
    intercept: float,
) -> None:
    info = np.iinfo(dtype)
    shape = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)))
    low = data.draw(st.integers(int(info.min), int(info.max)))
    high = data.draw(st.integers(low, int(info.max)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(low, high, shape, dtype=dtype, endpoint=True)
    pixels = pixels[0] if shape[0] == 1 else pixels
    ds = image_dataset(pixels, photometric, slope=slope, intercept=intercept)
    assert_matches_reference(ds)


def test_no_pixel_data_is_a_typed_error() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = STUDY_UID
    with pytest.raises(NoPixelDataError):
        pixel_statistics(ds)


def test_truncated_pixel_data_is_corrupt(rng: np.random.Generator) -> None:
    ds = image_dataset(rng.integers(0, 4096, (32, 32), dtype=np.uint16))
    ds.PixelData = ds.PixelData[:-100]
    with pytest.raises(CorruptPixelDataError, match="truncated: 1948 bytes, 2048 expected"):
        pixel_statistics(ds)


def test_missing_image_attribute_is_corrupt(rng: np.random.Generator) -> None:
    ds = image_dataset(rng.integers(0, 255, (4, 4), dtype=np.uint8))
    del ds.BitsAllocated
    with pytest.raises(CorruptPixelDataError, match="BitsAllocated"):
        pixel_statistics(ds)


def test_missing_decoder_names_transfer_syntax_and_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(JPEG2000Decoder, "_available", {})
    ds = read_dataset(get_testdata_file("JPEG2000.dcm"))  # type: ignore[arg-type]
    with pytest.raises(DecoderMissingError) as caught:
        pixel_statistics(ds)
    assert str(caught.value) == (
        "transfer syntax JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91) "
        "needs decoder pylibjpeg-openjpeg or python-gdcm or pillow"
    )
    assert caught.value.packages[0] == "pylibjpeg-openjpeg"


def test_video_transfer_syntax_is_unsupported(rng: np.random.Generator) -> None:
    ds = image_dataset(rng.integers(0, 255, (4, 4), dtype=np.uint8))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(UnsupportedPixelDataError, match="MPEG2"):
        pixel_statistics(ds)


def test_data_set_without_transfer_syntax_uses_its_read_encoding(
    rng: np.random.Generator,
) -> None:
    pixels = rng.integers(0, 4096, (8, 8), dtype=np.uint16)
    ds = image_dataset(pixels)
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(UnsupportedPixelDataError, match="encoding is unknown"):
        pixel_statistics(ds)
    ds.set_original_encoding(False, True)
    assert pixel_statistics(ds)["p50"] == np.percentile(pixels, 50)
