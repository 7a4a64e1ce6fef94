"""Realistic streams (monitor.simulate.realistic) on an in-memory table shaped like OpenI's.

The table has OpenI's fields and the structure the module relies on: two stable rooms (one that
records tube current and exposure, one that writes zeros and no tube current), a held-out 12-bit
0.139 mm unit and DX rows, AP and PA views, ages across the bands. Every draw is seeded, so the
statistical checks (Kruskal-Wallis across weeks, Spearman against time) are deterministic.
tests/integration/test_simulate_realistic.py runs the same builders on the real tables.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError
from scipy.stats import kruskal, spearmanr

from monitor.events import AGE_BANDS, InferenceEvent, parse_event, to_json
from monitor.simulate.realistic import (
    Change,
    ChangeKind,
    HeldOutTableError,
    RealisticStream,
    RealisticStreamConfig,
    SitePool,
    SiteTemplate,
    header_tables,
    read_header,
    shift_protocol,
)
from monitor.simulate.realistic.pool import MAX_TECHNIQUE_SCORE
from monitor.simulate.xrv import source
from monitor.simulate.xrv.datasets import Column, XrvDataset, XrvTable
from monitor.simulate.xrv.source import DATA_DIR

PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
WEEK = 350  # 50 studies a day


def _rows(rng: np.random.Generator, n: int, room: dict[str, object]) -> list[dict[str, object]]:
    """``n`` rows of one room: its fixed signature; technique, window and collimated size
    following each patient's habitus, as automatic exposure control and processing make them."""
    rows = []
    for _ in range(n):
        row: dict[str, object] = {k: v for k, v in room.items() if not k.startswith("_")}
        habitus = float(rng.normal())
        if "_mA" in room:
            scale = float(np.exp(0.2 * habitus + 0.05 * rng.normal()))
            row["XRayTubeCurrent"] = float(round(float(str(room["_mA"])) * scale))
            row["Exposure"] = float(max(1, round(float(str(room["_mAs"])) * scale)))
            row["KVP"] = float(rng.choice([109.0, 117.0, 125.0]))
            row["WindowWidth"] = float(3000 * np.exp(0.1 * habitus + 0.05 * rng.normal()))
            row["WindowCenter"] = float(rng.normal(1800, 150))
        else:
            row.update(KVP=0.0, Exposure=0.0, WindowWidth=16384.0, WindowCenter=16384.0)
        row["Rows"] = float(round(2600 * np.exp(0.05 * habitus)))
        row["Columns"] = float(rng.integers(2300, 3000))
        row["ViewPosition"] = "AP" if rng.random() < 0.25 else "PA"
        row["PatientAgeBand"] = AGE_BANDS[int(rng.integers(1, 10))]
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def table() -> XrvTable:
    rng = np.random.default_rng(20)
    common = {"Modality": "CR", "BodyPartExamined": "CHEST"}
    rooms = [
        (300, {**common, "BitsStored": 12.0, "ImagerPixelSpacing": [0.143, 0.143],
               "PhotometricInterpretation": "MONOCHROME2", "_mA": 320, "_mAs": 4}),
        (200, {**common, "BitsStored": 15.0, "ImagerPixelSpacing": [0.15, 0.15],
               "PhotometricInterpretation": "MONOCHROME1"}),
        (60, {**common, "BitsStored": 12.0, "ImagerPixelSpacing": [0.139, 0.139],
              "PhotometricInterpretation": "MONOCHROME2", "_mA": 320, "_mAs": 8}),
        (40, {"Modality": "DX", "BodyPartExamined": "CHEST", "BitsStored": 14.0,
              "ImagerPixelSpacing": [0.195, 0.195], "PhotometricInterpretation": "MONOCHROME2",
              "_mA": 400, "_mAs": 5}),
    ]  # fmt: skip
    rows = [row for n, room in rooms for row in _rows(rng, n, room)]
    fields = sorted({name for row in rows for name in row})
    metadata: dict[str, Column] = {
        name: [row.get(name) for row in rows]  # type: ignore[misc]
        for name in fields
    }
    modality = [str(row["Modality"]) for row in rows]
    abnormal = (rng.random(len(rows)) < 0.6).tolist()
    return XrvTable(XrvDataset.OPENI, modality, metadata, abnormal)


@pytest.fixture(scope="module")
def pool(table: XrvTable) -> SitePool:
    return SitePool.build(SiteTemplate.OPENI, table)


def config(**update: object) -> RealisticStreamConfig:
    """2,000 studies at 50 a day (weeks of 350) at one site, ``update`` applied."""
    return RealisticStreamConfig.model_validate({"n_studies": 2_000, "site_id": "site-07"} | update)


def values(events: list[InferenceEvent], name: str) -> NDArray[np.float64]:
    """The first value of metadata field ``name`` per event (NaN when absent)."""
    found = []
    for event in events:
        value = getattr(event.metadata, name)
        value = value[0] if isinstance(value, list) else value
        found.append(np.nan if value is None else value)
    return np.array(found, dtype=float)


def test_the_pool_holds_the_changes_rows_out_of_the_stable_rooms(pool: SitePool) -> None:
    assert len(pool.stable) == 500 and pool.rooms == 2
    assert len(pool.held_out[ChangeKind.NEW_UNIT]) == 60
    assert len(pool.held_out[ChangeKind.NEW_MODALITY]) == 40
    assert not set(pool.stable) & {*pool.held_out[ChangeKind.NEW_UNIT]}


def test_the_same_config_gives_the_same_events_and_another_seed_others(pool: SitePool) -> None:
    first = list(RealisticStream(config(), pool).events())
    again = list(RealisticStream(config(), pool).events())
    other = list(RealisticStream(config(seed=1), pool).events())
    assert first == again
    assert [e.metadata for e in first] != [e.metadata for e in other]


def test_every_event_satisfies_the_contract(pool: SitePool) -> None:
    changes = tuple(Change(kind=kind, onset=400 * k) for k, kind in enumerate(ChangeKind, start=1))
    events = list(RealisticStream(config(changes=changes), pool).events())
    assert [parse_event(to_json(event)) for event in events] == events
    assert len({e.event_id for e in events}) == len({e.study_key for e in events}) == 2_000
    times = [e.occurred_at for e in events]
    assert times == sorted(times) and times[350] - times[0] == config().interval * 350
    assert all(e.pixel_stats is not None and len(e.pixel_stats) == 20 for e in events)
    assert all(e.prediction.scores.keys() == {"abnormal"} for e in events)
    assert not any(e.pixel_stats for e in RealisticStream(config(pixel_stats=False), pool).events())
    plan, table = RealisticStream(config(), pool).plan, pool.table
    plain = RealisticStream(config(), pool).events(0, 400)
    assert all(
        e.metadata.model_dump(exclude_none=True) == table.row_metadata(int(plan.rows[i]))
        for i, e in enumerate(plain)
    )


def column(table: XrvTable, name: str) -> NDArray[np.float64]:
    """The first value of field ``name`` per table row (NaN when absent)."""
    cells = [value[0] if isinstance(value, list) else value for value in table.metadata[name]]
    return np.array([np.nan if value is None else value for value in cells], dtype=float)


def test_stable_weeks_wander_and_exchangeable_weeks_do_not(pool: SitePool, table: XrvTable) -> None:
    weeks = 52
    stable = RealisticStream(config(n_studies=weeks * WEEK), pool)
    shuffled = RealisticStream(config(n_studies=weeks * WEEK, exchangeable=True), pool)
    assert sorted(shuffled.plan.rows) == sorted(stable.plan.rows)  # the same rows, reordered
    assert (stable.plan.week == np.repeat(np.arange(weeks), WEEK)).all()
    for name in ("XRayTubeCurrent", "Exposure", "WindowWidth"):
        for stream, wanders in ((stable, True), (shuffled, False)):
            value = column(table, name)[stream.plan.rows]
            by_week = [week[~np.isnan(week)] for week in value.reshape(weeks, WEEK)]
            medians = [float(np.median(week)) for week in by_week]
            p_weeks = kruskal(*by_week).pvalue
            present = ~np.isnan(value)
            p_trend = spearmanr(np.flatnonzero(present), value[present]).pvalue
            if wanders:
                assert np.std(medians) > 0 and p_weeks < 1e-4, (name, p_weeks)
            else:
                assert p_weeks > 0.01 and p_trend > 0.01, (name, p_weeks, p_trend)


def test_room_shares_wander_week_to_week(pool: SitePool, table: XrvTable) -> None:
    weeks = 52
    stream = RealisticStream(config(n_studies=weeks * WEEK), pool)
    zero_room = column(table, "BitsStored")[stream.plan.rows] == 15.0
    weekly = zero_room.reshape(weeks, WEEK).mean(axis=1)
    binomial_sd = np.sqrt(weekly.mean() * (1 - weekly.mean()) / WEEK)
    assert np.std(weekly) > 2 * binomial_sd


def _nearly_constant_room(table: XrvTable) -> XrvTable:
    """``table`` with 1,800 more rows in the zero room (2,000 in all) and that room's image
    size fixed at 2048 x 2048 but for two small (collimated, paediatric) images: a room whose
    only technique value is the image size, as NIH's are, where within-room z-scores of the
    two run to about -30."""
    zero = {
        "Modality": "CR",
        "BodyPartExamined": "CHEST",
        "BitsStored": 15.0,
        "ImagerPixelSpacing": [0.15, 0.15],
        "PhotometricInterpretation": "MONOCHROME1",
    }
    more = _rows(np.random.default_rng(7), 1_800, zero)
    metadata = {
        name: [*cells, *(row.get(name) for row in more)] for name, cells in table.metadata.items()
    }
    zero_room = np.flatnonzero(np.array(metadata["BitsStored"], dtype=float) == 15.0)
    for name in ("Rows", "Columns"):
        for number, row in enumerate(zero_room):
            metadata[name][row] = 512.0 if number < 2 else 2048.0
    return XrvTable(
        table.dataset,
        [*table.modality, *(["CR"] * len(more))],
        metadata,  # type: ignore[arg-type]
        [*table.abnormal, *([False] * len(more))],
    )


def weekly_most_drawn(stream: RealisticStream) -> int:
    """The most times any one table row is drawn in one week of ``stream``."""
    plan = stream.plan
    return max(
        int(np.unique(plan.rows[plan.week == week], return_counts=True)[1].max())
        for week in np.unique(plan.week)
    )


def test_technique_scores_are_bounded_so_no_row_takes_over_a_week(table: XrvTable) -> None:
    varied = _nearly_constant_room(table)
    pool = SitePool.build(SiteTemplate.OPENI, varied)
    assert np.abs(pool.technique).max() <= MAX_TECHNIQUE_SCORE
    small = np.isin(pool.stable, np.flatnonzero(column(varied, "Rows") == 512.0))
    assert small.sum() == 2
    zero_room = pool.room == pool.room[small][0]
    assert pool.technique[small].max() < pool.technique[zero_room & ~small].min()  # still lowest
    # 350 studies a week, about 300 from the zero room's 2,000 rows: a row is drawn 0.15 times
    # a week without a tilt. A row at the bound outweighs its room's typical row by exp(3 |t|),
    # t the week's tilt (sd 0.3): a few draws at most. Within-room z-scores (about -30 here)
    # gave each small image most of some weeks.
    for seed in range(3):
        stream = RealisticStream(config(n_studies=52 * WEEK, seed=seed), pool)
        assert weekly_most_drawn(stream) <= 8, seed


def test_the_technique_tilt_moves_a_rooms_mean_technique_week_to_week(pool: SitePool) -> None:
    weeks = 52
    index = {int(row): number for number, row in enumerate(pool.stable)}
    for exchangeable in (False, True):
        plan = RealisticStream(config(n_studies=weeks * WEEK, exchangeable=exchangeable), pool).plan
        stable = np.array([index[int(row)] for row in plan.rows])
        room = pool.room[stable].reshape(weeks, WEEK)
        score = pool.technique[stable].reshape(weeks, WEEK)
        busiest = int(np.bincount(pool.room[stable]).argmax())
        means = [float(s[r == busiest].mean()) for s, r in zip(score, room, strict=True)]
        sampling_sd = np.sqrt(np.mean([1.0 / (r == busiest).sum() for r in room]))
        ratio = float(np.std(means) / sampling_sd)
        # The default tilt (sd 0.3) moves the room's mean score by about 0.3 sd a week against
        # a sampling sd of about 0.07: about 4 times; without wander, about 1.
        if exchangeable:
            assert ratio < 1.6, ratio
        else:
            assert ratio > 2.5, ratio


def test_stable_draws_do_not_depend_on_the_stream_length(pool: SitePool) -> None:
    short = RealisticStream(config(n_studies=1_000), pool)
    long = RealisticStream(config(n_studies=3_000), pool)
    assert list(short.events()) == list(long.events(0, 1_000))


def test_a_change_leaves_the_stream_before_its_onset_untouched(pool: SitePool) -> None:
    plain = RealisticStream(config(), pool)
    onset = 777
    for kind in ChangeKind:
        changed = RealisticStream(config(changes=(Change(kind=kind, onset=onset),)), pool)
        assert list(changed.events(0, onset)) == list(plain.events(0, onset))
        assert list(changed.events(onset)) != list(plain.events(onset))


def test_a_change_on_the_exchangeable_stream_comes_after_the_shuffle(pool: SitePool) -> None:
    shuffled = RealisticStream(config(exchangeable=True), pool)
    change = Change(kind="new_unit", onset=1_200)
    changed = RealisticStream(config(exchangeable=True, changes=(change,)), pool)
    assert (changed.plan.rows[:1_200] == shuffled.plan.rows[:1_200]).all()
    assert 0.2 < (changed.plan.source[1_200:] == 1).mean() < 0.4


def test_a_new_unit_takes_its_share_from_the_onset(pool: SitePool, table: XrvTable) -> None:
    onset = 1_000
    stream = RealisticStream(config(changes=(Change(kind="new_unit", onset=onset),)), pool)
    spacing = values(list(stream.events()), "ImagerPixelSpacing")
    new = np.isclose(spacing, 0.139)
    assert not new[:onset].any()
    assert 0.25 < new[onset:].mean() < 0.35


def test_a_new_modality_brings_dx_from_the_onset(pool: SitePool) -> None:
    onset = 1_000
    change = Change(kind="new_modality", onset=onset, share=0.5)
    events = list(RealisticStream(config(changes=(change,)), pool).events())
    dx = np.array([e.modality == "DX" and e.metadata.Modality == "DX" for e in events])
    assert not dx[:onset].any() and 0.45 < dx[onset:].mean() < 0.55


def test_a_ramp_grows_the_share_to_its_level(pool: SitePool) -> None:
    change = Change(kind="new_unit", onset=0, share=0.6, ramp=1_000)
    source = RealisticStream(config(changes=(change,)), pool).plan.source
    assert source[:200].mean() < 0.15 < 0.45 < source[800:1_000].mean()
    assert 0.55 < source[1_000:].mean() < 0.65


def test_a_protocol_change_shifts_the_technique_of_every_study(pool: SitePool) -> None:
    onset = 1_000
    plain = list(RealisticStream(config(), pool).events())
    change = Change(kind="protocol", onset=onset, share=1.0)
    changed = list(RealisticStream(config(changes=(change,)), pool).events())
    assert changed[:onset] == plain[:onset]
    for before, after in zip(plain[onset:], changed[onset:], strict=True):
        expected = shift_protocol(before.metadata.model_dump(exclude_none=True), config().protocol)
        assert after.metadata.model_dump(exclude_none=True) == expected
    current = values(plain[onset:], "XRayTubeCurrent"), values(changed[onset:], "XRayTubeCurrent")
    assert np.nanmedian(current[1]) / np.nanmedian(current[0]) == pytest.approx(0.75, abs=0.02)
    kvp = values(plain[onset:], "KVP"), values(changed[onset:], "KVP")
    assert np.array_equal(kvp[1][kvp[0] == 0], kvp[0][kvp[0] == 0])  # "not recorded" stays 0
    assert np.allclose(kvp[1][kvp[0] > 0] - kvp[0][kvp[0] > 0], 5.0)


def test_shift_protocol_keeps_integer_strings_whole() -> None:
    shifted = shift_protocol(
        {"XRayTubeCurrent": 321.0, "Exposure": 1.0, "WindowWidth": [4000.0, 2000.0]},
        config().protocol,
    )
    assert shifted == {"XRayTubeCurrent": 241.0, "Exposure": 1.0, "WindowWidth": [3400.0, 1700.0]}


def test_a_new_population_is_older_and_more_often_ap(pool: SitePool) -> None:
    onset = 1_000
    change = Change(kind="population", onset=onset, share=0.3)
    events = list(RealisticStream(config(changes=(change,)), pool).events())
    ap = np.array([e.metadata.ViewPosition == "AP" for e in events])
    old = np.array([AGE_BANDS.index(e.metadata.PatientAgeBand) >= 6 for e in events])
    assert ap[onset:].mean() > ap[:onset].mean() + 0.15
    assert old[onset:].mean() > old[:onset].mean() + 0.1


def test_configs_that_cannot_be_built_are_refused(pool: SitePool) -> None:
    with pytest.raises(ValidationError, match="not before n_studies"):
        config(changes=(Change(kind="population", onset=2_000),))
    with pytest.raises(ValidationError, match="no DX rows"):
        config(template="nih", changes=(Change(kind="new_modality", onset=5),))
    with pytest.raises(ValueError, match="the pool for openi"):
        RealisticStream(config(template="nih"), pool)


def test_padchest_is_refused_by_name_before_anything_is_opened(tmp_path: Path) -> None:
    with pytest.raises(HeldOutTableError, match="held out"):
        read_header(tmp_path / "no-such.whl", PADCHEST)
    with pytest.raises(HeldOutTableError):
        read_header(tmp_path / "no-such.whl", "padchest/whatever.csv")


def test_the_survey_of_tables_never_opens_padchest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "mini.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(DATA_DIR + "nlmcxr_dicom_metadata.csv", "imageid,KVP,Modality\nx,1,CR\n")
        archive.writestr(DATA_DIR + PADCHEST, b"not even gzip")
        archive.writestr(DATA_DIR + "NLMCXR_reports.tgz", b"")
    opened: list[str] = []
    original = source.open_member

    def spy(path: Path, name: str) -> IO[bytes]:
        opened.append(name)
        return original(path, name)

    monkeypatch.setattr("monitor.simulate.realistic.pool.open_member", spy)
    assert header_tables(wheel) == {"nlmcxr_dicom_metadata.csv": ["imageid", "KVP", "Modality"]}
    assert opened == ["nlmcxr_dicom_metadata.csv"]
