"""The extractor boundary: files in, StudyFeatures or a typed, PHI-free ExtractionError out."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import JPEG2000Decoder
from pydicom.uid import MPEG4HP41, UID, CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless

from monitor.dicom import (
    PIXEL_STAT_NAMES,
    CorruptPixelDataError,
    DecoderMissingError,
    ExtractionError,
    MalformedDicomError,
    MissingStudyUIDError,
    NoPixelDataError,
    NotDicomError,
    StudyFeatures,
    UnreadableFileError,
    UnsupportedPixelDataError,
    extract_features,
)
from monitor.dicom import extract as extract_module
from monitor.events import InferenceEvent, Prediction

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

SITE_KEY = b"unit-test-site-key"
PHI = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19610407",
    "InstitutionName": "St Example General Hospital",
    "StationName": "XRAYROOM7",
    "OperatorsName": "Tech^Tom",
    "AccessionNumber": "ACC20260407001",
    "StudyDate": "20260407",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.10293847561029384756",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.56473829105647382910",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.99887766554433221100",
}
PHI_FRAGMENTS = (*PHI.values(), "Doe", "99887766")


def ct_dataset(**overrides: Any) -> Dataset:
    """A small CT image carrying every kind of PHI the extractor must drop."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(PHI["SOPInstanceUID"])
    ds.SOPClassUID = CTImageStorage
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.ConvolutionKernel = "B30f"
    ds.PatientSex = "M"
    ds.PatientAge = "072Y"
    pixels = np.random.default_rng(7).normal(0, 400, (32, 32)).astype(np.int16)
    ds.set_pixel_data(pixels, "MONOCHROME2", 16, generate_instance_uid=False)
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write(tmp_path: Path, ds: Dataset, name: str = "Doe^Jane.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_phi_free(text: str) -> None:
    for fragment in PHI_FRAGMENTS:
        assert fragment not in text


def test_features_from_a_file(tmp_path: Path) -> None:
    features = extract_features(write(tmp_path, ct_dataset()), SITE_KEY)
    assert isinstance(features, StudyFeatures)
    expected_key = hmac.new(SITE_KEY, PHI["StudyInstanceUID"].encode(), hashlib.sha256)
    assert features.study_key == expected_key.hexdigest()
    assert features.modality == "CT"
    assert features.metadata.ConvolutionKernel == "B30f"
    assert features.metadata.PatientAgeBand == "70-79"
    assert tuple(features.pixel_stats) == PIXEL_STAT_NAMES
    assert features.pixel_stats["p50"] < -900  # Hounsfield units, not stored values
    assert_phi_free(repr(features))
    assert_phi_free(features.metadata.model_dump_json())


def test_features_fit_the_event_contract(tmp_path: Path) -> None:
    features = extract_features(write(tmp_path, ct_dataset()), SITE_KEY)
    event = InferenceEvent(
        event_id=uuid.uuid4(),
        site_id="site-1",
        model_name="ct-model",
        model_version="1.0",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        study_key=features.study_key,
        modality=features.modality,
        metadata=features.metadata,
        pixel_stats=features.pixel_stats,
        prediction=Prediction(scores={"finding": 0.5}),
    )
    assert event.study_key == features.study_key


def test_a_data_set_gives_the_same_features_as_its_file(tmp_path: Path) -> None:
    ds = ct_dataset()
    from_file = extract_features(write(tmp_path, ds), SITE_KEY)
    assert extract_features(ds, SITE_KEY) == from_file


def test_different_site_keys_give_different_study_keys(tmp_path: Path) -> None:
    path = write(tmp_path, ct_dataset())
    assert (
        extract_features(path, b"site-a").study_key != extract_features(path, b"site-b").study_key
    )


@pytest.mark.parametrize("modality", [None, "", "ct scan", "X" * 17])
def test_missing_or_invalid_modality_is_ot(modality: str | None) -> None:
    ds = ct_dataset(Modality=modality) if modality is not None else ct_dataset(Modality=None)
    assert extract_features(ds, SITE_KEY).modality == "OT"


def test_empty_site_key_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        extract_features(write(tmp_path, ct_dataset()), b"")


@pytest.mark.parametrize(
    "content", [b"", b"hello, this is not DICOM\n" * 20, bytes(range(256)) * 3, b"\x89PNG\r\n"]
)
def test_non_dicom_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "Doe^Jane.bin"
    path.write_bytes(content)
    with pytest.raises(NotDicomError) as caught:
        extract_features(path, SITE_KEY)
    assert "Doe" not in str(caught.value)


def test_missing_file_message_has_no_path(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError) as caught:
        extract_features(tmp_path / "Doe^Jane^Quincy.dcm", SITE_KEY)
    assert_phi_free(str(caught.value))
    assert "No such file" in str(caught.value)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError):
        extract_features(tmp_path, SITE_KEY)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = ct_dataset(PixelData=None)
    with pytest.raises(NoPixelDataError) as caught:
        extract_features(write(tmp_path, ds), SITE_KEY)
    assert_phi_free(str(caught.value))


def test_missing_study_instance_uid(tmp_path: Path) -> None:
    with pytest.raises(MissingStudyUIDError):
        extract_features(write(tmp_path, ct_dataset(StudyInstanceUID=None)), SITE_KEY)
    with pytest.raises(MissingStudyUIDError):
        extract_features(ct_dataset(StudyInstanceUID=""), SITE_KEY)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path = write(tmp_path, ct_dataset())
    path.write_bytes(path.read_bytes()[:-300])  # the file was cut short in transfer
    with pytest.raises(CorruptPixelDataError, match="truncated") as caught:
        extract_features(path, SITE_KEY)
    assert_phi_free(str(caught.value))


def test_file_cut_inside_compressed_pixel_data(tmp_path: Path) -> None:
    ds = ct_dataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([bytes(range(256)) * 8])
    ds["PixelData"].is_undefined_length = True
    path = write(tmp_path, ds)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CorruptPixelDataError, match="truncated"):
        extract_features(path, SITE_KEY)


def test_truncated_header_is_malformed_or_not_an_image(tmp_path: Path) -> None:
    path = write(tmp_path, ct_dataset())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises((MalformedDicomError, NoPixelDataError, MissingStudyUIDError)) as caught:
        extract_features(path, SITE_KEY)
    assert_phi_free(str(caught.value))


def test_missing_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(JPEG2000Decoder, "_available", {})
    path = get_testdata_file("JPEG2000.dcm")
    assert path is not None
    with pytest.raises(DecoderMissingError, match=r"1\.2\.840\.10008\.1\.2\.4\.91"):
        extract_features(path, SITE_KEY)


def test_video_is_unsupported() -> None:
    ds = ct_dataset()
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(UnsupportedPixelDataError, match="MPEG-4"):
        extract_features(ds, SITE_KEY)


def test_file_without_part10_header_is_read(tmp_path: Path) -> None:
    ds = ct_dataset()
    expected = extract_features(ds, SITE_KEY)
    ds.file_meta = FileMetaDataset()  # an old export: no preamble, no meta, no transfer syntax
    path = tmp_path / "bare.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[:2] == b"\x08\x00"  # the data set starts at byte 0, group 0008
    assert extract_features(path, SITE_KEY) == expected


def test_unexpected_errors_are_wrapped_without_their_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(ds: Dataset) -> None:
        raise RuntimeError(f"bad value {PHI['PatientName']}")

    monkeypatch.setattr(extract_module, "screen_metadata", explode)
    with pytest.raises(ExtractionError) as caught:
        extract_features(ct_dataset(), SITE_KEY)
    assert type(caught.value) is ExtractionError
    assert str(caught.value) == "unexpected RuntimeError while reading the allowlisted metadata"
    assert isinstance(caught.value.original, RuntimeError)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_error_codes_are_distinct() -> None:
    from monitor.dicom.errors import ERROR_CLASSES

    codes = [cls.code for cls in ERROR_CLASSES]
    assert len(set(codes)) == len(codes)
    assert all(issubclass(cls, ExtractionError) for cls in ERROR_CLASSES)
