"""Header-table mappings and stream builders of monitor.simulate.xrv, on a miniature wheel.

The wheel built here has the real members' names and column layouts (NIH's split header, RSNA's
separate label file, OpenI's list cells and report archive) with a few hand-written rows, so
every mapping rule is checked exactly. tests/integration/test_xrv.py runs the same builders on
the real tables.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from monitor.events import InferenceEvent, parse_event, to_json
from monitor.simulate.xrv import (
    ALL_FIELDS,
    ASSUMED_MODALITY,
    WHEEL_ENV,
    XrvDataError,
    XrvDataset,
    download_wheel,
    load_table,
    locate_wheel,
    stable_stream,
    study_key,
    switching_stream,
)
from monitor.simulate.xrv.source import DATA_DIR

NIH_CSV = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.139\n"
    "00000002_000.png,No Finding,0,2,93,F,AP,2500,2048,0.168,0.168\n"
    "00000003_000.png,No Finding,0,3,abc,X,AP,2500,2048,,0.168\n"
)
RSNA_CSV = (
    ",BodyPartExamined,ConversionType,Filename,InstanceNumber,Modality,PatientAge,PatientID,"
    "PatientOrientation,PatientSex,PixelSpacing,SamplesPerPixel,SeriesNumber,ViewPosition\n"
    "0,CHEST,WSD,aaaa-1111.dcm,1.0,CR,43,aaaa-1111,,F,0.168,1.0,1.0,AP\n"
    "1,CHEST,WSD,bbbb-2222.dcm,1.0,CR,151,bbbb-2222,,M,0.143,1.0,1.0,PA\n"
)
RSNA_LABELS = "patientId,x,y,width,height,Target\naaaa-1111,1,2,3,4,1\naaaa-1111,5,6,7,8,1\n"
RSNA_LABELS += "bbbb-2222,,,,,0\n"
OPENI_CSV = (
    "imageid,Accession Number,Patient's Birth Date,Study Date,Study Instance UID,Modality,"
    "Manufacturer,Patient's Sex,Photometric Interpretation,View Position,Body Part Examined,"
    "KVP,X-Ray Tube Current,Exposure,Exposure Time,Pixel Spacing,Imager Pixel Spacing,Rows,"
    "Columns,Bits Stored,Window Center,Window Width,Rescale Slope,Rescale Intercept\n"
    "CXR1_IM-0001-1001,8124495960591761,19550820,20110328,9999.5350340878438316265999,CR,,,"
    "MONOCHROME1,PA,CHEST,125.000,400,2,3,\"['0.1500', '0.1500']\",\"['0.143', '0.143']\","
    "2828,2320,12,16383.500,32767.000,1,0\n"
    "CXR1_IM-0001-2001,8124495960591761,19550820,20110328,9999.5350340878438316265999,DX,,,"
    "MONOCHROME2,LL,,0,,,,\"['0.15', 'x']\",,2991,2992,15,,,,\n"
    "CXR2_IM-0002-1001,1234567890123456,,20120101,9999.1234567890123456789012,CR,,,"
    "MONOCHROME2,,,,,,,,,2048,2048,10,,,,\n"
)
OPENI_REPORTS = {
    "ecgen-radiology/1.xml": "<e><MeSH><major>normal</major></MeSH>"
    '<parentImage id="CXR1_IM-0001-1001"/><parentImage id="CXR1_IM-0001-2001"/></e>',
}
CHEXPERT_CSV = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly\n"
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,\n"
    "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Male,90,Lateral,,,1.0\n"
    "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Unknown,45,Frontal,PA,,\n"
)
IDENTIFIERS = (
    "00000001_000.png",
    "aaaa-1111",
    "bbbb-2222",
    "8124495960591761",
    "19550820",
    "20110328",
    "9999.5350340878438316265999",
    "CXR1_IM-0001-1001",
    "patient00001",
)


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def _zip(name: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, text)
    return buffer.getvalue()


def _tgz(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("xrv") / "mini.whl"
    members = {
        "Data_Entry_2017_v2020.csv.gz": _gz(NIH_CSV),
        "kaggle_stage_2_train_images_dicom_headers.csv.gz": _gz(RSNA_CSV),
        "kaggle_stage_2_train_labels.csv.zip": _zip("stage_2_train_labels.csv", RSNA_LABELS),
        "nlmcxr_dicom_metadata.csv.gz": _gz(OPENI_CSV),
        "NLMCXR_reports.tgz": _tgz(OPENI_REPORTS),
        "chexpert_train.csv.gz": _gz(CHEXPERT_CSV),
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(DATA_DIR + name, data)
    return path


def test_nih_mapping(wheel: Path) -> None:
    table = load_table(XrvDataset.NIH, wheel)
    assert len(table) == 3
    assert table.row_metadata(0) == {
        "ViewPosition": "PA",
        "PatientSex": "M",
        "PatientAgeBand": "50-59",
        "Rows": 2749.0,
        "Columns": 2682.0,
        "PixelSpacing": [0.139, 0.143],  # DICOM order: along rows (y) first
    }
    assert table.row_metadata(1)["PatientAgeBand"] == "90+"
    # Unparsable age, unknown sex and half a spacing pair are left out, not guessed.
    assert table.row_metadata(2) == {"ViewPosition": "AP", "Rows": 2048.0, "Columns": 2500.0}
    assert table.abnormal == [True, False, False]
    assert table.modality == [ASSUMED_MODALITY] * 3


def test_rsna_mapping_joins_labels_by_patient(wheel: Path) -> None:
    table = load_table(XrvDataset.RSNA, wheel)
    assert table.row_metadata(0) == {
        "Modality": "CR",
        "BodyPartExamined": "CHEST",
        "ViewPosition": "AP",
        "PatientSex": "F",
        "PatientAgeBand": "40-49",
        "PixelSpacing": 0.168,
    }
    assert table.row_metadata(1)["PatientAgeBand"] == "90+"  # pooled as the edge pools it
    assert table.abnormal == [True, False]


def test_openi_mapping(wheel: Path) -> None:
    table = load_table(XrvDataset.OPENI, wheel)
    assert len(table) == 2  # the image without a report is left out
    assert table.row_metadata(0) == {
        "Modality": "CR",
        "PhotometricInterpretation": "MONOCHROME1",
        "ViewPosition": "PA",
        "BodyPartExamined": "CHEST",
        "KVP": 125.0,
        "XRayTubeCurrent": 400.0,
        "Exposure": 2.0,
        "ExposureTime": 3.0,
        "PixelSpacing": [0.15, 0.15],
        "ImagerPixelSpacing": [0.143, 0.143],
        "Rows": 2828.0,
        "Columns": 2320.0,
        "BitsStored": 12.0,
        "WindowCenter": 16383.5,
        "WindowWidth": 32767.0,
        "RescaleSlope": 1.0,
        "RescaleIntercept": 0.0,
        "PatientAgeBand": "50-59",  # 2011-03-28 minus 1955-08-20: 55 years
    }
    second = table.row_metadata(1)
    assert "PixelSpacing" not in second  # one bad item spoils the list
    assert second["KVP"] == 0.0 and second["Modality"] == "DX"
    assert table.modality == ["CR", "DX"]
    assert table.abnormal == [False, False]
    # Columns empty in every row are not fields.
    assert "Manufacturer" not in table.fields and "PatientSex" not in table.fields


def test_chexpert_mapping(wheel: Path) -> None:
    table = load_table(XrvDataset.CHEXPERT, wheel)
    assert [table.row_metadata(i) for i in range(3)] == [
        {"ViewPosition": "AP", "PatientSex": "F", "PatientAgeBand": "60-69"},
        {"ViewPosition": "LATERAL", "PatientSex": "M", "PatientAgeBand": "90+"},
        {"ViewPosition": "PA", "PatientAgeBand": "40-49"},
    ]
    assert table.abnormal == [False, True, True]


def test_switching_stream_is_valid_ordered_and_keeps_shared_fields(wheel: Path) -> None:
    events = switching_stream("nih", "rsna", 3, 2, "site-07", seed=5, wheel=wheel)
    assert len(events) == 5
    times = [event.occurred_at for event in events]
    assert times == sorted(times) and len(set(times)) == 5
    shared = {"ViewPosition", "PatientSex", "PatientAgeBand", "PixelSpacing"}
    for event in events:
        assert parse_event(to_json(event)) == event
        assert set(event.metadata.model_dump(exclude_none=True)) <= shared
    assert len({event.study_key for event in events}) == 5
    assert len({event.event_id for event in events}) == 5


def test_all_fields_keeps_every_field(wheel: Path) -> None:
    events = switching_stream("nih", "rsna", 3, 2, "site-07", 5, fields=ALL_FIELDS, wheel=wheel)
    assert events[0].metadata.Rows is not None and events[-1].metadata.Modality == "CR"


def test_streams_are_deterministic_and_differ_by_site(wheel: Path) -> None:
    def stream(site: str, seed: int) -> list[InferenceEvent]:
        return stable_stream("chexpert", 3, site, seed, wheel=wheel)

    assert [to_json(e) for e in stream("site-01", 1)] == [to_json(e) for e in stream("site-01", 1)]
    assert stream("site-01", 1)[0].event_id != stream("site-02", 1)[0].event_id


def test_no_identifier_reaches_an_event(wheel: Path) -> None:
    events = [
        *stable_stream("nih", 3, "site-01", 0, wheel=wheel),
        *switching_stream("rsna", "openi", 2, 2, "site-02", 0, fields=ALL_FIELDS, wheel=wheel),
        *stable_stream("chexpert", 3, "site-03", 0, wheel=wheel),
    ]
    wire = b"\n".join(to_json(event) for event in events).decode()
    leaked = [identifier for identifier in IDENTIFIERS if identifier in wire]
    assert leaked == []


def test_asking_for_more_rows_than_a_table_has_fails(wheel: Path) -> None:
    with pytest.raises(ValueError, match="rsna has 2 rows"):
        stable_stream("rsna", 3, "site-01", 0, wheel=wheel)


def test_unknown_field_is_refused(wheel: Path) -> None:
    with pytest.raises(ValueError, match="PatientID"):
        stable_stream("nih", 1, "site-01", 0, fields={"PatientID"}, wheel=wheel)


def test_study_key_is_a_pseudonym() -> None:
    key = study_key("site-01", XrvDataset.NIH, 17)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != study_key("site-02", XrvDataset.NIH, 17)


def test_wheel_env_naming_a_missing_file_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "absent.whl"))
    with pytest.raises(XrvDataError, match="does not name a file"):
        locate_wheel()


def test_wheel_with_other_bytes_is_refused(monkeypatch: pytest.MonkeyPatch, wheel: Path) -> None:
    monkeypatch.setenv(WHEEL_ENV, str(wheel))
    with pytest.raises(XrvDataError, match="SHA-256"):
        locate_wheel()


def test_failed_download_says_why(tmp_path: Path) -> None:
    # The interpreter runs but pip refuses an unknown option: a real failure with real output.
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m pip --no-such-option "$@"\n')
    script.chmod(0o755)
    with pytest.raises(XrvDataError, match="exited with status 2") as caught:
        download_wheel(tmp_path / "cache", python=str(script))
    assert "no such option" in str(caught.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial download left behind


def test_missing_interpreter_is_reported(tmp_path: Path) -> None:
    with pytest.raises(XrvDataError, match="could not run"):
        download_wheel(tmp_path, python=str(tmp_path / "no-python"))
