"""Synthetic chest radiographs as DICOM data sets, complete with fake PHI.

The image model (docs/simulate.md): a smooth anatomy template (body, two lung fields, heart,
spine, ribs) in normalised brightness, scaled by the profile's tissue contrast; a per-study
exposure gain and offset; a Gaussian lesion inside a lung field when there is one; additive
Gaussian noise of the profile's ``noise_sd``; quantisation to ``bits_stored``; inversion for
MONOCHROME1. The header carries the profile's acquisition values and, on purpose, identifying
values (names, IDs, dates, institution, UIDs) so that the edge extractor's PHI stripping is
exercised on every simulated study.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from monitor.simulate.anatomy import (
    ADULT_FRONTAL,
    Anatomy,
    FloatImage,
    Positioning,
    anatomy_template,
    background_brightness,
    lesion_centres,
    reposition,
)
from monitor.simulate.profiles import ScannerProfile

__all__ = [
    "ADULT_AGE_DAYS",
    "CHILD_AGE_DAYS",
    "FakePatient",
    "StudyContent",
    "StudyIdentity",
    "anatomy_template",
    "lesion_centres",
    "render_study",
]

_SOP_CLASS: Final = {
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
}
_EXPOSURE_GAIN_SD: Final = 0.04
_EXPOSURE_OFFSET_SD: Final = 0.02
_LESION_SIGMA: Final = (0.002, 0.06)
"""Range of the lesion's Gaussian sigma, as a share of the image size: from specks that a 64 px
model cannot resolve to large nodules (docs/simulate.md: what a model learns from them)."""
ADULT_AGE_DAYS: Final = (18 * 366, 95 * 365)
"""Ages of a simulated patient, in days: 18 to 94 years."""
CHILD_AGE_DAYS: Final = (366, 16 * 365)
"""Ages of a simulated child (a paediatric population): 1 to 15 years."""


@dataclass(frozen=True, slots=True)
class StudyContent:
    """What a content-shifted study shows instead of its room's usual adult PA/AP chest
    (``monitor.simulate.content``): another anatomy, a positioning and collimation change, and
    the ViewPosition its header then says (None: the profile's)."""

    anatomy: Anatomy = ADULT_FRONTAL
    positioning: Positioning | None = None
    view_position: str | None = None


@dataclass(frozen=True, slots=True)
class FakePatient:
    """An obviously fake patient: every identifier starts with "SIM"."""

    name: str
    patient_id: str
    birth_date: date
    sex: Literal["M", "F"]

    @classmethod
    def generate(
        cls,
        rng: np.random.Generator,
        acquired_on: date,
        age_days: tuple[int, int] = ADULT_AGE_DAYS,
    ) -> FakePatient:
        """A patient aged ``age_days`` (low inclusive, high exclusive; by default 18 to 94
        years) on ``acquired_on``, drawn from ``rng``."""
        number = int(rng.integers(0, 1_000_000))
        sex: Literal["M", "F"] = "M" if rng.random() < 0.5 else "F"
        age_days_drawn = int(rng.integers(*age_days))
        return cls(
            name=f"SIM^PATIENT{number:06d}",
            patient_id=f"SIMPID{number:06d}",
            birth_date=acquired_on - timedelta(days=age_days_drawn),
            sex=sex,
        )

    def age_on(self, day: date) -> int:
        """Whole years of age on ``day``."""
        had_birthday = (day.month, day.day) >= (self.birth_date.month, self.birth_date.day)
        return day.year - self.birth_date.year - (0 if had_birthday else 1)


@dataclass(frozen=True, slots=True)
class StudyIdentity:
    """The identifying values of one study (all PHI under DICOM PS3.15 Annex E)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    accession_number: str
    acquired_at: datetime
    institution: str
    station: str
    referring_physician: str

    @classmethod
    def derive(cls, *, seed: int, site_id: str, index: int, acquired_at: datetime) -> StudyIdentity:
        """Identifiers that depend only on (seed, site, study index), so reruns reproduce them."""
        sources = [str(seed), site_id, str(index)]
        number = site_id.rpartition("-")[2]
        return cls(
            study_uid=generate_uid(entropy_srcs=[*sources, "study"]),
            series_uid=generate_uid(entropy_srcs=[*sources, "series"]),
            sop_uid=generate_uid(entropy_srcs=[*sources, "instance"]),
            accession_number=f"SIM{number}{index:07d}{seed % 1000:03d}",
            acquired_at=acquired_at,
            institution=f"SIM General Hospital {number}",
            station=f"SIMXR{number}",
            referring_physician=f"SIM^REFERRER{index % 50:02d}",
        )

    @classmethod
    def random(cls, rng: np.random.Generator, acquired_at: datetime) -> StudyIdentity:
        """Identifiers drawn from ``rng``, for studies rendered outside a simulation."""
        seed = int(rng.integers(0, 2**31))
        return cls.derive(seed=seed, site_id="site-00", index=0, acquired_at=acquired_at)


def render_study(
    profile: ScannerProfile,
    has_lesion: bool,
    rng: np.random.Generator,
    size: int = 256,
    *,
    patient: FakePatient,
    identity: StudyIdentity | None = None,
    content: StudyContent | None = None,
) -> Dataset:
    """A synthetic chest radiograph of ``patient`` on ``profile``, as a file-ready data set.

    ``identity`` supplies the UIDs, accession number, date and institution; without it they are
    drawn from ``rng`` (acquired at 2020-01-01 UTC). ``content`` renders another anatomy or
    positioning (a content shift); without it, the adult PA/AP chest. The random draws are the
    same either way. The data set has file meta (Explicit VR Little Endian) and is written with
    ``ds.save_as(path, enforce_file_format=True)``.
    """
    if identity is None:
        identity = StudyIdentity.random(rng, datetime(2020, 1, 1, tzinfo=UTC))
    content = content or StudyContent()
    stored = _quantise(_pixels(profile, has_lesion, rng, size, content), profile)
    ds = _header(profile, size, patient, identity)
    if content.view_position is not None:
        ds.ViewPosition = content.view_position
    ds.add_new(0x7FE00010, "OW", stored.tobytes())
    return ds


def _pixels(
    profile: ScannerProfile,
    has_lesion: bool,
    rng: np.random.Generator,
    size: int,
    content: StudyContent,
) -> FloatImage:
    """Normalised MONOCHROME2 brightness (bone bright, air dark), before quantisation."""
    gain = 1.0 + _EXPOSURE_GAIN_SD * rng.standard_normal()
    offset = _EXPOSURE_OFFSET_SD * rng.standard_normal()
    # Drawn whether or not there is a lesion, so the noise that follows is the same either way.
    centres = lesion_centres(size, content.anatomy)
    row, col = (int(i) for i in centres[int(rng.integers(0, len(centres)))])
    sigma = float(rng.uniform(*_LESION_SIGMA)) * size
    image = anatomy_template(profile.contrast, size, content.anatomy) * np.float32(gain)
    image += np.float32(offset)
    if has_lesion:
        _add_blob(image, row, col, sigma, profile.lesion_contrast * gain)
    if content.positioning is not None:
        # Moved with the lesion (it is in the patient); the exposure applies to the air too.
        air = background_brightness(profile.contrast) * gain + offset
        image = reposition(image, content.positioning, air)
    noise = rng.standard_normal((size, size), dtype=np.float32)
    noise *= np.float32(profile.noise_sd)
    image += noise
    return image


def _add_blob(image: FloatImage, row: int, col: int, sigma: float, amplitude: float) -> None:
    """Add a Gaussian blob centred at (row, col), in place."""
    size = image.shape[0]
    # Only the +/- 3 sigma window is touched: beyond it the blob is ~1 % of its peak, far below
    # the noise.
    reach = int(np.ceil(3 * sigma))
    top, bottom = max(row - reach, 0), min(row + reach + 1, size)
    left, right = max(col - reach, 0), min(col + reach + 1, size)
    rows = np.arange(top, bottom, dtype=np.float32)[:, None] - row
    cols = np.arange(left, right, dtype=np.float32)[None, :] - col
    blob = np.exp(-(rows**2 + cols**2) / np.float32(2 * sigma**2))
    image[top:bottom, left:right] += np.float32(amplitude) * blob


def _quantise(image: FloatImage, profile: ScannerProfile) -> npt.NDArray[np.uint16]:
    """Stored values for the profile's bit depth; MONOCHROME1 stores bright as low values."""
    top = float(2**profile.bits_stored - 1)
    scaled = np.clip(image, 0.0, 1.0) * np.float32(top) + np.float32(0.5)
    stored = scaled.astype(np.uint16)
    if profile.photometric == "MONOCHROME1":
        np.subtract(np.uint16(top), stored, out=stored)
    return stored


def _header(
    profile: ScannerProfile, size: int, patient: FakePatient, identity: StudyIdentity
) -> Dataset:
    sop_class = _SOP_CLASS[profile.modality]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(identity.sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    _identifying(ds, patient, identity)
    _acquisition(ds, profile)
    _image_pixel(ds, profile, size)
    return ds


def _identifying(ds: Dataset, patient: FakePatient, identity: StudyIdentity) -> None:
    """The fake PHI that the edge extractor must never let through."""
    when = identity.acquired_at.astimezone(UTC)
    ds.SOPInstanceUID = identity.sop_uid
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = identity.accession_number
    ds.StudyID = identity.accession_number[-8:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.InstitutionName = identity.institution
    ds.StationName = identity.station
    ds.ReferringPhysicianName = identity.referring_physician
    ds.OperatorsName = "SIM^RADIOGRAPHER"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{min(patient.age_on(when.date()), 999):03d}Y"


def _acquisition(ds: Dataset, profile: ScannerProfile) -> None:
    spacing = [f"{profile.pixel_spacing_mm:g}"] * 2
    ds.Modality = profile.modality
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model_name
    ds.SoftwareVersions = profile.software_version
    ds.KVP = f"{profile.kvp:g}"
    ds.XRayTubeCurrent = profile.tube_current_ma
    ds.Exposure = profile.exposure_mas
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.ViewPosition = profile.view_position
    ds.BodyPartExamined = profile.body_part
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if profile.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"


def _image_pixel(ds: Dataset, profile: ScannerProfile, size: int) -> None:
    top = 2**profile.bits_stored - 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 0
    # The window spans the anatomy's brightness range (about 0.05 to 0.85 of full scale), which
    # MONOCHROME1 stores mirrored.
    centre = 0.45 if profile.photometric == "MONOCHROME2" else 0.55
    ds.WindowCenter = f"{round(centre * top)}"
    ds.WindowWidth = f"{round(0.8 * top)}"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
