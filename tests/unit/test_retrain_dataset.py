"""Dataset assembly and lineage (retrain/dataset.py) and training images (retrain/images.py).

Cases come from a small simulated stream written to a temporary directory (file:// URIs):
inference and label events joined by study key, as the runtime joins them in the database.
"""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest

from monitor.dicom.pixels import decode_frames, pixel_statistics, value_histogram
from monitor.events import InferenceEvent, LabelEvent
from monitor.simulate import SimulationConfig, simulate
from retrain.dataset import (
    DatasetError,
    DatasetManifest,
    LabelledCase,
    LockedTestOverlapError,
    LockedTestSet,
    LockedTestSetError,
    Side,
    assemble,
    read_cases,
    split_cases,
    write_cases,
)
from retrain.images import ImageError, load_image, modality_values, uri_content_sha256
from tests.factories import fake_content_hash, labelled_cases

SEED = 7


def _config() -> SimulationConfig:
    # site-02 switches to the degraded (MONOCHROME1) scanner half-way, so both
    # photometric interpretations reach the image tests.
    return SimulationConfig(
        seed=11,
        start=datetime(2026, 11, 1, tzinfo=UTC),
        sites=2,
        studies_per_site=8,
        image_size=64,
        label_rate=0.8,
        change_site="site-02",
        change_at_index=4,
    )


def join_cases(events: list[InferenceEvent | LabelEvent]) -> list[LabelledCase]:
    """Labelled cases: each label event joined to its inference event by study key."""
    inferences = {e.study_key: e for e in events if isinstance(e, InferenceEvent)}
    cases = []
    for label in (e for e in events if isinstance(e, LabelEvent)):
        inference = inferences[label.study_key]
        cases.append(
            LabelledCase(
                study_key=label.study_key,
                site_id=label.site_id,
                model_name=label.model_name,
                labels=dict(label.labels),
                label_source=label.source,
                predicted_at=inference.occurred_at,
                labelled_at=label.occurred_at,
                dicom_uri=inference.dicom_uri,
            )
        )
    return cases


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[InferenceEvent | LabelEvent]:
    return list(simulate(_config(), tmp_path_factory.mktemp("studies")))


@pytest.fixture(scope="module")
def cases(events: list[InferenceEvent | LabelEvent]) -> list[LabelledCase]:
    return join_cases(events)


def test_split_is_deterministic_and_stable_when_cases_are_added() -> None:
    first = split_cases(labelled_cases(200), seed=SEED)
    grown = split_cases(labelled_cases(400), seed=SEED)
    side_before = {c.study_key: Side.TRAIN for c in first.train}
    side_before |= {c.study_key: Side.VALIDATION for c in first.validation}
    side_after = {c.study_key: Side.TRAIN for c in grown.train}
    side_after |= {c.study_key: Side.VALIDATION for c in grown.validation}
    assert all(side_after[key] == side for key, side in side_before.items())
    assert 0.12 < len(grown.validation) / 400 < 0.28
    assert split_cases(reversed(labelled_cases(200)), seed=SEED) == first
    assert split_cases(labelled_cases(200), seed=SEED + 1) != first


def test_overlap_with_the_locked_test_set_fails_the_job_and_says_how_many() -> None:
    cases = labelled_cases(20)
    locked = LockedTestSet.from_keys(c.study_key for c in cases[:4])
    with pytest.raises(LockedTestOverlapError, match=r"^4 studies are in the locked test set"):
        assemble(cases, locked, seed=SEED, content_sha256=fake_content_hash)
    clean = assemble(cases[4:], locked, seed=SEED, content_sha256=fake_content_hash)
    assert clean.manifest.locked_test_sha256 == locked.sha256


def test_tampered_locked_test_manifest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "locked.json"
    locked = LockedTestSet.from_keys(c.study_key for c in labelled_cases(5))
    locked.write(path)
    assert LockedTestSet.load(path) == locked
    document = json.loads(path.read_text())
    document["study_keys"] = document["study_keys"][1:]  # a study quietly taken out
    path.write_text(json.dumps(document))
    with pytest.raises(LockedTestSetError, match="altered"):
        LockedTestSet.load(path)
    path.write_text("{not json")
    with pytest.raises(LockedTestSetError, match="unreadable"):
        LockedTestSet.load(path)


def test_manifest_hash_ignores_input_order_and_follows_a_label_change() -> None:
    cases = labelled_cases(30)
    locked = LockedTestSet.from_keys([])
    reference = assemble(cases, locked, seed=SEED, content_sha256=fake_content_hash).manifest
    shuffled = cases[:]
    random.Random(3).shuffle(shuffled)
    again = assemble(shuffled, locked, seed=SEED, content_sha256=fake_content_hash).manifest
    assert again.sha256() == reference.sha256()
    relabelled = [dataclasses.replace(cases[0], labels={"lesion": 1 - cases[0].labels["lesion"]})]
    changed = assemble(
        relabelled + cases[1:], locked, seed=SEED, content_sha256=fake_content_hash
    ).manifest
    assert changed.sha256() != reference.sha256()
    totals = reference.totals_by_split
    assert totals[Side.TRAIN] + totals[Side.VALIDATION] == 30
    assert sum(sum(t.values()) for t in reference.totals_by_site.values()) == 30


def test_cases_without_a_dicom_uri_are_dropped_and_counted() -> None:
    cases = labelled_cases(10)
    cases[2:5] = [dataclasses.replace(c, dicom_uri=None) for c in cases[2:5]]
    dataset = assemble(
        cases, LockedTestSet.from_keys([]), seed=SEED, content_sha256=fake_content_hash
    )
    assert dataset.dropped_without_uri == 3
    assert len(dataset.manifest.cases) == 7


def test_stored_manifest_reads_back_with_the_same_hash(
    tmp_path: Path, cases: list[LabelledCase]
) -> None:
    dataset = assemble(
        cases, LockedTestSet.from_keys([]), seed=SEED, content_sha256=uri_content_sha256
    )
    path = tmp_path / "manifest.json"
    digest = dataset.manifest.write(path)
    assert DatasetManifest.read(path, expected_sha256=digest) == dataset.manifest
    assert {c.site_id for c in dataset.manifest.cases} == {"site-01", "site-02"}
    assert all(len(c.content_sha256) == 64 for c in dataset.manifest.cases)


def test_a_case_file_reads_back_the_cases_it_was_written_with(tmp_path: Path) -> None:
    cases = labelled_cases(5)
    path = tmp_path / "cases" / "development-cases.jsonl"
    write_cases(path, reversed(cases))
    assert read_cases(path) == tuple(cases)  # sorted by study key, every field kept


def test_a_missing_or_damaged_case_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unreadable case file"):
        read_cases(tmp_path / "absent.jsonl")
    path = tmp_path / "cases.jsonl"
    write_cases(path, labelled_cases(2))
    path.write_text(path.read_text() + '{"study_key": "not a key"}\n')
    with pytest.raises(DatasetError, match=r"cases.jsonl:3: not a labelled case"):
        read_cases(path)


def test_simulated_studies_decode_to_unit_range_images(cases: list[LabelledCase]) -> None:
    for case in cases:
        assert case.dicom_uri is not None
        image = load_image(case.dicom_uri, 32)
        assert image.shape == (32, 32) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > image.min()
    enlarged = load_image(cases[0].dicom_uri or "", 96)
    assert enlarged.shape == (96, 96)


def test_values_before_resizing_are_those_the_edge_statistics_use(
    events: list[InferenceEvent | LabelEvent],
) -> None:
    photometrics = set()
    for event in (e for e in events if isinstance(e, InferenceEvent)):
        assert event.dicom_uri is not None and event.pixel_stats is not None
        ds = pydicom.dcmread(urlsplit(event.dicom_uri).path)
        photometrics.add(ds.PhotometricInterpretation)
        values = modality_values(ds)
        histogram = value_histogram(ds, decode_frames(ds))
        distinct, counts = np.unique(values, return_counts=True)
        np.testing.assert_array_equal(distinct, histogram.values)
        np.testing.assert_array_equal(counts, histogram.counts)
        assert pixel_statistics(ds)["mean"] == pytest.approx(event.pixel_stats["mean"])
        assert float(values.mean()) == pytest.approx(event.pixel_stats["mean"])
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_unreadable_and_unsupported_uris_raise_image_errors(tmp_path: Path) -> None:
    missing = (tmp_path / "absent.dcm").as_uri()
    with pytest.raises(ImageError, match="cannot read"):
        load_image(missing, 32)
    with pytest.raises(ImageError, match="scheme"):
        load_image("s3://bucket/x.dcm", 32)
