"""Streams built from the real header tables in the torchxrayvision wheel.

The wheel is fetched once per session (``pip download``, ~29 MB) into ``.radsentry-cache/``;
when that fails the tests fail with pip's reason, they are not skipped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
from scipy.stats import ks_2samp

from monitor.events import InferenceEvent, parse_event, to_json
from monitor.simulate.xrv import (
    ALL_FIELDS,
    XrvDataset,
    load_table,
    locate_wheel,
    read_columns,
    shared_fields,
    stable_stream,
    switching_stream,
)

ROWS = {
    XrvDataset.NIH: 112_120,
    XrvDataset.RSNA: 26_684,
    XrvDataset.OPENI: 7_467,
    XrvDataset.CHEXPERT: 223_414,
}
IDENTIFIER_COLUMNS = {
    "Data_Entry_2017_v2020.csv.gz": ("Image Index",),
    "kaggle_stage_2_train_images_dicom_headers.csv.gz": ("PatientID", "Filename"),
    "nlmcxr_dicom_metadata.csv.gz": (
        "imageid",
        "Accession Number",
        "Patient's Birth Date",
        "Study Date",
        "Study Instance UID",
        "Series Instance UID",
        "SOP Instance UID",
        "filename",
    ),
    "chexpert_train.csv.gz": ("Path",),
}
"""Identifying columns long enough that meeting one of their values by chance is impossible
(NIH's and OpenI's numeric patient ids, "1", "1000", could equal a Rows value)."""


@pytest.fixture(scope="session")
def xrv_wheel() -> Path:
    return locate_wheel()


def test_tables_have_the_published_sizes(xrv_wheel: Path) -> None:
    for dataset, rows in ROWS.items():
        assert len(load_table(dataset, xrv_wheel)) == rows


@pytest.mark.parametrize("dataset", list(XrvDataset))
def test_events_satisfy_the_contract(xrv_wheel: Path, dataset: XrvDataset) -> None:
    events = stable_stream(dataset, 2000, "site-01", 3, fields=ALL_FIELDS, wheel=xrv_wheel)
    assert [parse_event(to_json(event)) for event in events] == events
    assert len({event.study_key for event in events}) == len(events)
    times = [event.occurred_at for event in events]
    assert times == sorted(times)
    filled = Counter(k for e in events for k in e.metadata.model_dump(exclude_none=True))
    assert set(filled) == set(load_table(dataset, xrv_wheel).fields)


def test_no_identifier_value_appears_in_any_event(xrv_wheel: Path) -> None:
    identifiers: set[str] = set()
    for member, columns in IDENTIFIER_COLUMNS.items():
        for values in read_columns(xrv_wheel, member, columns).values():
            identifiers.update(value for value in values if len(value) >= 6)
    events = [
        event
        for index, dataset in enumerate(XrvDataset)
        for event in stable_stream(
            dataset, 3000, "site-01", index, fields=ALL_FIELDS, wheel=xrv_wheel
        )
    ]
    leaves = {leaf for event in events for leaf in _leaves(orjson.loads(to_json(event)))}
    assert leaves.isdisjoint(identifiers)
    wire = b"".join(to_json(event) for event in events).decode()
    assert not re.search(r"\d+(?:\.\d+){4,}|patient\d|\.png|\.dcm", wire)  # UIDs, paths, files


def test_switching_datasets_changes_the_shared_fields(xrv_wheel: Path) -> None:
    events = switching_stream("nih", "openi", 2000, 2000, "site-01", 0, wheel=xrv_wheel)
    before, after = events[:2000], events[2000:]
    assert shared_fields("nih", "openi", xrv_wheel) == {
        "ViewPosition",
        "PatientAgeBand",
        "PixelSpacing",
        "Rows",
        "Columns",
    }
    # Seeded samples of 2,000; the margins are several times the sampling noise (TV ~0.02).
    assert _total_variation(before, after, "ViewPosition") > 0.3  # laterals and missing views
    assert (
        ks_2samp(_numbers(before, "PixelSpacing"), _numbers(after, "PixelSpacing")).statistic > 0.3
    )
    assert ks_2samp(_numbers(before, "Rows"), _numbers(after, "Rows")).statistic > 0.2


def test_chexpert_differs_from_nih_in_views_and_ages(xrv_wheel: Path) -> None:
    nih = stable_stream("nih", 2000, "site-01", 0, wheel=xrv_wheel)
    chexpert = stable_stream("chexpert", 2000, "site-01", 0, wheel=xrv_wheel)
    assert _total_variation(nih, chexpert, "ViewPosition") > 0.3
    assert _total_variation(nih, chexpert, "PatientAgeBand") > 0.2


def test_two_sites_on_one_dataset_look_alike(xrv_wheel: Path) -> None:
    first = stable_stream("nih", 2000, "site-01", 0, wheel=xrv_wheel)
    second = stable_stream("nih", 2000, "site-02", 0, wheel=xrv_wheel)
    for field in ("ViewPosition", "PatientAgeBand", "PatientSex"):
        assert _total_variation(first, second, field) < 0.06


def test_rsna_is_a_subset_of_nih_and_barely_differs(xrv_wheel: Path) -> None:
    # RSNA's images were drawn from ChestX-ray14, so a switch between the two is no change in
    # acquisition; the evaluation does not count it as one.
    nih = stable_stream("nih", 2000, "site-01", 0, wheel=xrv_wheel)
    rsna = stable_stream("rsna", 2000, "site-01", 0, wheel=xrv_wheel)
    assert _total_variation(nih, rsna, "ViewPosition") < 0.1
    assert _total_variation(nih, rsna, "PatientAgeBand") < 0.1


def _values(events: Sequence[InferenceEvent], field: str) -> list[object]:
    values = [getattr(event.metadata, field) for event in events]
    return [value[0] if isinstance(value, list) else value for value in values]


def _numbers(events: Sequence[InferenceEvent], field: str) -> list[float]:
    return [float(v) for v in _values(events, field) if isinstance(v, int | float)]


def _total_variation(
    first: Sequence[InferenceEvent], second: Sequence[InferenceEvent], field: str
) -> float:
    a, b = Counter(_values(first, field)), Counter(_values(second, field))
    return 0.5 * sum(abs(a[k] / len(first) - b[k] / len(second)) for k in a.keys() | b.keys())


def _leaves(node: object) -> Iterator[str]:
    """Every scalar of a decoded JSON document as text, integral numbers without ".0"."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item)
    elif isinstance(node, float) and node.is_integer():
        yield str(int(node))
    elif node is not None:
        yield str(node)
