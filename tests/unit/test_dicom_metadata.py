"""Allowlisted metadata, age bands and the study key: what may leave the edge, and nothing else."""

from __future__ import annotations

import hashlib
import hmac
from io import BytesIO
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian

from monitor.dicom import age_band, extract_metadata, screen_metadata, study_key_for
from monitor.dicom.metadata import DERIVED_KEYS, MAX_ITEMS, NUMERIC_KEYS, TEXT_KEYS
from monitor.events import ALLOWED_METADATA_KEYS, DicomMetadata
from monitor.phi import PhiRule

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

STUDY_UID = "1.2.826.0.1.3680043.8.498.10293847561029384756"
PHI: dict[str, Any] = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19610407",
    "InstitutionName": "St Example General Hospital",
    "StationName": "XRAYROOM7",
    "OperatorsName": "Tech^Tom",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC20260407001",
    "StudyDate": "20260407",
    "StudyInstanceUID": STUDY_UID,
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.56473829105647382910",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.99887766554433221100",
}


def header(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def full_header() -> Dataset:
    return header(
        **PHI,
        Modality="DX",
        Manufacturer="ACME Imaging  ",
        ManufacturerModelName="RayMaster 9000",
        SoftwareVersions=["VA10", "build 7"],
        KVP="110",
        XRayTubeCurrent=250,
        Exposure=4,
        ExposureTime=12,
        ImagerPixelSpacing=["0.139", "0.139"],
        Rows=2048,
        Columns=2500,
        BitsStored=12,
        PhotometricInterpretation="MONOCHROME1",
        ViewPosition="PA",
        BodyPartExamined="CHEST",
        WindowCenter="2047",
        WindowWidth="4096",
        RescaleSlope="1",
        RescaleIntercept="0",
        PatientSex="F",
        PatientAge="064Y",
    )


def test_key_sets_cover_the_contract_exactly() -> None:
    assert NUMERIC_KEYS | TEXT_KEYS | DERIVED_KEYS == ALLOWED_METADATA_KEYS
    assert not NUMERIC_KEYS & TEXT_KEYS


def test_allowlisted_values_are_converted() -> None:
    metadata = extract_metadata(full_header())
    assert isinstance(metadata, DicomMetadata)
    assert metadata.model_dump(exclude_none=True) == {
        "Modality": "DX",
        "Manufacturer": "ACME Imaging",
        "ManufacturerModelName": "RayMaster 9000",
        "SoftwareVersions": ["VA10", "build 7"],
        "KVP": 110.0,
        "XRayTubeCurrent": 250.0,
        "Exposure": 4.0,
        "ExposureTime": 12.0,
        "ImagerPixelSpacing": [0.139, 0.139],
        "Rows": 2048.0,
        "Columns": 2500.0,
        "BitsStored": 12.0,
        "PhotometricInterpretation": "MONOCHROME1",
        "ViewPosition": "PA",
        "BodyPartExamined": "CHEST",
        "WindowCenter": 2047.0,
        "WindowWidth": 4096.0,
        "RescaleSlope": 1.0,
        "RescaleIntercept": 0.0,
        "PatientSex": "F",
        "PatientAgeBand": "60-69",
    }


def test_no_phi_leaves_in_any_rendering() -> None:
    metadata = extract_metadata(full_header())
    renderings = [repr(metadata), str(metadata), metadata.model_dump_json()]
    for rendering in renderings:
        for keyword, value in PHI.items():
            assert value not in rendering, keyword
        assert "Doe" not in rendering and "99887766" not in rendering and "064Y" not in rendering
    assert set(metadata.model_dump(exclude_none=True)) <= ALLOWED_METADATA_KEYS


def test_empty_header_gives_empty_metadata() -> None:
    assert extract_metadata(Dataset()).model_dump(exclude_none=True) == {}


def test_strings_are_stripped_truncated_and_empty_ones_omitted() -> None:
    metadata = extract_metadata(
        header(Manufacturer="  \x00", ManufacturerModelName="x" * 80, BodyPartExamined="  CHEST ")
    )
    assert metadata.Manufacturer is None
    assert metadata.ManufacturerModelName == "x" * 64
    assert metadata.BodyPartExamined == "CHEST"


def test_multi_values_become_lists_of_at_most_sixteen() -> None:
    metadata = extract_metadata(
        header(SoftwareVersions=[f"v{i}" for i in range(20)], WindowCenter=["40", "400"])
    )
    assert metadata.SoftwareVersions == [f"v{i}" for i in range(MAX_ITEMS)]
    assert metadata.WindowCenter == [40.0, 400.0]


def test_one_bad_attribute_does_not_lose_the_others() -> None:
    ds = header(Modality="CT", KVP="120", Exposure=3)
    ds.add(DataElement(0x00180060, "LO", "high"))  # KVP, written as text that is no number
    ds.add(DataElement(0x00181152, "FD", float("nan")))  # Exposure: not finite
    ds.add(DataElement(0x00281050, "LO", ["40", "oops"]))  # WindowCenter: one bad item
    ds.add(DataElement(0x00080070, "US", 7))  # Manufacturer as a number: not text
    ds.SliceThickness = "1.25"
    metadata = extract_metadata(ds)
    assert metadata.model_dump(exclude_none=True) == {"Modality": "CT", "SliceThickness": 1.25}


def test_an_unreadable_element_is_omitted() -> None:
    # Implicit VR: the dictionary says DS, the bytes are not a number. pydicom raises or warns
    # only when the value is converted, long after the file was read.
    ds = header(Modality="MR", WindowCenter="40")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    raw = buffer.getvalue().replace(b"40", b"4\x01")
    metadata = extract_metadata(dcmread(BytesIO(raw), force=True))
    assert metadata.Modality == "MR" and metadata.WindowCenter is None


def test_contract_rejection_drops_only_that_key() -> None:
    metadata = extract_metadata(header(Modality="M" * 70, PixelSpacing=["0.5"] * 17))
    assert metadata.Modality == "M" * 64  # truncated to the LO/CS limit, then accepted
    assert metadata.PixelSpacing == [0.5] * MAX_ITEMS


@pytest.mark.parametrize(
    ("sex", "expected"), [("M", "M"), ("F", "F"), ("O", "O"), (" m ", "M"), ("X", None), ("", None)]
)
def test_patient_sex(sex: str, expected: str | None) -> None:
    assert extract_metadata(header(PatientSex=sex)).PatientSex == expected


@pytest.mark.parametrize(
    ("age", "band"),
    [
        ("045Y", "40-49"),
        ("000Y", "0-9"),
        ("009Y", "0-9"),
        ("010Y", "10-19"),
        ("089Y", "80-89"),
        ("090Y", "90+"),
        ("104Y", "90+"),
        ("006M", "0-9"),
        ("003W", "0-9"),
        ("010D", "0-9"),
        ("130M", "10-19"),
        ("45", None),
        ("", None),
        ("abcY", None),
        ("045X", None),
        (None, None),
        (45, None),
    ],
)
def test_age_band(age: object, band: str | None) -> None:
    assert age_band(age) == band


def test_patient_age_leaves_only_as_a_band() -> None:
    metadata = extract_metadata(header(PatientAge="093Y"))
    assert metadata.PatientAgeBand == "90+"
    assert "093" not in metadata.model_dump_json()


def test_enhanced_multi_frame_shared_functional_groups() -> None:
    measures = header(PixelSpacing=["0.7", "0.7"], SliceThickness="1.5")
    transform = header(RescaleSlope="1", RescaleIntercept="-1024")
    voi = header(WindowCenter="40", WindowWidth="400")
    shared = header(
        PixelMeasuresSequence=[measures],
        PixelValueTransformationSequence=[transform],
        FrameVOILUTSequence=[voi],
    )
    metadata = extract_metadata(header(Modality="CT", SharedFunctionalGroupsSequence=[shared]))
    assert metadata.PixelSpacing == [0.7, 0.7] and metadata.SliceThickness == 1.5
    assert metadata.RescaleIntercept == -1024.0 and metadata.WindowWidth == 400.0


def test_top_level_wins_over_functional_groups() -> None:
    shared = header(PixelMeasuresSequence=[header(SliceThickness="5")])
    ds = header(SliceThickness="1", SharedFunctionalGroupsSequence=[shared])
    assert extract_metadata(ds).SliceThickness == 1.0


def test_study_key_is_the_hmac_of_the_uid() -> None:
    key = study_key_for(STUDY_UID, b"site-a-secret")
    assert key == hmac.new(b"site-a-secret", STUDY_UID.encode(), hashlib.sha256).hexdigest()
    assert len(key) == 64 and key == key.lower() and int(key, 16) >= 0
    assert STUDY_UID not in key


def test_study_key_differs_by_site_and_is_not_a_plain_hash() -> None:
    site_a = study_key_for(STUDY_UID, b"site-a-secret")
    site_b = study_key_for(STUDY_UID, b"site-b-secret")
    assert site_a != site_b
    assert site_a != hashlib.sha256(STUDY_UID.encode()).hexdigest()
    assert study_key_for(STUDY_UID + "1", b"site-a-secret") != site_a


def test_study_key_ignores_uid_padding() -> None:
    assert study_key_for(STUDY_UID + "\x00", b"k") == study_key_for(STUDY_UID, b"k")


@pytest.mark.parametrize(("uid", "site_key"), [("", b"k"), (" \x00", b"k"), (STUDY_UID, b"")])
def test_study_key_refuses_empty_inputs(uid: str, site_key: bytes) -> None:
    with pytest.raises(ValueError):
        study_key_for(uid, site_key)


def test_text_in_an_identifiers_form_is_dropped_and_named() -> None:
    ds = full_header()
    ds.ManufacturerModelName = "DOE^JOHN"
    ds.SoftwareVersions = ["VA10", STUDY_UID]
    ds.BodyPartExamined = "19610407"
    ds.ConvolutionKernel = "00123456"
    screened = screen_metadata(ds)
    assert screened.phi_dropped == {
        "ManufacturerModelName": PhiRule.PERSON_NAME,
        "SoftwareVersions": PhiRule.UID,  # the whole field, its clean value too
        "BodyPartExamined": PhiRule.DATE,
        "ConvolutionKernel": PhiRule.DIGITS,
    }
    kept = screened.metadata.model_dump(exclude_none=True)
    assert not set(screened.phi_dropped) & set(kept)
    assert kept["Manufacturer"] == "ACME Imaging" and kept["KVP"] == 110.0
    assert extract_metadata(ds) == screened.metadata


def test_real_device_strings_are_kept() -> None:
    screened = screen_metadata(full_header())
    assert screened.phi_dropped == {}
    assert screened.metadata == extract_metadata(full_header())


def test_values_are_screened_before_truncation() -> None:
    # Cut at 64 characters, the UID would leave as a harmless-looking four-part prefix and the
    # MRN as five digits: screening the whole value drops both fields.
    ds = header(
        SoftwareVersions="x" * 55 + " 1.2.840.113619.2.55.3",
        ManufacturerModelName="y" * 61 + "00123456",
        Manufacturer=["ACME"] * MAX_ITEMS + ["DOE^JOHN"],  # the 17th value never leaves
    )
    screened = screen_metadata(ds)
    assert screened.phi_dropped == {
        "SoftwareVersions": PhiRule.UID,
        "ManufacturerModelName": PhiRule.DIGITS,
    }
    assert screened.metadata.Manufacturer == ["ACME"] * MAX_ITEMS
