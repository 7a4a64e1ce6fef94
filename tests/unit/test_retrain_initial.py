"""The initial model's cohort, its tensors and its training (retrain.initial, retrain.data).

A small cohort (2 sites, 64 px renders, a 32 px model, 2 epochs): what is tested is the
plumbing (disjoint keys, order, labels, lineage, determinism), not that v1 learns; that takes
minutes and is measured by ``benchmarks/bench_train.py`` (docs/simulate.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
import torch
from pydantic import ValidationError

from monitor.events import InferenceEvent, LabelSource
from monitor.simulate import DEGRADED, FINDING, SimulationConfig, default_profile, simulate
from retrain.config import TrainConfig
from retrain.data import tensors_for
from retrain.dataset import DatasetError, LabelledCase, LockedTestOverlapError, LockedTestSet, Side
from retrain.images import fetch_image
from retrain.initial import (
    COHORT_SEED_BASE,
    Evaluation,
    InitialConfig,
    cohort_simulation,
    render_cohort,
    train_initial,
)
from retrain.model import ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = InitialConfig(
    seed=3,
    sites=2,
    studies_per_site=30,
    test_studies_per_site=8,
    prevalence=0.4,
    render_size=64,
    spec=ModelSpec(input_size=32, channels=(4, 8)),
    train=TrainConfig(max_epochs=2, patience=2, batch_size=16, device="cpu"),
    image_workers=2,
)
Cohort = dict[str, tuple[LabelledCase, ...]]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cohort")


@pytest.fixture(scope="module")
def cohort(cohort_dir: Path) -> Cohort:
    """Every part of the small cohort, each under its own folder."""
    return {
        part: render_cohort(SMALL, cohort_dir / part, part)
        for part in ("development", "test", "degraded")
    }


# --- the cohort -----------------------------------------------------------------------------


def test_every_study_is_labelled_and_written_under_its_site_and_key(
    cohort: Cohort, cohort_dir: Path
) -> None:
    development = cohort["development"]
    assert len(development) == 2 * 30
    assert [case.site_id for case in development[:4]] == ["site-01", "site-02"] * 2
    for case in development:
        path = cohort_dir / "development" / case.site_id / f"{case.study_key}.dcm"
        assert case.dicom_uri == path.as_uri()
        assert set(case.labels) == {FINDING}
        assert case.label_source is LabelSource.RADIOLOGIST
        assert case.labelled_at >= case.predicted_at >= SMALL.start
        assert case.model_name == SMALL.model_name
    positives = sum(case.labels[FINDING] for case in development)
    assert 0 < positives < len(development)


def test_sites_scan_on_their_catalogue_rooms_and_degraded_on_the_degraded_one(
    cohort: Cohort, cohort_dir: Path
) -> None:
    for case in cohort["development"][:4] + cohort["test"][:4]:
        assert case.dicom_uri is not None
        header = pydicom.dcmread(case.dicom_uri.removeprefix("file://"), stop_before_pixels=True)
        assert header.Manufacturer == default_profile(case.site_id).manufacturer
    assert len(cohort["degraded"]) == 2 * 8
    for case in cohort["degraded"][:3]:
        assert case.dicom_uri is not None
        header = pydicom.dcmread(case.dicom_uri.removeprefix("file://"), stop_before_pixels=True)
        assert header.Manufacturer == DEGRADED.manufacturer


def test_cohort_parts_share_no_study_and_no_image_with_a_simulator_run_of_the_same_seed(
    cohort: Cohort, tmp_path: Path
) -> None:
    simulation = SimulationConfig(
        seed=SMALL.seed, start=SMALL.start, sites=2, studies_per_site=30, image_size=64
    )
    deployed = [e for e in simulate(simulation, tmp_path) if isinstance(e, InferenceEvent)]
    keys = [{case.study_key for case in part} for part in cohort.values()]
    keys.append({event.study_key for event in deployed})
    assert sum(len(part) for part in keys) == len(set().union(*keys))
    first = [cohort["development"][0], cohort["test"][0], cohort["degraded"][0]]
    images = {fetch_image(c.dicom_uri or "", 64).content_sha256 for c in first}
    images.add(fetch_image(deployed[0].dicom_uri or "", 64).content_sha256)
    assert len(images) == 4


def test_cohort_simulations_use_reserved_seeds() -> None:
    seeds = [cohort_simulation(SMALL, part).seed for part in ("development", "test", "degraded")]
    assert seeds == [COHORT_SEED_BASE * k + SMALL.seed for k in (1, 2, 3)]
    assert cohort_simulation(SMALL, "test", studies_per_site=5).studies_per_site == 5
    with pytest.raises(ValidationError):
        InitialConfig(seed=COHORT_SEED_BASE)


def test_the_config_is_labelled_for_the_simulator_finding_alone() -> None:
    with pytest.raises(ValidationError, match="lesion"):
        InitialConfig(spec=ModelSpec(findings=("lesion", "effusion")))
    assert InitialConfig().fingerprint() == InitialConfig().fingerprint()
    assert InitialConfig().fingerprint() != InitialConfig(seed=1).fingerprint()


# --- tensors --------------------------------------------------------------------------------


def test_tensors_follow_the_cases_order_with_their_labels_and_hashes(cohort: Cohort) -> None:
    cases = cohort["test"]
    forward = tensors_for(cases, (FINDING,), 32, workers=3)
    backward = tensors_for(cases[::-1], (FINDING,), 32, workers=1)
    assert forward.images.shape == (len(cases), 1, 32, 32)
    assert forward.images.dtype == torch.float32 and forward.labels.shape == (len(cases), 1)
    assert torch.equal(forward.images, backward.images.flip(0))
    assert forward.labels[:, 0].tolist() == [case.labels[FINDING] for case in cases]
    assert forward.study_keys == tuple(case.study_key for case in cases)
    for index in (0, len(cases) - 1):
        fetched = fetch_image(cases[index].dicom_uri or "", 32)
        assert torch.equal(forward.images[index, 0], torch.from_numpy(fetched.pixels))
        assert forward.content_sha256[cases[index].study_key] == fetched.content_sha256
    images, labels = forward.select([cases[2].study_key, cases[0].study_key])
    assert torch.equal(images, forward.images[[2, 0]])
    assert torch.equal(labels, forward.labels[[2, 0]])


def test_tensors_need_a_uri_a_label_per_finding_and_distinct_studies(cohort: Cohort) -> None:
    case = cohort["test"][0]
    with pytest.raises(DatasetError, match="dicom_uri"):
        tensors_for([replace(case, dicom_uri=None)], (FINDING,), 32)
    with pytest.raises(DatasetError, match="effusion"):
        tensors_for([case], (FINDING, "effusion"), 32)
    with pytest.raises(DatasetError, match="more than once"):
        tensors_for([case, case], (FINDING,), 32)
    with pytest.raises(DatasetError, match="not among"):
        tensors_for([case], (FINDING,), 32).select(["0" * 64])


# --- training -------------------------------------------------------------------------------


def test_train_initial_is_deterministic_and_records_its_data_set(
    cohort: Cohort, tmp_path: Path
) -> None:
    development, test = cohort["development"], cohort["test"]
    first = train_initial(SMALL, development, tmp_path / "first", test_cases=test)
    second = train_initial(SMALL, development[::-1], tmp_path / "second", test_cases=test)
    assert first.manifest.sha256() == second.manifest.sha256()
    manifest = first.manifest
    assert len(manifest.cases) == len(development)
    assert manifest.totals_by_split[Side.VALIDATION] > 0
    assert manifest.locked_test_sha256 == LockedTestSet.from_keys([]).sha256
    assert len(first.result.history) == 2
    assert first.config_fingerprint == SMALL.fingerprint()
    for name, value in first.model.state_dict.items():
        assert torch.equal(value, second.model.state_dict[name]), name
    assert (tmp_path / "first" / "checkpoints" / "checkpoint.pt").exists()
    assert first.test is not None and first.test == second.test
    assert first.test.cases == len(test)
    assert set(first.test.auroc_by_site) == {"site-01", "site-02"}


def test_train_initial_refuses_locked_test_studies(cohort: Cohort, tmp_path: Path) -> None:
    development = cohort["development"]
    locked = LockedTestSet.from_keys([development[0].study_key])
    with pytest.raises(LockedTestOverlapError):
        train_initial(SMALL, development, tmp_path, locked=locked)


def test_evaluation_metrics_are_flat_and_skip_undefined_values() -> None:
    evaluation = Evaluation(
        cases=10,
        positives=0,
        auroc=None,
        sensitivity=None,
        specificity=0.9,
        auroc_by_site={"site-01": None, "site-02": 0.8},
    )
    assert evaluation.metrics("test") == {
        "test_cases": 10.0,
        "test_positives": 0.0,
        "test_specificity": 0.9,
        "test_auroc_site-02": 0.8,
    }
