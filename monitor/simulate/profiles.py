"""Scanner profiles: what a simulated X-ray room puts in its headers and its pixels.

Header values (vendor, model, kVp, mA, mAs, detector pitch, photometric interpretation, bit
depth) are typical of chest radiography rooms sold by each vendor; they are plausible, not
copied from any one installation. ``noise_sd``, ``contrast`` and ``lesion_contrast`` drive the
image model in :mod:`monitor.simulate.images` and are in normalised brightness units (0 = black,
1 = white in a MONOCHROME2 rendering). The score model reads image quality from the same
numbers (:func:`monitor.simulate.scores.separation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

Modality = Literal["CR", "DX"]
Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
ViewPosition = Literal["PA", "AP"]


@dataclass(frozen=True, slots=True)
class ScannerProfile:
    """One kind of X-ray room: its DICOM header values and its image quality."""

    name: str
    modality: Modality
    manufacturer: str
    model_name: str
    software_version: str
    kvp: float
    tube_current_ma: int
    """XRayTubeCurrent (IS, so whole milliamperes)."""
    exposure_mas: int
    """Exposure (IS, so whole milliampere-seconds)."""
    pixel_spacing_mm: float
    photometric: Photometric
    bits_stored: int
    noise_sd: float
    """Standard deviation of the additive Gaussian noise, in normalised brightness."""
    contrast: float
    """Scale of the tissue contrast around mid-grey (1 = the reference anatomy)."""
    lesion_contrast: float
    """Peak brightness of a lesion above its surroundings, in normalised brightness."""
    view_position: ViewPosition = "PA"
    body_part: str = "CHEST"

    def __post_init__(self) -> None:
        if not 8 <= self.bits_stored <= 16:
            raise ValueError("bits_stored must be between 8 and 16 (pixels are stored as uint16)")
        if self.noise_sd <= 0 or self.lesion_contrast <= 0 or self.contrast <= 0:
            raise ValueError("noise_sd, contrast and lesion_contrast must be positive")

    @property
    def cnr(self) -> float:
        """Lesion contrast-to-noise ratio: the image quality the score model depends on."""
        return self.lesion_contrast / self.noise_sd


CATALOGUE: Final[tuple[ScannerProfile, ...]] = (
    ScannerProfile(
        name="siemens-ysio",
        modality="DX",
        manufacturer="Siemens Healthineers",
        model_name="Ysio Max",
        software_version="VF10C",
        kvp=125.0,
        tube_current_ma=320,
        exposure_mas=2,
        pixel_spacing_mm=0.148,
        photometric="MONOCHROME2",
        bits_stored=12,
        noise_sd=0.015,
        contrast=1.0,
        lesion_contrast=0.08,
    ),
    ScannerProfile(
        name="ge-definium",
        modality="DX",
        manufacturer="GE Healthcare",
        model_name="Definium 8000",
        software_version="DM_Platform_Release_Version 11.3",
        kvp=120.0,
        tube_current_ma=250,
        exposure_mas=3,
        pixel_spacing_mm=0.2,
        photometric="MONOCHROME2",
        bits_stored=14,
        noise_sd=0.017,
        contrast=0.95,
        lesion_contrast=0.085,
    ),
    ScannerProfile(
        name="philips-digitaldiagnost",
        modality="DX",
        manufacturer="Philips",
        model_name="DigitalDiagnost C90",
        software_version="1.2.3",
        kvp=125.0,
        tube_current_ma=400,
        exposure_mas=2,
        pixel_spacing_mm=0.148,
        photometric="MONOCHROME2",
        bits_stored=12,
        noise_sd=0.014,
        contrast=1.05,
        lesion_contrast=0.075,
    ),
    ScannerProfile(
        name="carestream-drx",
        modality="DX",
        manufacturer="Carestream Health",
        model_name="DRX-Evolution Plus",
        software_version="5.7.412.7005",
        kvp=120.0,
        tube_current_ma=320,
        exposure_mas=3,
        pixel_spacing_mm=0.139,
        photometric="MONOCHROME2",
        bits_stored=12,
        noise_sd=0.016,
        contrast=0.9,
        lesion_contrast=0.08,
    ),
    ScannerProfile(
        name="agfa-dxd",
        modality="DX",
        manufacturer="Agfa",
        model_name="DX-D 600",
        software_version="NX 23.0.5200",
        kvp=125.0,
        tube_current_ma=250,
        exposure_mas=3,
        pixel_spacing_mm=0.14,
        photometric="MONOCHROME2",
        bits_stored=16,
        noise_sd=0.015,
        contrast=1.1,
        lesion_contrast=0.09,
    ),
    ScannerProfile(
        name="fujifilm-fcr",
        modality="CR",
        manufacturer="FUJIFILM Corporation",
        model_name="FCR PROFECT CS",
        software_version="A08-05",
        kvp=115.0,
        tube_current_ma=200,
        exposure_mas=4,
        pixel_spacing_mm=0.15,
        photometric="MONOCHROME2",
        bits_stored=12,
        noise_sd=0.018,
        contrast=0.95,
        lesion_contrast=0.085,
    ),
)
"""Good rooms; every one has a lesion contrast-to-noise ratio above the score model's reference,
so the score model gives each the same (full) separation."""

DEGRADED: Final = ScannerProfile(
    name="konica-regius-portable",
    modality="CR",
    manufacturer="KONICA MINOLTA",
    model_name="REGIUS MODEL 110",
    software_version="CS-3 1.30",
    kvp=95.0,
    tube_current_ma=100,
    exposure_mas=5,
    pixel_spacing_mm=0.175,
    photometric="MONOCHROME1",
    bits_stored=10,
    noise_sd=0.0275,
    contrast=0.8,
    lesion_contrast=0.045,
    view_position="AP",
)
"""An old portable CR reader, the replacement in a simulated scanner change. It differs from every
catalogue profile in vendor, modality, photometric interpretation, pixel spacing and bit depth,
so the change shows in the metadata, and in noise, contrast and polarity, so it shows in the
pixel statistics; its lower lesion contrast-to-noise ratio makes the model worse there."""

PROFILES: Final[dict[str, ScannerProfile]] = {p.name: p for p in (*CATALOGUE, DEGRADED)}


def site_ids(count: int) -> list[str]:
    """The ids of ``count`` simulated sites: ``site-01`` ... ``site-NN``."""
    if not 1 <= count <= 99:
        raise ValueError("the simulator names between 1 and 99 sites")
    return [f"site-{number:02d}" for number in range(1, count + 1)]


def default_profile(
    site_id: str, catalogue: Sequence[ScannerProfile] = CATALOGUE
) -> ScannerProfile:
    """The profile a site uses before any scanner change: ``site-NN`` gets entry NN-1 (cycling).

    Deterministic in the site id alone, so adding sites never changes the existing ones.
    """
    prefix, _, number = site_id.partition("-")
    if prefix != "site" or not number.isdigit() or int(number) < 1:
        raise ValueError("simulated site ids look like 'site-01'")
    return catalogue[(int(number) - 1) % len(catalogue)]
