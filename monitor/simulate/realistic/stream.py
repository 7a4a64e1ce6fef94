"""The events of a realistic stream: the weekly draws, the changes, and the events themselves.

Every random draw comes from a generator seeded by (seed, site, template, purpose): the stable
draws, each change, the scores and the pixel statistics each have their own, and the weekly state
advances one week at a time, so a stream with a change is the stream without it up to the onset,
and the first weeks do not depend on the stream's length.
"""

from __future__ import annotations

import math
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from monitor.events import DicomMetadata, InferenceEvent, Prediction
from monitor.pixel_names import PIXEL_STAT_NAMES
from monitor.simulate.features import event_identity, pixel_mixing
from monitor.simulate.realistic.config import (
    ChangeKind,
    ProtocolShift,
    RealisticStreamConfig,
    SiteTemplate,
)
from monitor.simulate.realistic.pool import SitePool, load_pool
from monitor.simulate.scores import THRESHOLD
from monitor.simulate.xrv.streams import FINDING, full_quality_scores

_EVENT_NAMESPACE: Final = uuid.UUID("5b0c7f0e-3f7a-4d59-9a53-8b7e3c1d2a64")


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Which real row each study is, and what made it so."""

    rows: NDArray[np.int64]
    source: NDArray[np.int64]
    """0 for a stable draw, k for a row supplied by the stream's k-th change (1-based)."""
    protocol: NDArray[np.bool_]
    """Acquired under the shifted protocol."""
    week: NDArray[np.int64]


class RealisticStream:
    """The events of one config on one pool, built lazily in any index range."""

    def __init__(self, config: RealisticStreamConfig, pool: SitePool) -> None:
        if pool.template is not config.template:
            raise ValueError(f"config is for {config.template}, the pool for {pool.template}")
        if not pool.has_technique and any(c.kind is ChangeKind.PROTOCOL for c in config.changes):
            raise ValueError(f"{config.template} records no technique for a protocol change")
        self.config = config
        self.pool = pool
        self.plan = _plan(config, pool)
        site = zlib.crc32(config.site_id.encode())
        truth = np.array(pool.table.abnormal, dtype=bool)[self.plan.rows]
        self._scores = full_quality_scores(truth, _rng(config, site, 2))
        self._pixels: NDArray[np.float64] | None = None
        if config.pixel_stats:
            pixel_rng = _rng(config, site, 3)
            mixing = pixel_mixing(pixel_rng)
            noise = pixel_rng.standard_normal((config.n_studies, len(PIXEL_STAT_NAMES)))
            self._pixels = noise @ mixing.T
        self._metadata: dict[tuple[int, bool], DicomMetadata] = {}

    def __len__(self) -> int:
        return self.config.n_studies

    def events(self, start: int = 0, stop: int | None = None) -> Iterator[InferenceEvent]:
        """Events ``start`` to ``stop`` (exclusive; default the end), in event-time order."""
        config, plan, table = self.config, self.plan, self.pool.table
        end = len(self) if stop is None else min(stop, len(self))
        for index in range(start, end):
            row, protocol = int(plan.rows[index]), bool(plan.protocol[index])
            pixels = None if self._pixels is None else self._pixels[index]
            yield InferenceEvent(
                **event_identity(_EVENT_NAMESPACE, config, index),
                modality=table.modality[row],
                metadata=self._row_metadata(row, protocol),
                pixel_stats=_pixel_stats(pixels),
                prediction=Prediction(
                    scores={FINDING: float(self._scores[index])}, threshold=THRESHOLD
                ),
            )

    def _row_metadata(self, row: int, protocol: bool) -> DicomMetadata:
        # Rows repeat (draws are with replacement): validate each (row, protocol) once.
        key = (row, protocol)
        if key not in self._metadata:
            values = self.pool.table.row_metadata(row)
            if protocol:
                values = shift_protocol(values, self.config.protocol)
            self._metadata[key] = DicomMetadata.model_validate(values)
        return self._metadata[key]


def realistic_stream(
    config: RealisticStreamConfig, wheel: Path | None = None
) -> list[InferenceEvent]:
    """All events of ``config``, reading its table from the wheel."""
    return list(RealisticStream(config, load_pool(config.template, wheel)).events())


def shift_protocol(metadata: Mapping[str, object], shift: ProtocolShift) -> dict[str, object]:
    """``metadata`` as the shifted protocol records it (positive values only change)."""
    changes = {
        "KVP": (1.0, shift.kvp_offset, False),
        "XRayTubeCurrent": (shift.tube_current_factor, 0.0, True),
        "Exposure": (shift.exposure_factor, 0.0, True),
        "ExposureTime": (shift.exposure_time_factor, 0.0, True),
        "WindowWidth": (shift.window_width_factor, 0.0, False),
        "WindowCenter": (shift.window_center_factor, 0.0, False),
    }
    result = dict(metadata)
    for name, (factor, offset, whole) in changes.items():
        value = result.get(name)
        if isinstance(value, list):
            result[name] = [_shifted(float(v), factor, offset, whole) for v in value]
        elif isinstance(value, int | float):
            result[name] = _shifted(float(value), factor, offset, whole)
    return result


def _plan(config: RealisticStreamConfig, pool: SitePool) -> StreamPlan:
    """The stable draws (shuffled for the exchangeable variant), then each change in turn: from
    its onset, each study is changed with its share's probability (a later change overrides an
    earlier one at the same study). Generators by purpose: 0 stable, 1 changes, 2 scores,
    3 pixel statistics, 4 the shuffle."""
    site = zlib.crc32(config.site_id.encode())
    n = config.n_studies
    rows, week = _stable_rows(config, pool, _rng(config, site, 0))
    if config.exchangeable:
        rows = rows[_rng(config, site, 4).permutation(n)]
    source = np.zeros(n, dtype=np.int64)
    protocol = np.zeros(n, dtype=bool)
    for number, change in enumerate(config.changes, start=1):
        rng = _rng(config, site, 1, number, list(ChangeKind).index(change.kind), change.onset)
        after = np.arange(change.onset, n)
        share = change.share * np.minimum(1.0, (after - change.onset + 1) / max(1, change.ramp))
        hit = after[rng.random(len(after)) < share]
        if change.kind is ChangeKind.PROTOCOL:
            protocol[hit] = True
            continue
        if change.kind is ChangeKind.POPULATION:
            candidates = pool.population_rows(config.population)
        else:
            candidates = pool.held_out[change.kind]
        drawn = candidates[rng.integers(len(candidates), size=len(after))]
        rows[hit] = drawn[hit - change.onset]
        source[hit] = number
    return StreamPlan(rows, source, protocol, week)


def _stable_rows(
    config: RealisticStreamConfig, pool: SitePool, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Week by week: the week's probabilities from the wandering state, then its draws.

    The state advances one week at a time on one generator, so the first k weeks are the same
    whatever ``n_studies`` is.
    """
    wander, per_week, n = config.wander, config.studies_per_week, config.n_studies
    sd = {name: getattr(wander, name) * wander.scale for name in _PROCESSES}
    site_shares = pool.room_shares * rng.lognormal(0.0, wander.site_room_sd, pool.rooms)
    log_shares = np.log(site_shares / site_shares.sum())
    state = {name: rng.normal(0.0, 1.0, _size(name, pool)) * sd[name] for name in _PROCESSES}
    innovation = math.sqrt(1.0 - wander.rho**2)
    ap = (pool.view == "AP").astype(np.float64)
    age = _zscore(pool.age_band)
    rows, weeks = [], []
    for week in range(math.ceil(n / per_week)):
        if week:
            for name in _PROCESSES:
                step = rng.normal(0.0, 1.0, _size(name, pool)) * sd[name] * innovation
                state[name] = wander.rho * state[name] + step
        winter = _winter(config, week)
        tilt = (
            float(state["technique_sd"][0]) * pool.technique
            + (float(state["view_sd"][0]) + wander.seasonal_view * wander.scale * winter) * ap
            + (float(state["age_sd"][0]) + wander.seasonal_age * wander.scale * winter) * age
        )
        probabilities = _week_probabilities(log_shares + state["room_sd"], pool.room, tilt)
        size = min(per_week, n - week * per_week)
        rows.append(pool.stable[rng.choice(len(pool.stable), size=size, p=probabilities)])
        weeks.append(np.full(size, week, dtype=np.int64))
    return np.concatenate(rows), np.concatenate(weeks)


_PROCESSES: Final = ("room_sd", "technique_sd", "view_sd", "age_sd")


def _size(name: str, pool: SitePool) -> int:
    return pool.rooms if name == "room_sd" else 1


def _winter(config: RealisticStreamConfig, week: int) -> float:
    """+1 in mid-January, -1 in mid-July: respiratory season brings older, portable studies."""
    moment = config.start + timedelta(days=7 * week + 3.5)
    day = moment.timetuple().tm_yday
    return math.cos(2 * math.pi * (day - 15) / 365.25)


def _week_probabilities(
    log_shares: NDArray[np.float64], room: NDArray[np.int64], tilt: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Room shares from ``log_shares``; within a room, rows weighted by ``exp(tilt)``."""
    shares = np.exp(log_shares - log_shares.max())
    shares /= shares.sum()
    weights = np.exp(tilt - tilt.max())
    per_room = np.bincount(room, weights=weights, minlength=len(shares))
    probabilities = shares[room] * weights / per_room[room]
    result: NDArray[np.float64] = probabilities / probabilities.sum()
    return result


def _rng(config: RealisticStreamConfig, site: int, *purpose: int) -> np.random.Generator:
    template = list(SiteTemplate).index(config.template)
    return np.random.default_rng([config.seed, site, template, *purpose])


def _zscore(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Standardised ``values``, 0 where missing (no tilt for a row without the value)."""
    if np.isnan(values).all():
        return np.zeros_like(values)
    centred = values - np.nanmean(values)
    spread = float(np.nanstd(values))
    return np.nan_to_num(centred / spread if spread > 0 else centred)


def _pixel_stats(values: NDArray[np.float64] | None) -> dict[str, float] | None:
    return None if values is None else dict(zip(PIXEL_STAT_NAMES, values.tolist(), strict=True))


def _shifted(value: float, factor: float, offset: float, whole: bool) -> float:
    if value <= 0:  # 0 is what some devices write for "not recorded"
        return value
    shifted = value * factor + offset
    return float(max(1, math.floor(shifted + 0.5))) if whole else shifted
