"""Content shifts: a share of a site's studies shows something the model was not validated on.

Modelled on CheXstray's scenarios (docs/simulate.md, "Content shifts"). A :class:`ContentShift`
names a site, the first study index it applies from and the share of studies it takes; each
study of that site from that index is shifted or not by its own seeded draw, so the stream is a
mixture (e.g. 30 % lateral views among the PA/AP studies), deterministic with the seed. The
kinds:

* ``lateral``: a lateral view (one overlapping lung field, heart in front, spine behind),
  ViewPosition ``LL`` or ``LATERAL`` (both spellings occur in public data sets);
* ``paediatric``: a child (chest at 60-80 % of the adult's size in the field, heart radii
  x1.25, PatientAge 1-15 years, so the age band changes);
* ``harder``: the case of :data:`HARDER_CANDIDATES` drawn whose score is closest to the
  model's operating threshold (the model's own difficulty; same truth as the study's);
* ``positioning``: the patient lower and off-centre, rotated, with tighter collimation (blank
  borders);
* ``scanner``: the study acquired on the degraded portable reader (``profiles.DEGRADED``), the
  existing scanner change as a share of studies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom import Dataset

from monitor.events import Identifier
from monitor.simulate.anatomy import LATERAL, Anatomy, Positioning
from monitor.simulate.images import ADULT_AGE_DAYS, CHILD_AGE_DAYS, StudyContent

HARDER_CANDIDATES: Final = 8
"""Candidate studies drawn per harder case; the one with the smallest margin is kept."""
PAEDIATRIC_SCALES: Final = (0.6, 0.7, 0.8)
"""Sizes of a child's chest in the field, relative to the adult template (one drawn per study;
few values, so the templates stay cached)."""
PAEDIATRIC_HEART_SCALE: Final = 1.25
LATERAL_VIEW_SHARE_LL: Final = 0.7
"""Share of lateral studies whose header says ``LL``; the rest say ``LATERAL``."""


class ContentShiftKind(StrEnum):
    """What a content-shifted study shows (module docstring)."""

    LATERAL = "lateral"
    PAEDIATRIC = "paediatric"
    HARDER = "harder"
    POSITIONING = "positioning"
    SCANNER = "scanner"


class ContentShift(BaseModel):
    """``share`` of the studies at ``site_id`` from study ``from_index`` on are ``kind``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ContentShiftKind
    site_id: Identifier
    from_index: int = Field(0, ge=0)
    share: float = Field(0.3, gt=0.0, le=1.0)

    @field_validator("site_id")
    @classmethod
    def _a_simulated_site(cls, value: str) -> str:
        prefix, _, number = value.partition("-")
        if prefix != "site" or not number.isdigit():
            raise ValueError("simulated site ids look like 'site-01'")
        return value


def parse_content_shift(text: str) -> ContentShift:
    """``KIND:SITE[:FROM_INDEX[:SHARE]]`` (``radsentry simulate --content-shift``), e.g.
    ``lateral:site-02:150:0.3``. Raises ValueError (a pydantic ``ValidationError`` for bad
    values) on anything else."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"{text!r}: expected KIND:SITE[:FROM_INDEX[:SHARE]]")
    names = ("kind", "site_id", "from_index", "share")
    return ContentShift.model_validate(dict(zip(names, parts, strict=False)))


def check_shares(shifts: Sequence[ContentShift]) -> None:
    """Raise ValueError when a site's shifts take more than all of its studies."""
    for site_id in {shift.site_id for shift in shifts}:
        total = sum(shift.share for shift in shifts if shift.site_id == site_id)
        if total > 1.0 + 1e-12:
            raise ValueError(f"the content shifts at {site_id} take {total:g} of its studies")


@dataclass(frozen=True, slots=True)
class ShiftDraw:
    """The shift a study is drawn into, and the stream its own draws come from."""

    kind: ContentShiftKind
    seed: np.random.SeedSequence
    rng: np.random.Generator


def draw_shift(
    shifts: Sequence[ContentShift], seed: np.random.SeedSequence, site_id: str, index: int
) -> ShiftDraw | None:
    """Which shift, if any, study ``index`` at ``site_id`` belongs to.

    One uniform draw from the study's shift stream ``seed`` against the cumulative shares of
    the shifts active there; no stream is touched when none is active.
    """
    active = [s for s in shifts if s.site_id == site_id and index >= s.from_index]
    if not active:
        return None
    rng = np.random.default_rng(seed)
    draw = rng.random()
    for shift in active:
        if draw < shift.share:
            return ShiftDraw(shift.kind, seed, rng)
        draw -= shift.share
    return None


def study_content(kind: ContentShiftKind, rng: np.random.Generator) -> StudyContent:
    """What a study of ``kind`` renders (``harder`` and ``scanner`` change no anatomy)."""
    if kind is ContentShiftKind.LATERAL:
        view = "LL" if rng.random() < LATERAL_VIEW_SHARE_LL else "LATERAL"
        return StudyContent(anatomy=LATERAL, view_position=view)
    if kind is ContentShiftKind.PAEDIATRIC:
        scale = float(PAEDIATRIC_SCALES[int(rng.integers(0, len(PAEDIATRIC_SCALES)))])
        return StudyContent(anatomy=Anatomy(scale=scale, heart_scale=PAEDIATRIC_HEART_SCALE))
    if kind is ContentShiftKind.POSITIONING:
        positioning = Positioning(
            shift_u=float(rng.uniform(-0.15, 0.15)),
            shift_v=float(rng.uniform(0.05, 0.2)),
            rotation_deg=float(rng.uniform(-8.0, 8.0)),
            collimation=float(rng.uniform(0.08, 0.16)),
        )
        return StudyContent(positioning=positioning)
    return StudyContent()


def age_days(kind: ContentShiftKind | None) -> tuple[int, int]:
    """The range a study's patient's age is drawn from."""
    return CHILD_AGE_DAYS if kind is ContentShiftKind.PAEDIATRIC else ADULT_AGE_DAYS


Candidate = tuple[Dataset, dict[str, float]]
"""A rendered candidate study and its scores per finding."""


def hardest(
    candidate: Callable[[np.random.Generator], Candidate],
    seed: np.random.SeedSequence,
    finding: str,
    threshold: float,
    candidates: int = HARDER_CANDIDATES,
) -> Candidate:
    """Of ``candidates`` studies drawn by ``candidate`` (each from its own child stream of
    ``seed``), the one whose ``finding`` score is closest to ``threshold`` on the logit scale:
    a low-margin positive or negative, by the scoring model's own judgement."""
    best: Candidate | None = None
    best_margin = math.inf
    for child in seed.spawn(candidates):
        drawn = candidate(np.random.default_rng(child))
        margin = abs(_logit(drawn[1][finding]) - _logit(threshold))
        if margin < best_margin:
            best, best_margin = drawn, margin
    assert best is not None  # candidates >= 1
    return best


def _logit(probability: float) -> float:
    clipped = min(max(probability, 1e-9), 1.0 - 1e-9)
    return math.log(clipped / (1.0 - clipped))
