"""Realistic streams on the real header tables of the torchxrayvision wheel.

The wheel is located (or fetched) as in tests/integration/test_xrv.py. The unit tests check the
mechanics on an in-memory table; these check what the documentation claims of the real rows:
the held-out sets, a year of OpenI weeks whose technique wanders while its shuffled twin does
not, and that the survey of the wheel's tables leaves PadChest alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import kruskal

from monitor.events import parse_event, to_json
from monitor.simulate.realistic import (
    HELD_OUT_TABLE,
    Change,
    ChangeKind,
    RealisticStream,
    RealisticStreamConfig,
    SitePool,
    header_tables,
    load_pool,
)
from monitor.simulate.xrv import locate_wheel

WEEKS, WEEK = 52, 350


@pytest.fixture(scope="module")
def wheel() -> Path:
    return locate_wheel()


@pytest.fixture(scope="module")
def openi(wheel: Path) -> SitePool:
    return load_pool("openi", wheel)


def column(pool: SitePool, name: str) -> NDArray[np.float64]:
    cells = [v[0] if isinstance(v, list) else v for v in pool.table.metadata[name]]
    return np.array([np.nan if v is None else v for v in cells], dtype=float)


def test_the_held_out_rows_are_the_documented_ones(openi: SitePool, wheel: Path) -> None:
    assert len(openi.held_out[ChangeKind.NEW_UNIT]) == 281
    assert len(openi.held_out[ChangeKind.NEW_MODALITY]) == 26
    assert len(openi.stable) == 7_467 - 281 - 26
    nih = load_pool("nih", wheel)
    assert len(nih.held_out[ChangeKind.NEW_UNIT]) == 6_324
    assert ChangeKind.NEW_MODALITY not in nih.held_out and not nih.has_technique


def test_a_year_of_openi_weeks_wanders_and_its_shuffled_twin_does_not(openi: SitePool) -> None:
    config = RealisticStreamConfig(template="openi", n_studies=WEEKS * WEEK, site_id="site-01")
    stable = RealisticStream(config, openi)
    shuffled = RealisticStream(config.model_copy(update={"exchangeable": True}), openi)
    for name in ("XRayTubeCurrent", "Exposure", "WindowWidth"):
        for stream, wanders in ((stable, True), (shuffled, False)):
            weekly = column(openi, name)[stream.plan.rows].reshape(WEEKS, WEEK)
            p_weeks = kruskal(*[week[~np.isnan(week)] for week in weekly]).pvalue
            # Tube current is the field the wander moves least (p about 0.005 here against
            # 1e-12 and below for exposure and window width; the shuffled twin: 0.4-0.8).
            assert (p_weeks < 0.01) if wanders else (p_weeks > 0.01), (name, wanders, p_weeks)


def test_changed_openi_events_satisfy_the_contract(openi: SitePool) -> None:
    changes = tuple(Change(kind=kind, onset=300 * k) for k, kind in enumerate(ChangeKind, 1))
    config = RealisticStreamConfig(template="openi", n_studies=1_500, changes=changes)
    events = list(RealisticStream(config, openi).events())
    assert [parse_event(to_json(event)) for event in events] == events
    assert {e.metadata.Modality for e in events[600:]} == {"CR", "DX"}


def test_the_survey_lists_every_table_but_padchest(wheel: Path) -> None:
    tables = header_tables(wheel)
    assert not [name for name in tables if HELD_OUT_TABLE in name.lower()]
    assert "X-Ray Tube Current" in tables["nlmcxr_dicom_metadata.csv.gz"]
    # VinBigData's table holds labels and boxes only: nothing a drift detector could read.
    assert tables["vinbigdata-train.csv.gz"] == [
        "image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"
    ]  # fmt: skip
