"""The PCCP gate's criteria against independent computations, each kind passing and
failing, the shipped plan on good and degraded candidates, and the scope guard."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs
from numpy.typing import NDArray
from scipy.stats import norm
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from pccp.criteria import non_inferiority
from pccp.gate import (
    REGRESSION_MIN_CASES,
    CriterionResult,
    GateCases,
    GateError,
    GateOutcome,
    ModelScores,
    ThresholdFacts,
    build_report,
    evaluate_criteria,
    scope_violations,
)
from pccp.plan import Plan, load_plan
from retrain.model import ModelSpec, expected_calibration_error
from tests.factories import no_site_content, threshold_provenance

torch.set_num_threads(1)  # retrain.model imports torch; the box has two cores

ROOT = Path(__file__).resolve().parents[2]
PLAN_FILE = ROOT / "pccp" / "plans" / "cxr-lesion.yaml"
NO_SITES = no_site_content(load_plan(PLAN_FILE))
Z_975 = float(norm.ppf(0.975))


@pytest.fixture(scope="module")
def shipped() -> Plan:
    return load_plan(PLAN_FILE)


def plan_with(*criteria: dict[str, Any]) -> Plan:
    """The shipped plan with only ``criteria`` (ids PE-1, PE-2... in order)."""
    document = copy.deepcopy(yaml.safe_load(PLAN_FILE.read_text(encoding="utf-8")))
    document["protocol"]["performance_evaluation"] = [
        {"id": f"PE-{i}", "description": f"criterion {i}", **criterion}
        for i, criterion in enumerate(criteria, start=1)
    ]
    return Plan.model_validate(document)


def one(
    plan: Plan, cases: GateCases, candidate: ModelScores, champion: ModelScores
) -> CriterionResult:
    (result,) = evaluate_criteria(plan, cases, candidate, champion)
    return result


def number(result: CriterionResult, name: str) -> float:
    value = result.numbers[name]
    assert isinstance(value, int | float), f"{name} = {value!r}"
    return float(value)


def sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def make_cases(positive: NDArray[np.bool_], **groups: NDArray[np.str_]) -> GateCases:
    return GateCases(tuple(f"key-{i}" for i in range(positive.size)), positive, groups)


def shifted(
    seed: int, n: int, shift: float, threshold: float = 0.5
) -> tuple[GateCases, ModelScores]:
    """Half positive; score = sigmoid(positive * shift + noise - shift / 2)."""
    rng = np.random.default_rng(seed)
    positive = np.arange(n) % 2 == 0
    scores = sigmoid(positive * shift + rng.standard_normal(n) - shift / 2)
    return make_cases(positive), ModelScores("2", scores, threshold)


def synthetic(
    seed: int, n: int = 600
) -> tuple[GateCases, ModelScores, ModelScores, NDArray[np.float64]]:
    """Three sites, two sexes; truth drawn from the candidate's own (calibrated) probability;
    the champion sees the same logit through extra noise, so it is worse everywhere."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.3, 2.5, n)
    positive = rng.random(n) < sigmoid(logit)
    site = np.array(["site-a", "site-b", "site-c"])[np.arange(n) % 3]
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    cases = make_cases(positive, site=site, PatientSex=sex)
    champion = ModelScores("1", sigmoid(logit + rng.normal(0.0, 1.0, n)), 0.25)
    return cases, ModelScores("2", sigmoid(logit), 0.25), champion, logit


def failed_ids(results: list[CriterionResult]) -> set[str]:
    return {result.id for result in results if not result.passed}


# --- inputs ---------------------------------------------------------------------------------


def test_cases_and_scores_that_cannot_be_evaluated_are_refused() -> None:
    positive = np.array([True, True, False, False])
    with pytest.raises(GateError, match="one per study key"):
        GateCases(("a", "b", "c"), positive, {})
    with pytest.raises(GateError, match="distinct"):
        GateCases(("a", "a", "c", "d"), positive, {})
    with pytest.raises(GateError, match="'site' has 3 values"):
        GateCases(("a", "b", "c", "d"), positive, {"site": np.array(["x", "y", "z"])})
    with pytest.raises(GateError, match="1 positive and 3 negative"):
        GateCases(("a", "b", "c", "d"), np.array([True, False, False, False]), {})
    with pytest.raises(GateError, match="booleans"):
        GateCases(("a", "b", "c", "d"), np.array([1, 1, 0, 0]), {})
    with pytest.raises(GateError, match=r"\[0, 1\]"):
        ModelScores("2", np.array([0.2, 1.3]), 0.5)
    with pytest.raises(GateError, match="finite"):
        ModelScores("2", np.array([0.2, np.nan]), 0.5)
    cases = GateCases(("a", "b", "c", "d"), positive, {})
    short = ModelScores("2", np.array([0.9, 0.1]), 0.5)
    plan = plan_with({"kind": "calibration", "max": 0.1})
    with pytest.raises(GateError, match="2 scores, not one per case"):
        evaluate_criteria(plan, cases, short, short)


# --- lower bounds -----------------------------------------------------------------------------


def test_the_auroc_lower_bound_is_delong_from_every_pair_ties_included() -> None:
    rng = np.random.default_rng(3)
    positive = rng.random(240) < 0.4
    scores = np.round(sigmoid(1.2 * positive + rng.standard_normal(240)), 1)  # many ties
    cases = make_cases(positive)
    plan = plan_with({"kind": "lower_bound", "metric": "auroc", "min": 0.5})
    result = one(plan, cases, ModelScores("2", scores, 0.5), ModelScores("1", scores, 0.5))
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = wins.mean(axis=1), wins.mean(axis=0)
    auroc = wins.mean()
    variance = v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size
    assert result.numbers["estimate"] == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert result.numbers["lower_bound"] == pytest.approx(
        auroc - Z_975 * np.sqrt(variance), abs=1e-12
    )
    assert result.numbers["method"] == "delong"
    assert result.passed


def wilson_lower(successes: int, total: int) -> float:
    """The Wilson score interval's lower end, closed form."""
    p, z = successes / total, Z_975
    centre = (p + z**2 / (2 * total)) / (1 + z**2 / total)
    half = z / (1 + z**2 / total) * np.sqrt(p * (1 - p) / total + z**2 / (4 * total**2))
    return float(centre - half)


def test_sensitivity_and_specificity_bounds_are_wilson_at_the_candidates_threshold() -> None:
    # 50 positives, 43 at or above 0.6; 150 negatives, 120 below it.
    positive = np.r_[np.ones(50, bool), np.zeros(150, bool)]
    scores = np.r_[np.full(43, 0.6), np.full(7, 0.3), np.full(120, 0.59), np.full(30, 0.9)]
    cases = make_cases(positive)
    candidate = ModelScores("2", scores, 0.6)
    champion = ModelScores("1", scores, 0.1)  # its threshold must not matter
    plan = plan_with(
        {"kind": "lower_bound", "metric": "sensitivity", "min": 0.75},
        {"kind": "lower_bound", "metric": "specificity", "min": 0.70},
    )
    sensitivity, specificity = evaluate_criteria(plan, cases, candidate, champion)
    assert sensitivity.numbers["lower_bound"] == pytest.approx(wilson_lower(43, 50), abs=1e-12)
    assert (sensitivity.numbers["successes"], sensitivity.numbers["total"]) == (43, 50)
    assert specificity.numbers["lower_bound"] == pytest.approx(wilson_lower(120, 150), abs=1e-12)
    assert (specificity.numbers["successes"], specificity.numbers["total"]) == (120, 150)
    # Estimate 0.86 but lower bound 0.738: a point estimate above the minimum is not enough.
    assert not sensitivity.passed
    assert specificity.passed  # estimate 0.80, lower bound 0.729 >= 0.70


@pytest.mark.parametrize("metric", ["auroc", "sensitivity", "specificity"])
def test_a_lower_bound_passes_with_separated_classes_and_fails_when_they_overlap(
    metric: str,
) -> None:
    plan = plan_with({"kind": "lower_bound", "metric": metric, "min": 0.8})
    good_cases, good = shifted(0, 400, shift=4.0)
    bad_cases, bad = shifted(0, 400, shift=1.0)
    passed = one(plan, good_cases, good, good)
    failed = one(plan, bad_cases, bad, bad)
    assert passed.passed and number(passed, "lower_bound") >= 0.8
    assert not failed.passed and number(failed, "lower_bound") < 0.8
    assert "lower 95% bound" in failed.detail and "< 0.80" in failed.detail


# --- non-inferiority ----------------------------------------------------------------------------


def test_non_inferiority_passes_for_an_equal_candidate_and_fails_for_a_worse_one() -> None:
    cases, champion, _, logit = synthetic(5)
    rng = np.random.default_rng(5)
    plan = plan_with({"kind": "non_inferiority", "margin": 0.02, "alpha": 0.025})
    close = ModelScores("2", sigmoid(logit + rng.normal(0.0, 0.3, logit.size)), 0.25)
    worse = ModelScores("3", sigmoid(logit + rng.normal(0.0, 3.0, logit.size)), 0.25)
    passed, failed = one(plan, cases, close, champion), one(plan, cases, worse, champion)
    expected = non_inferiority(cases.positive, champion.scores, close.scores, margin=0.02)
    assert passed.passed
    assert passed.numbers["difference"] == expected.difference
    assert passed.numbers["p_value"] == expected.p_value
    assert passed.numbers["lower_bound"] == pytest.approx(
        expected.difference - Z_975 * number(passed, "se")
    )
    assert not failed.passed
    assert number(failed, "difference") < -0.02


# --- group minimum ------------------------------------------------------------------------------


def three_sites() -> tuple[GateCases, ModelScores, ModelScores]:
    """site-a 40 cases ranked perfectly, site-b 40 ranked backwards, site-c 10 backwards (too
    small to count); sexes: F is site-a plus site-b, M is site-c. The champion ranks all right."""
    positive = np.arange(90) % 2 == 0
    site = np.array(["site-a"] * 40 + ["site-b"] * 40 + ["site-c"] * 10)
    sex = np.where(site == "site-c", "M", "F")
    right = np.where(positive, 0.9, 0.1)
    wrong = np.where(positive, 0.2, 0.8)
    candidate = np.where(site == "site-a", right, wrong)
    cases = make_cases(positive, site=site, PatientSex=sex)
    return cases, ModelScores("2", candidate, 0.5), ModelScores("1", right, 0.5)


def test_group_minimum_fails_in_the_bad_site_and_skips_the_small_one() -> None:
    cases, candidate, champion = three_sites()
    plan = plan_with(
        {"kind": "group_minimum", "by": "site", "metric": "auroc", "min": 0.75, "min_cases": 20}
    )
    result = one(plan, cases, candidate, champion)
    rows = {row.value: row for row in result.groups}
    assert not result.passed
    assert (rows["site-a"].candidate, rows["site-a"].passed) == (1.0, True)
    assert (rows["site-b"].candidate, rows["site-b"].passed) == (0.0, False)
    assert rows["site-b"].champion == 1.0
    assert not rows["site-c"].evaluated and rows["site-c"].passed is None
    assert rows["site-c"].note == "10 cases, fewer than 20"
    assert result.numbers["groups_failed"] == 1
    assert result.numbers["groups_not_evaluated"] == 1
    assert "site-b 0.000" in result.detail


def test_group_minimum_passes_when_every_large_group_meets_it() -> None:
    cases, candidate, champion = three_sites()
    plan = plan_with(
        {"kind": "group_minimum", "by": "site", "metric": "auroc", "min": 0.75, "min_cases": 20}
    )
    result = one(plan, cases, champion, candidate)  # the roles swapped: now every site ranks right
    assert result.passed
    assert result.numbers["lowest"] == 1.0
    # Sensitivity at the threshold, per sex: F holds site-a (all found) and site-b (none found).
    by_sex = plan_with(
        {"kind": "group_minimum", "by": "PatientSex", "metric": "sensitivity", "min": 0.6}
    )
    sex = one(by_sex, cases, candidate, champion)
    rows = {row.value: row for row in sex.groups}
    assert rows["F"].candidate == 0.5 and not sex.passed
    assert not rows["M"].evaluated  # 10 cases, under the default 30


def test_group_minimum_with_no_group_large_enough_passes_and_says_so() -> None:
    cases, candidate, champion = three_sites()
    plan = plan_with(
        {"kind": "group_minimum", "by": "site", "metric": "auroc", "min": 0.75, "min_cases": 50}
    )
    result = one(plan, cases, candidate, champion)
    assert result.passed and result.numbers["groups_evaluated"] == 0
    assert "nothing to check" in result.detail


def test_group_minimum_by_a_field_the_cases_lack_is_an_error() -> None:
    cases, candidate, champion = three_sites()
    plan = plan_with({"kind": "group_minimum", "by": "Manufacturer", "metric": "auroc", "min": 0.7})
    with pytest.raises(GateError, match=r"'Manufacturer'.*PatientSex, site"):
        evaluate_criteria(plan, cases, candidate, champion)


# --- calibration --------------------------------------------------------------------------------


def test_ece_matches_a_hand_computation() -> None:
    # Bins 0, 1, 8 and 9 with two cases each: |0.05 - 0|, |0.15 - 0.5|, |0.85 - 1|, |0.95 - 1|.
    scores = np.array([0.05, 0.05, 0.15, 0.15, 0.85, 0.85, 0.95, 0.95])
    positive = np.array([False, False, False, True, True, True, True, True])
    cases = make_cases(positive)
    model = ModelScores("2", scores, 0.5)
    expected = (2 * 0.05 + 2 * 0.35 + 2 * 0.15 + 2 * 0.05) / 8  # 0.15
    loose = one(plan_with({"kind": "calibration", "max": 0.2}), cases, model, model)
    tight = one(plan_with({"kind": "calibration", "max": 0.1}), cases, model, model)
    assert loose.numbers["ece"] == pytest.approx(expected, abs=1e-12)
    assert loose.passed and not tight.passed
    assert tight.detail == "ECE (10 bins) 0.150 > 0.10"


def test_ece_agrees_with_the_training_code_away_from_bin_edges() -> None:
    cases, candidate, _, _ = synthetic(7)
    result = one(plan_with({"kind": "calibration", "max": 0.1}), cases, candidate, candidate)
    training = expected_calibration_error(candidate.scores, cases.positive.astype(np.float64))
    assert result.numbers["ece"] == pytest.approx(training, abs=1e-12)


def test_calibration_fails_for_scores_squeezed_towards_one_half() -> None:
    cases, candidate, _, _ = synthetic(8)
    squeezed = ModelScores("3", 0.5 + (candidate.scores - 0.5) * 0.5, 0.375)
    plan = plan_with({"kind": "calibration", "max": 0.1})
    assert one(plan, cases, candidate, candidate).passed
    assert not one(plan, cases, squeezed, candidate).passed


# --- regressions --------------------------------------------------------------------------------


def test_regressions_count_the_sites_and_subgroups_below_the_champion() -> None:
    cases, candidate, champion = three_sites()
    # AUROC: site-a 1 vs 1, site-b 0 vs 1, F (site-a + site-b) 0.75 vs 1; site-c and M have
    # 10 cases, under the 30 needed.
    assert REGRESSION_MIN_CASES == 30
    strict = plan_with({"kind": "regressions", "tolerance": 0.1, "max_count": 1})
    lenient = plan_with({"kind": "regressions", "tolerance": 0.1, "max_count": 2})
    wide = plan_with({"kind": "regressions", "tolerance": 0.3, "max_count": 1})
    result = one(strict, cases, candidate, champion)
    regressed = {(row.field, row.value) for row in result.groups if row.passed is False}
    assert regressed == {("site", "site-b"), ("PatientSex", "F")}
    assert {row.value for row in result.groups if not row.evaluated} == {"site-c", "M"}
    assert result.numbers["count"] == 2 and result.numbers["groups_compared"] == 3
    assert not result.passed
    assert one(lenient, cases, candidate, champion).passed
    assert one(wide, cases, candidate, champion).numbers["count"] == 1  # F: 0.75 >= 1 - 0.3
    assert one(wide, cases, candidate, champion).passed


def test_regressions_pass_for_a_candidate_better_everywhere() -> None:
    cases, candidate, champion, _ = synthetic(9)
    plan = plan_with({"kind": "regressions", "tolerance": 0.03, "max_count": 0})
    result = one(plan, cases, candidate, champion)
    assert result.passed and result.numbers["count"] == 0
    assert result.numbers["groups_compared"] == 5  # three sites, two sexes


# --- the shipped plan ---------------------------------------------------------------------------


def test_the_shipped_plan_passes_a_good_candidate_on_every_criterion(shipped: Plan) -> None:
    cases, candidate, champion, _ = synthetic(0)
    results = evaluate_criteria(shipped, cases, candidate, champion, NO_SITES)
    assert [result.id for result in results] == [f"PE-{i}" for i in range(1, 17)]
    assert [result.kind for result in results] == [
        "lower_bound",
        "lower_bound",
        "lower_bound",
        "non_inferiority",
        "group_minimum",
        "group_minimum",
        "calibration",
        "regressions",
        "non_inferiority",  # sensitivity, overall, paired
        "non_inferiority",  # specificity, overall, paired
        "regressions",  # sensitivity, every site and subgroup
        "regressions",  # specificity, every site and subgroup
        "lower_bound",  # sensitivity, by site
        "lower_bound",  # specificity, by site
        "predictive_value",
        "content_coverage",  # no site sent studies: nothing to compare
    ]
    assert failed_ids(results) == set()
    assert [row.value for row in results[4].groups] == ["site-a", "site-b", "site-c"]
    assert [row.value for row in results[5].groups] == ["F", "M"]


def test_the_shipped_plan_fails_a_candidate_that_lost_one_site(shipped: Plan) -> None:
    cases, candidate, champion, _ = synthetic(0)
    rng = np.random.default_rng(10)
    site_c = cases.groups["site"] == "site-c"
    scores = candidate.scores.copy()
    scores[site_c] = rng.random(int(site_c.sum()))  # site-c's ranking is lost
    results = evaluate_criteria(shipped, cases, ModelScores("3", scores, 0.25), champion, NO_SITES)
    assert {"PE-1", "PE-4", "PE-5", "PE-8"} <= failed_ids(results)
    site_rows = results[4].groups
    assert [row.value for row in site_rows if row.passed is False] == ["site-c"]
    assert "site=site-c" in results[7].detail


def test_the_shipped_plan_fails_only_sensitivity_at_a_higher_threshold(shipped: Plan) -> None:
    cases, candidate, champion, _ = synthetic(0)
    strict = ModelScores("3", candidate.scores, 0.5)
    # The bound (PE-2), paired non-inferiority (PE-9) and per-group margin (PE-11) on sensitivity.
    assert failed_ids(evaluate_criteria(shipped, cases, strict, champion, NO_SITES)) == {
        "PE-2",
        "PE-9",
        "PE-11",
    }


def test_the_shipped_plan_fails_only_calibration_for_squeezed_scores(shipped: Plan) -> None:
    cases, candidate, champion, _ = synthetic(0)
    # A monotone map, threshold mapped alike: same ranking and decisions, worse calibration.
    squeezed = ModelScores("3", 0.5 + (candidate.scores - 0.5) * 0.5, 0.5 + (0.25 - 0.5) * 0.5)
    assert failed_ids(evaluate_criteria(shipped, cases, squeezed, champion, NO_SITES)) == {"PE-7"}


# --- scope and outcome --------------------------------------------------------------------------


def held(threshold: float = 0.3, champion: float = 0.25) -> ThresholdFacts:
    """A threshold the shipped plan's rule set on the candidate's own tuning split."""
    provenance = threshold_provenance(
        threshold=threshold, champion_threshold=champion, training_manifest_sha256="a" * 64
    )
    return ThresholdFacts(threshold, champion, "1", provenance, "a" * 64)


def test_a_candidate_matching_the_fixed_elements_is_in_scope(shipped: Plan) -> None:
    assert scope_violations(shipped, ModelSpec(), "cxr-lesion-triage-v1", threshold=held()) == []


@pytest.mark.parametrize(
    ("change", "intended_use", "words"),
    [
        ({"architecture": "resnet18"}, "cxr-lesion-triage-v1", "architecture 'resnet18'"),
        ({"input_size": 128}, "cxr-lesion-triage-v1", "input size 128 px"),
        ({"findings": ("lesion", "nodule")}, "cxr-lesion-triage-v1", "findings (lesion, nodule)"),
        ({}, "cxr-nodule-triage-v2", "intended use 'cxr-nodule-triage-v2'"),
        ({}, None, "no intended-use id"),
    ],
)
def test_each_changed_fixed_element_is_one_violation_in_words(
    shipped: Plan, change: dict[str, Any], intended_use: str | None, words: str
) -> None:
    # model_copy skips validation: only small_cnn is registered, and the guard reads fields.
    spec = ModelSpec().model_copy(update=change)
    (violation,) = scope_violations(shipped, spec, intended_use, threshold=held())
    assert words in violation


def test_the_order_of_the_findings_is_fixed_too(shipped: Plan) -> None:
    plan = shipped.model_copy(
        update={
            "description": shipped.description.model_copy(
                update={
                    "fixed": shipped.description.fixed.model_copy(
                        update={"findings": ("lesion", "nodule")}
                    )
                }
            )
        }
    )
    spec = ModelSpec(findings=("nodule", "lesion"))
    assert len(scope_violations(plan, spec, "cxr-lesion-triage-v1", threshold=held())) == 1
    in_order = ModelSpec(findings=("lesion", "nodule"))
    assert scope_violations(plan, in_order, "cxr-lesion-triage-v1", threshold=held()) == []


def test_out_of_scope_wins_even_when_every_criterion_passes(shipped: Plan) -> None:
    cases, candidate, champion, _ = synthetic(0)
    common: dict[str, Any] = {
        "model_name": "cxr-lesion",
        "locked_test_sha256": "0" * 64,
        "content": NO_SITES,
    }
    inside = build_report(shipped, cases, candidate, champion, scope_violations=[], **common)
    outside = build_report(
        shipped, cases, candidate, champion, scope_violations=["input size 128 px"], **common
    )
    strict = ModelScores("3", candidate.scores, 0.5)
    failing = build_report(shipped, cases, strict, champion, scope_violations=[], **common)
    assert inside.outcome is GateOutcome.PASSED
    assert outside.outcome is GateOutcome.OUT_OF_SCOPE
    assert all(criterion.passed for criterion in outside.criteria)
    assert outside.scope_violations == ["input size 128 px"]
    assert failing.outcome is GateOutcome.FAILED


def test_the_report_holds_curves_and_group_tables_for_both_models(shipped: Plan) -> None:
    cases, candidate, champion, _ = synthetic(1, n=1500)
    report = build_report(
        shipped,
        cases,
        candidate,
        champion,
        model_name="cxr-lesion",
        locked_test_sha256="0" * 64,
        scope_violations=[],
        content=NO_SITES,
    )
    assert report.cases == 1500 and report.positives == int(cases.positive.sum())
    assert report.plan_fingerprint == shipped.fingerprint()
    assert report.evaluated_at.tzinfo is not None
    for summary, model in ((report.candidate, candidate), (report.champion, champion)):
        fpr, tpr = summary.roc_false_positive_rate, summary.roc_true_positive_rate
        assert 2 < len(fpr) <= 200 and len(fpr) == len(tpr)
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
        assert summary.auroc == pytest.approx(roc_auc_score(cases.positive, model.scores))
        assert len(summary.reliability) == 10
        assert sum(row.count for row in summary.reliability) == 1500
    site_b = next(g for g in report.groups if (g.field, g.value) == ("site", "site-b"))
    rows = cases.groups["site"] == "site-b"
    assert site_b.cases == int(rows.sum())
    assert site_b.champion.auroc == pytest.approx(
        roc_auc_score(cases.positive[rows], champion.scores[rows])
    )
    predicted = candidate.scores[rows] >= candidate.threshold
    truth = cases.positive[rows]
    assert site_b.candidate.sensitivity == pytest.approx((truth & predicted).sum() / truth.sum())
    assert [(g.field, g.value) for g in report.groups] == [
        ("site", "site-a"),
        ("site", "site-b"),
        ("site", "site-c"),
        ("PatientSex", "F"),
        ("PatientSex", "M"),
    ]
