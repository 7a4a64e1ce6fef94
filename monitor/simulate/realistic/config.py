"""What determines a realistic stream: the site template, the weekly wander, the changes.

Frozen pydantic models, so a benchmark can print (and fingerprint) exactly what it ran; the
numbers in :class:`Wander`, :class:`ProtocolShift` and :class:`PopulationShift` are the documented
defaults of docs/benchmarks.md ("Drift alarms on realistic metadata streams").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from monitor.events import AGE_BANDS, Identifier
from monitor.simulate.xrv.datasets import XrvDataset
from monitor.simulate.xrv.streams import DEFAULT_START, MODEL_NAME, MODEL_VERSION


class SiteTemplate(StrEnum):
    """Which real table a site's studies come from."""

    OPENI = "openi"
    NIH = "nih"
    RSNA = "rsna"
    CHEXPERT = "chexpert"


class ChangeKind(StrEnum):
    NEW_UNIT = "new_unit"
    """A new detector unit (a room held out of the stable pool) takes a share of the studies."""
    NEW_MODALITY = "new_modality"
    """DX studies (the table's own DX rows, held out) replace a share of the CR studies."""
    PROTOCOL = "protocol"
    """A share of the studies is acquired and processed under a shifted protocol."""
    POPULATION = "population"
    """A new patient population (older AP patients by default) takes a share of the studies."""


Criteria = Mapping[str, str | float]


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """A table, how its rows group into rooms, and which rows play the held-out changes."""

    dataset: XrvDataset
    room_fields: tuple[str, ...]
    new_unit: Criteria | None = None
    new_modality: Criteria | None = None


TEMPLATES: Final[dict[SiteTemplate, TemplateSpec]] = {
    # OpenI's 2,599-row 12-bit 0.143 mm room records tube current; the held-out 12-bit 0.139 mm
    # MONOCHROME2 unit (281 rows) runs at twice its mAs and a longer exposure time.
    SiteTemplate.OPENI: TemplateSpec(
        XrvDataset.OPENI,
        ("Modality", "BitsStored", "ImagerPixelSpacing", "PhotometricInterpretation"),
        new_unit={
            "BitsStored": 12.0,
            "ImagerPixelSpacing": 0.139,
            "PhotometricInterpretation": "MONOCHROME2",
        },
        new_modality={"Modality": "DX"},
    ),
    # NIH's pixel spacing names its units (0.143 PA room, 0.168/0.139 portable CR, ...); the
    # 0.194 mm unit with 2021 x 2021 images (6,324 rows) is held out as the new one.
    SiteTemplate.NIH: TemplateSpec(
        XrvDataset.NIH, ("PixelSpacing",), new_unit={"PixelSpacing": 0.194}
    ),
    SiteTemplate.RSNA: TemplateSpec(
        XrvDataset.RSNA, ("PixelSpacing",), new_unit={"PixelSpacing": 0.194}
    ),
    SiteTemplate.CHEXPERT: TemplateSpec(XrvDataset.CHEXPERT, ()),
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Wander(_Frozen):
    """How a stable site moves from week to week: AR(1) processes, stationary sd as given.

    Plausible magnitudes, not measured ones (no public table carries a site's week-to-week
    history): a room's share moves by about +-30 %, its mean technique by 0.3 sd, the AP
    log-odds by 0.3 plus a winter term. ``scale`` multiplies every wander sd and seasonal term
    at once, for sensitivity runs; 0 leaves the site's own room shares and sampling noise only.
    """

    rho: float = Field(0.8, ge=0.0, lt=1.0)
    """Week-to-week autocorrelation: a busy or quiet spell lasts a few weeks."""
    room_sd: float = Field(0.3, ge=0.0)
    """Log share of each room (maintenance, staffing, which rooms the wards send to)."""
    technique_sd: float = Field(0.3, ge=0.0)
    """Tilt towards higher or lower technique within a room (habitus mix, who is on shift, AEC
    and processing settings): a room's mean technique moves by about this many of its sd. At
    0.3 OpenI's weekly median tube current moves by about 4-8 % (sampling alone: 2-6 %)."""
    view_sd: float = Field(0.3, ge=0.0)
    """Tilt on the log-odds of an AP study (inpatient census)."""
    age_sd: float = Field(0.1, ge=0.0)
    seasonal_view: float = Field(0.3, ge=0.0)
    """Extra AP log-odds at the winter peak (mid-January), minus as much in mid-July."""
    seasonal_age: float = Field(0.1, ge=0.0)
    site_room_sd: float = Field(0.5, ge=0.0)
    """Sites differ: each site's own room shares are the table's times a lognormal factor."""
    scale: float = Field(1.0, ge=0.0)


class ProtocolShift(_Frozen):
    """The protocol change: a dose-reduction update with a new processing preset.

    mA and mAs 25 % lower with 5 kV more keeps the detector dose roughly where it was (about
    the 15 % rule run backwards) while lowering the patient's dose: a change a radiologist and
    a physicist would sign off as a protocol change. Only positive recorded values change;
    integer string (IS) values stay whole numbers.
    """

    kvp_offset: float = 5.0
    tube_current_factor: float = Field(0.75, gt=0.0)
    exposure_factor: float = Field(0.75, gt=0.0)
    exposure_time_factor: float = Field(1.0, gt=0.0)
    window_width_factor: float = Field(0.85, gt=0.0)
    window_center_factor: float = Field(1.0, gt=0.0)


class PopulationShift(_Frozen):
    """The new population: rows of the stable pool from patients this old, in these views."""

    min_age_band: Literal[AGE_BANDS] = "60-69"  # type: ignore[valid-type]
    views: tuple[str, ...] = ("AP",)
    """Empty: any view."""


class Change(_Frozen):
    """One injected change: from study ``onset`` on, ``share`` of the studies are changed.

    With ``ramp`` > 0 the share grows linearly to ``share`` over that many studies (a unit
    brought in gradually); otherwise it is a step.
    """

    kind: ChangeKind
    onset: int = Field(ge=0)
    share: float = Field(0.3, gt=0.0, le=1.0)
    ramp: int = Field(0, ge=0)


class RealisticStreamConfig(_Frozen):
    """Everything that determines a stream besides the table; equal configs, equal events."""

    template: SiteTemplate = SiteTemplate.OPENI
    site_id: Identifier = "site-01"
    seed: int = Field(0, ge=0)
    n_studies: int = Field(20_000, ge=1)
    studies_per_day: float = Field(50.0, gt=0.0, le=5_000.0)
    start: AwareDatetime = DEFAULT_START
    wander: Wander = Wander()
    changes: tuple[Change, ...] = ()
    exchangeable: bool = False
    """The stable stream's rows in a random order: no time structure (without changes, the
    nominal false-alarm check). Changes are injected after the shuffle: a change on a
    background free of wander, which isolates what a detector can see from its alarm state."""
    protocol: ProtocolShift = ProtocolShift()
    population: PopulationShift = PopulationShift()
    pixel_stats: bool = True
    model_name: Identifier = MODEL_NAME
    model_version: Identifier = MODEL_VERSION

    @model_validator(mode="after")
    def _check(self) -> Self:
        late = [c.onset for c in self.changes if c.onset >= self.n_studies]
        if late:
            raise ValueError(f"onsets {late} are not before n_studies ({self.n_studies})")
        spec = TEMPLATES[self.template]
        for change in self.changes:
            if change.kind is ChangeKind.NEW_UNIT and spec.new_unit is None:
                raise ValueError(f"{self.template} has no held-out unit for a new_unit change")
            if change.kind is ChangeKind.NEW_MODALITY and spec.new_modality is None:
                raise ValueError(f"{self.template} has no DX rows for a new_modality change")
        return self

    @property
    def interval(self) -> timedelta:
        return timedelta(days=1) / self.studies_per_day

    @property
    def studies_per_week(self) -> int:
        return max(1, round(7 * self.studies_per_day))

    @property
    def studies_per_month(self) -> float:
        """Studies in an average month (365.25 / 12 days)."""
        return self.studies_per_day * 365.25 / 12
