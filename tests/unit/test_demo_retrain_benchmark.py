"""The demo-retraining benchmark's development cohorts: seed 1 stays where it was, other seeds
get folders of their own, the locked test set's seed is refused, and the per-site
specificity it reports counts PE-12's regressions on the locked-sized draws."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import bench_demo_retrain as bench
from monitor.events import DicomMetadata, LabelSource
from pccp.locked_cases import LockedCase


def test_cohort_seed_one_is_the_development_set_of_before() -> None:
    assert bench.devset_folder() == bench.CACHE / "devset"
    assert bench.devset_folder(1) == bench.CACHE / "devset"
    assert bench.devset_folder(2) == bench.CACHE / "devset-2"


def test_the_locked_sets_cohort_seed_is_refused() -> None:
    assert bench.LOCKED_SEED == 0
    with pytest.raises(ValueError, match="locked test set"):
        bench.devset_folder(bench.LOCKED_SEED)
    with pytest.raises(ValueError, match="locked test set"):
        bench.main(["--cohort", "0", "devset"])


def _cases() -> list[LockedCase]:
    """100 studies of each locked stratum, the first 70 of each negative."""
    cases = []
    for site, view in (("site-01", "PA"), ("site-01", "AP"), ("site-02", "PA"), ("site-03", "PA")):
        for index in range(100):
            cases.append(
                LockedCase(
                    study_key=f"{site}-{view}-{index}",
                    site_id=site,
                    labels={"lesion": int(index >= 70)},
                    label_source=LabelSource.RADIOLOGIST,
                    dicom_uri=f"file:///{site}/{view}/{index}.dcm",
                    metadata=DicomMetadata(ViewPosition=view, PatientSex="F"),
                )
            )
    return cases


def test_site_specificity_counts_the_regressions_of_each_site() -> None:
    cases = _cases()
    champion = np.zeros(len(cases))  # every negative cleared at threshold 0.5
    candidate = np.zeros(len(cases))
    site_02_negatives = [
        i for i, c in enumerate(cases) if c.site_id == "site-02" and c.labels["lesion"] == 0
    ]
    candidate[site_02_negatives[:14]] = 1.0  # 14 of 70 flagged: specificity 0.8, -0.2

    found = bench.site_specificity(cases, (champion, 0.5), (candidate, 0.5), draws=5)

    assert found["site-02"] == {
        "candidate": 0.8,
        "champion": 1.0,
        "negatives": 70,
        "cleared_by_candidate_only": 0,
        "cleared_by_champion_only": 14,
        "regressed_share_locked_sized": 1.0,  # each draw holds the whole 100-study stratum
    }
    assert found["site-01"]["negatives"] == 140
    assert found["site-01"]["regressed_share_locked_sized"] == 0.0
    assert found["site-03"]["candidate"] == found["site-03"]["champion"] == 1.0
