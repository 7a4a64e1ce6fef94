"""The demo-retraining benchmark's development cohorts: seed 1 stays where it was, other seeds
get folders of their own, the locked test set's seed is refused, and the per-site
specificity it reports counts PE-12's regressions on the locked-sized draws."""

from __future__ import annotations

import json
from pathlib import Path

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


def _outcome(cohort: int, all_pass: float, candidate: float) -> dict[str, object]:
    site = {
        "candidate": candidate,
        "champion": 0.9,
        "negatives": 200,
        "cleared_by_candidate_only": 10,
        "cleared_by_champion_only": 10 + round((0.9 - candidate) * 200),
        "regressed_share_locked_sized": 0.1,
    }
    return {
        "recipe": {"name": "demo_seed0"},
        "cohort": cohort,
        "plan-1.4.0": {
            "threshold": 0.08,
            "all_pass_rate_locked_sized": all_pass,
            "pass_rate_locked_sized": {"PE-12": 0.9},
            "specificity_by_site": {"site-02": site},
        },
    }


def test_summary_rows_per_cohort_and_site_02_pooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "CACHE", tmp_path)
    lines = [{"recipe": {"name": "old"}}, _outcome(2, 0.5, 0.8), _outcome(2, 0.75, 0.85)]
    lines.append(_outcome(3, 0.95, 0.85))
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    bench.summary()

    out = capsys.readouterr().out
    assert "| demo_seed0 | 2 | 0.0800 | 75 % | PE-12 10 % | 0.850 / 0.900 (200) | 10 % |" in out
    assert "| demo_seed0 | 3 |" in out and "| old |" not in out  # the latest, new results
    assert "all pass on 75 to 95 % of the draws (mean 85.0 %) over 2 cohorts" in out
    assert "0.850 against the champion's 0.900 (400 negatives;" in out


def test_gate_slack_takes_the_threshold_with_the_most_room_under_the_plans_criteria() -> None:
    """The benchmark's ``gate-slack`` policy on ten positives and ten negatives at one site
    (too few for the per-site criteria): the champion detects 9 of 10 and clears 7 of 10.
    At the candidate's scores 0.9 / 0.6 / 0.55 / 0.2 / 0.1 the smallest room under PE-2,
    PE-3, PE-9 and PE-10 is 0 / 0.1 / 0.1 / 0.2 / -0.5: it takes 0.2 (all lesions, 9 of 10
    cleared), where plan 1.4.0's rule (the champion's 0.9 sensitivity at the highest
    threshold) takes 0.6."""
    from pccp.catalog import SHIPPED_PLANS, plan_for

    found = plan_for(SHIPPED_PLANS, "cxr-lesion")
    assert found is not None
    positive = np.array([True] * 10 + [False] * 10)
    champion = np.array([0.9] * 9 + [0.1] + [0.9] * 3 + [0.1] * 7)
    candidate = np.array([0.9] * 8 + [0.6, 0.2] + [0.55] + [0.1] * 9)
    sites = np.array(["site-01"] * 20)

    cut, room = bench.gate_slack_threshold(found.plan, positive, candidate, champion, 0.5, sites)

    assert cut == 0.2 and room == pytest.approx(0.2)
    target = bench.threshold_for_sensitivity(positive, candidate, 0.9)
    assert target == 0.6
