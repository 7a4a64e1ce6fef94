"""Real DICOM files with identifiers typed into the allowlisted text fields.

Each file is pydicom's ``CT_small.dcm`` (a GE CT slice: Manufacturer "GE MEDICAL SYSTEMS", model
"RHAPSODE", SoftwareVersions "05", kernel "STANDARD") with one text attribute overwritten, saved
under a directory and a file name that carry a patient's name, birth date and MRN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from monitor.phi import PhiRule

BASE_FILE = "CT_small.dcm"
STUDY_UID = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
"""The StudyInstanceUID of ``CT_small.dcm``."""
NAME_IN_PATH = "DOE^JOHN_19610407_MRN00123456"


@dataclass(frozen=True)
class Hostile:
    keyword: str
    value: str | list[str]
    rule: PhiRule

    @property
    def values(self) -> list[str]:
        return self.value if isinstance(self.value, list) else [self.value]


HOSTILE: dict[str, Hostile] = {
    "pn-in-model": Hostile("ManufacturerModelName", "DOE^JOHN", PhiRule.PERSON_NAME),
    "uid-in-version": Hostile("SoftwareVersions", ["05", STUDY_UID], PhiRule.UID),
    "birth-date-in-body-part": Hostile("BodyPartExamined", "19610407", PhiRule.DATE),
    "mrn-in-kernel": Hostile("ConvolutionKernel", "00123456", PhiRule.DIGITS),
    "date-time-in-manufacturer": Hostile("Manufacturer", "1961-04-07T09:30", PhiRule.DATE),
}
CLEAN = {
    "Manufacturer": "GE MEDICAL SYSTEMS",
    "ManufacturerModelName": "RHAPSODE",
    "SoftwareVersions": "05",
    "ConvolutionKernel": "STANDARD",
}
"""What ``CT_small.dcm`` carries itself, all of which must pass."""
SECRETS = (*(v for h in HOSTILE.values() for v in h.values if v != "05"), "DOE", "19610407")
"""Strings that must appear in no output, log, message, row or record."""


def write_files(root: Path) -> tuple[Path, dict[str, Path]]:
    """The clean file and one hostile file per kind, in a directory named after a patient."""
    directory = root / NAME_IN_PATH
    directory.mkdir(parents=True)
    base = get_testdata_file(BASE_FILE)
    assert base is not None, "pydicom's test data is missing"
    clean = directory / f"{NAME_IN_PATH}_clean.dcm"
    pydicom.dcmread(base).save_as(clean)
    hostile: dict[str, Path] = {}
    for kind, case in HOSTILE.items():
        ds = pydicom.dcmread(base)
        setattr(ds, case.keyword, case.value)
        hostile[kind] = directory / f"{NAME_IN_PATH}_{kind}.dcm"
        ds.save_as(hostile[kind])
    return clean, hostile
