"""Four public chest X-ray header tables mapped onto the inference-event/v1 metadata allowlist.

Each loader reads only the columns it maps (plus, for labels, a join key that never leaves this
module), converts them the way the edge extractor would, and returns an :class:`XrvTable`: per
row the event modality, the allowlisted metadata and whether the image is abnormal according to
the dataset's own labels. docs/simulate.md ("Real metadata") lists the mappings.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Final

from monitor.dicom.metadata import age_band
from monitor.simulate.xrv.source import XrvDataError, open_member, read_columns

MetadataValue = str | float | list[float]
Column = list[MetadataValue | None]


class XrvDataset(StrEnum):
    """The header tables shipped in the torchxrayvision wheel."""

    NIH = "nih"
    """NIH ChestX-ray14, ``Data_Entry_2017_v2020.csv.gz`` (112,120 frontal images)."""
    RSNA = "rsna"
    """RSNA Pneumonia Detection Challenge, ``kaggle_stage_2_train_images_dicom_headers.csv.gz``."""
    OPENI = "openi"
    """Indiana University / OpenI, ``nlmcxr_dicom_metadata.csv.gz`` (full DICOM headers)."""
    CHEXPERT = "chexpert"
    """CheXpert (Stanford), ``chexpert_train.csv.gz`` (frontal and lateral images)."""


ASSUMED_MODALITY: Final = "CR"
"""Event ``modality`` for tables without a Modality column (NIH, CheXpert): the RSNA subset of
NIH's images is recorded as CR. The metadata's own ``Modality`` stays absent for those rows."""


@dataclass(frozen=True, slots=True)
class XrvTable:
    """One dataset mapped row by row: event modality, allowlisted metadata, abnormal truth."""

    dataset: XrvDataset
    modality: list[str]
    metadata: Mapping[str, Column]
    """Allowlisted DICOM keyword -> one value per row (None where the row has none)."""
    abnormal: list[bool]

    def __len__(self) -> int:
        return len(self.abnormal)

    @property
    def fields(self) -> tuple[str, ...]:
        """The allowlisted keywords this dataset can fill."""
        return tuple(self.metadata)

    def row_metadata(self, row: int, fields: frozenset[str] | None = None) -> dict[str, object]:
        """The metadata of ``row`` (restricted to ``fields`` when given), absent values omitted."""
        return {
            name: values[row]
            for name, values in self.metadata.items()
            if values[row] is not None and (fields is None or name in fields)
        }


def load_table(dataset: XrvDataset, wheel: Path) -> XrvTable:
    """The mapped table of ``dataset`` read from ``wheel`` (cached per process)."""
    return _load(XrvDataset(dataset), wheel)


@lru_cache(maxsize=8)
def _load(dataset: XrvDataset, wheel: Path) -> XrvTable:
    return _LOADERS[dataset](wheel)


def _nih(wheel: Path) -> XrvTable:
    # The header "OriginalImage[Width,Height]" is split by its comma into two CSV columns.
    cells = read_columns(
        wheel,
        "Data_Entry_2017_v2020.csv.gz",
        [
            "View Position",
            "Patient Gender",
            "Patient Age",
            "OriginalImage[Width",
            "Height]",
            "OriginalImagePixelSpacing[x",
            "y]",
            "Finding Labels",
        ],
    )
    spacing: Column = [
        _spacing_pair(y, x)
        for y, x in zip(cells["y]"], cells["OriginalImagePixelSpacing[x"], strict=True)
    ]
    metadata: dict[str, Column] = {
        "ViewPosition": _map(cells["View Position"], _text),
        "PatientSex": _map(cells["Patient Gender"], _sex),
        "PatientAgeBand": _map(cells["Patient Age"], _band_of_years),
        "Rows": _map(cells["Height]"], _number),
        "Columns": _map(cells["OriginalImage[Width"], _number),
        "PixelSpacing": spacing,
    }
    abnormal = [labels != "No Finding" for labels in cells["Finding Labels"]]
    return _table(XrvDataset.NIH, metadata, abnormal)


def _rsna(wheel: Path) -> XrvTable:
    cells = read_columns(
        wheel,
        "kaggle_stage_2_train_images_dicom_headers.csv.gz",
        [
            "Modality",
            "BodyPartExamined",
            "ViewPosition",
            "PatientSex",
            "PatientAge",
            "PixelSpacing",
            "PatientID",
        ],
    )
    # The challenge's truth (Target 1 = lung opacity suggestive of pneumonia), joined on the
    # patient id, which is read for this join only.
    labels = read_columns(wheel, "kaggle_stage_2_train_labels.csv.zip", ["patientId", "Target"])
    target: dict[str, bool] = {}
    for patient, value in zip(labels["patientId"], labels["Target"], strict=True):
        target[patient] = target.get(patient, False) or value == "1"
    missing = sum(patient not in target for patient in cells["PatientID"])
    if missing:
        raise XrvDataError(f"{missing} RSNA header rows have no row in the challenge labels")
    metadata: dict[str, Column] = {
        "Modality": _map(cells["Modality"], _text),
        "BodyPartExamined": _map(cells["BodyPartExamined"], _text),
        "ViewPosition": _map(cells["ViewPosition"], _text),
        "PatientSex": _map(cells["PatientSex"], _sex),
        "PatientAgeBand": _map(cells["PatientAge"], _band_of_years),
        "PixelSpacing": _map(cells["PixelSpacing"], _number),
    }
    abnormal = [target[patient] for patient in cells["PatientID"]]
    return _table(XrvDataset.RSNA, metadata, abnormal, modality=metadata["Modality"])


_OPENI_NUMERIC: Final = {
    "KVP": "KVP",
    "XRayTubeCurrent": "X-Ray Tube Current",
    "Exposure": "Exposure",
    "ExposureTime": "Exposure Time",
    "PixelSpacing": "Pixel Spacing",
    "ImagerPixelSpacing": "Imager Pixel Spacing",
    "Rows": "Rows",
    "Columns": "Columns",
    "BitsStored": "Bits Stored",
    "WindowCenter": "Window Center",
    "WindowWidth": "Window Width",
    "RescaleSlope": "Rescale Slope",
    "RescaleIntercept": "Rescale Intercept",
}
_OPENI_TEXT: Final = {
    "Modality": "Modality",
    "Manufacturer": "Manufacturer",
    "PhotometricInterpretation": "Photometric Interpretation",
    "ViewPosition": "View Position",
    "BodyPartExamined": "Body Part Examined",
    "PatientSex": "Patient's Sex",
}
_OPENI_DATES: Final = ("Patient's Birth Date", "Study Date")


def _openi(wheel: Path) -> XrvTable:
    columns = [*_OPENI_NUMERIC.values(), *_OPENI_TEXT.values(), *_OPENI_DATES, "imageid"]
    cells = read_columns(wheel, "nlmcxr_dicom_metadata.csv.gz", columns)
    abnormal_by_image = _openi_labels(wheel)
    # Two images have no report; they are left out rather than given an invented truth.
    keep = [i for i, image in enumerate(cells["imageid"]) if image in abnormal_by_image]
    metadata: dict[str, Column] = {}
    for keyword, column in _OPENI_NUMERIC.items():
        metadata[keyword] = [_numbers(cells[column][i]) for i in keep]
    for keyword, column in _OPENI_TEXT.items():
        convert = _sex if keyword == "PatientSex" else _text
        metadata[keyword] = [convert(cells[column][i]) for i in keep]
    # The age at the study, as the edge would derive PatientAge; the dates stay here.
    metadata["PatientAgeBand"] = [
        _band_from_dates(cells[_OPENI_DATES[0]][i], cells[_OPENI_DATES[1]][i]) for i in keep
    ]
    abnormal = [abnormal_by_image[cells["imageid"][i]] for i in keep]
    modality = [_text(cells["Modality"][i]) for i in keep]
    return _table(XrvDataset.OPENI, metadata, abnormal, modality=modality)


def _openi_labels(wheel: Path) -> dict[str, bool]:
    """Image id -> abnormal: a report is normal when its only major MeSH term is "normal"."""
    abnormal: dict[str, bool] = {}
    with tarfile.open(fileobj=open_member(wheel, "NLMCXR_reports.tgz"), mode="r:gz") as reports:
        for member in reports:
            report = reports.extractfile(member) if member.name.endswith(".xml") else None
            if report is None:
                continue
            root = ElementTree.parse(io.BytesIO(report.read())).getroot()
            normal = [major.text for major in root.iter("major")] == ["normal"]
            for image in root.iter("parentImage"):
                abnormal[image.get("id", "")] = not normal
    return abnormal


def _chexpert(wheel: Path) -> XrvTable:
    cells = read_columns(
        wheel, "chexpert_train.csv.gz", ["Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding"]
    )
    view = [
        _text(ap_pa) or ("LATERAL" if kind == "Lateral" else None)
        for ap_pa, kind in zip(cells["AP/PA"], cells["Frontal/Lateral"], strict=True)
    ]
    metadata: dict[str, Column] = {
        "ViewPosition": list(view),
        "PatientSex": _map(cells["Sex"], _sex),
        # CheXpert records every age of 90 or more as 90, which the band pools anyway.
        "PatientAgeBand": _map(cells["Age"], _band_of_years),
    }
    abnormal = [value != "1.0" for value in cells["No Finding"]]
    return _table(XrvDataset.CHEXPERT, metadata, abnormal)


_LOADERS: Final[dict[XrvDataset, Callable[[Path], XrvTable]]] = {
    XrvDataset.NIH: _nih,
    XrvDataset.RSNA: _rsna,
    XrvDataset.OPENI: _openi,
    XrvDataset.CHEXPERT: _chexpert,
}


def _table(
    dataset: XrvDataset,
    metadata: dict[str, Column],
    abnormal: list[bool],
    modality: Sequence[MetadataValue | None] | None = None,
) -> XrvTable:
    modalities = [
        value if isinstance(value, str) else ASSUMED_MODALITY
        for value in (modality or [None] * len(abnormal))
    ]
    # A column that is empty in every row (OpenI's Manufacturer, PatientSex) is not a field.
    filled = {
        name: values for name, values in metadata.items() if any(v is not None for v in values)
    }
    return XrvTable(dataset, modalities, filled, abnormal)


def _map(cells: list[str], convert: Callable[[str], MetadataValue | None]) -> Column:
    seen: dict[str, MetadataValue | None] = {}
    return [seen[cell] if cell in seen else seen.setdefault(cell, convert(cell)) for cell in cells]


def _text(cell: str) -> str | None:
    text = cell.strip()
    return text if text and len(text) <= 64 else None


_SEX: Final = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F"}


def _sex(cell: str) -> str | None:
    return _SEX.get(cell.strip().upper())


def _number(cell: str) -> float | None:
    try:
        number = float(cell)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_LIST: Final = re.compile(r"^\[(.*)\]$")


def _numbers(cell: str) -> float | list[float] | None:
    """A number, or a list written as Python's repr of DICOM multi-values ("['0.1', '0.1']")."""
    match = _LIST.match(cell.strip())
    if match is None:
        return _number(cell)
    numbers = [_number(item.strip(" '\"")) for item in match.group(1).split(",")]
    valid = [n for n in numbers if n is not None]
    # Positions carry meaning (row vs column spacing): one bad item spoils the list.
    return valid if valid and len(valid) == len(numbers) and len(valid) <= 16 else None


def _spacing_pair(row_spacing: str, column_spacing: str) -> list[float] | None:
    along_rows, along_columns = _number(row_spacing), _number(column_spacing)
    if along_rows is None or along_columns is None:
        return None
    return [along_rows, along_columns]


def _band_of_years(cell: str) -> str | None:
    years = cell.strip()
    return age_band(f"{int(years):03d}Y") if years.isdigit() and len(years) <= 3 else None


def _band_from_dates(birth: str, study: str) -> str | None:
    if not (len(birth) == len(study) == 8 and birth.isdigit() and study.isdigit()):
        return None
    years = (int(study) - int(birth)) // 10_000  # YYYYMMDD arithmetic gives whole years
    return age_band(f"{years:03d}Y") if 0 <= years <= 999 else None
