"""The PCCP gate at the operating point: paired non-inferiority of sensitivity and specificity
(Newcombe), Wilson bounds per site and subgroup, PPV and NPV at a stated prevalence, the
threshold policy and its provenance, and the regressions the evidence flags. Each statistic is
checked against an independent implementation (statsmodels, scikit-learn) and, where it makes
a decision, at its nominal error rate under the null."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs
from numpy.typing import NDArray
from sklearn.metrics import roc_curve  # type: ignore[import-untyped]
from statsmodels.stats.proportion import (  # type: ignore[import-untyped]
    confint_proportions_2indep,
    proportion_confint,
)

from monitor.performance.metrics import PerformanceConfig, binary_metrics
from pccp.criteria import (
    paired_difference,
    paired_non_inferiority,
    predictive_value,
    predictive_value_bound,
)
from pccp.gate import (
    CriterionResult,
    GateCases,
    GateOutcome,
    ModelScores,
    ThresholdFacts,
    build_report,
    evaluate_criteria,
    scope_violations,
)
from pccp.plan import Plan, ThresholdPolicy, ThresholdRule, load_plan
from pccp.regressions import ece_many, flag_regressions
from pccp.threshold import (
    ThresholdError,
    ThresholdProvenance,
    TuningSplit,
    select_threshold,
    threshold_for_sensitivity,
    threshold_violations,
)
from retrain.model import ModelSpec
from tests.factories import no_site_content

ROOT = Path(__file__).resolve().parents[2]
PLAN_FILE = ROOT / "pccp" / "plans" / "cxr-lesion.yaml"


@pytest.fixture(scope="module")
def shipped() -> Plan:
    return load_plan(PLAN_FILE)


def plan_with(*criteria: dict[str, Any], policy: dict[str, Any] | None = None) -> Plan:
    document = copy.deepcopy(yaml.safe_load(PLAN_FILE.read_text(encoding="utf-8")))
    document["protocol"]["performance_evaluation"] = [
        {"id": f"PE-{i}", "description": f"criterion {i}", **criterion}
        for i, criterion in enumerate(criteria, start=1)
    ]
    if policy is not None:
        document["protocol"]["threshold_policy"] = policy
    return Plan.model_validate(document)


def table(a: int, b: int, c: int, d: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Paired outcomes: ``a`` both right, ``b`` candidate only, ``c`` champion only, ``d``
    neither."""
    candidate = np.array([True] * a + [True] * b + [False] * c + [False] * d)
    champion = np.array([True] * a + [False] * b + [True] * c + [False] * d)
    return candidate, champion


# --- Newcombe's paired interval -------------------------------------------------------------


@pytest.mark.parametrize(
    "cells", [(10, 5, 5, 10), (30, 4, 4, 2), (12, 3, 7, 8), (0, 5, 5, 0), (40, 0, 0, 10)]
)
def test_without_correlation_newcombes_paired_interval_is_the_independent_one(
    cells: tuple[int, int, int, int],
) -> None:
    """With Newcombe's corrected phi at 0 (``0 <= ad - bc <= n/2``) the paired interval is the
    independent-samples hybrid score interval, which statsmodels implements."""
    a, b, c, d = cells
    n = a + b + c + d
    ours = paired_difference(*table(a, b, c, d))
    if 0 <= a * d - b * c <= n / 2:
        low, high = confint_proportions_2indep(
            a + b, n, a + c, n, method="newcomb", compare="diff", alpha=0.05
        )
        assert (ours.lower, ours.upper) == pytest.approx((low, high), abs=1e-12)
    else:  # correlation narrows (positive) or widens (negative) the interval
        low, high = confint_proportions_2indep(
            a + b, n, a + c, n, method="newcomb", compare="diff", alpha=0.05
        )
        narrower = ours.upper - ours.lower < high - low
        assert narrower == (a * d - b * c > 0)
    assert ours.difference == pytest.approx((b - c) / n)
    assert ours.lower <= ours.difference <= ours.upper


def test_zero_ad_minus_bc_tables_match_statsmodels_on_a_grid() -> None:
    checked = 0
    for a in range(0, 12, 3):
        for b in range(0, 8, 2):
            for c in range(0, 8, 2):
                for d in range(0, 12, 3):
                    n = a + b + c + d
                    if n == 0 or not 0 <= a * d - b * c <= n / 2:
                        continue
                    ours = paired_difference(*table(a, b, c, d))
                    low, high = confint_proportions_2indep(
                        a + b, n, a + c, n, method="newcomb", compare="diff"
                    )
                    assert (ours.lower, ours.upper) == pytest.approx((low, high), abs=1e-12)
                    checked += 1
    assert checked > 20


def paired_sample(
    rng: np.random.Generator, n: int, p_champion: float, p_candidate: float, rho: float
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Correlated Bernoulli pairs (a latent bivariate normal) with the given marginals."""
    from scipy.stats import norm

    z = rng.standard_normal((n, 2))
    z[:, 1] = rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1]
    return z[:, 1] < norm.ppf(p_candidate), z[:, 0] < norm.ppf(p_champion)


@pytest.mark.parametrize(("n", "p_champion"), [(90, 0.88), (200, 0.75)])
def test_non_inferiority_passes_at_most_at_its_nominal_rate_at_the_margin(
    n: int, p_champion: float
) -> None:
    """Under the null at its boundary (the candidate exactly ``margin`` worse) a one-sided 2.5%
    test may pass at most 2.5% of the time; Newcombe's interval is slightly conservative."""
    rng = np.random.default_rng(7)
    margin, runs = 0.10, 4000
    passed = sum(
        paired_non_inferiority(
            *paired_sample(rng, n, p_champion, p_champion - margin, 0.6), margin=margin
        ).passed
        for _ in range(runs)
    )
    rate = passed / runs
    # 2.5% plus three Monte Carlo standard errors (0.25% each at 4,000 runs).
    assert rate <= 0.025 + 3 * np.sqrt(0.025 * 0.975 / runs), rate


def test_non_inferiority_has_power_for_an_equal_candidate() -> None:
    rng = np.random.default_rng(8)
    runs = 500
    passed = sum(
        paired_non_inferiority(*paired_sample(rng, 200, 0.75, 0.75, 0.8), margin=0.10).passed
        for _ in range(runs)
    )
    assert passed / runs > 0.9


def test_non_inferiority_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(ValueError, match="paired"):
        paired_difference(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="no cases"):
        paired_difference(np.ones(0, bool), np.ones(0, bool))
    with pytest.raises(ValueError, match="margin"):
        paired_non_inferiority(*table(3, 1, 1, 3), margin=-0.1)


# --- PPV and NPV at a stated prevalence ------------------------------------------------------


def test_predictive_values_are_bayes_rule() -> None:
    # 1,000,000 people at 5%: 50,000 with a lesion; sensitivity 0.9, specificity 0.8.
    tp, fn, tn, fp = 45_000, 5_000, 760_000, 190_000
    assert predictive_value("ppv", 0.9, 0.8, 0.05) == pytest.approx(tp / (tp + fp))
    assert predictive_value("npv", 0.9, 0.8, 0.05) == pytest.approx(tn / (tn + fn))


def test_the_predictive_value_bound_covers_the_truth_at_least_at_its_level() -> None:
    rng = np.random.default_rng(3)
    sensitivity, specificity, prevalence, runs = 0.85, 0.75, 0.05, 3000
    truth = {k: predictive_value(k, sensitivity, specificity, prevalence) for k in ("ppv", "npv")}
    covered = dict.fromkeys(truth, 0)
    for _ in range(runs):
        tp, tn = rng.binomial(60, sensitivity), rng.binomial(140, specificity)
        for kind in truth:
            bound = predictive_value_bound(
                kind,  # type: ignore[arg-type]
                true_positives=tp,
                positives=60,
                true_negatives=tn,
                negatives=140,
                prevalence=prevalence,
            )
            covered[kind] += bound.lower_bound <= truth[kind]
    for kind, count in covered.items():
        assert count / runs >= 0.95 - 3 * np.sqrt(0.05 * 0.95 / runs), (kind, count / runs)


def test_the_predictive_value_bound_is_bayes_rule_at_the_wilson_bounds() -> None:
    bound = predictive_value_bound(
        "npv", true_positives=50, positives=60, true_negatives=100, negatives=140, prevalence=0.1
    )
    (sens_low, spec_low), _ = proportion_confint([50, 100], [60, 140], alpha=0.05, method="wilson")
    assert bound.lower_bound == pytest.approx(predictive_value("npv", sens_low, spec_low, 0.1))
    assert bound.estimate == pytest.approx(predictive_value("npv", 50 / 60, 100 / 140, 0.1))


# --- criteria in the gate --------------------------------------------------------------------


def sites_cases(seed: int = 0, n: int = 900) -> tuple[GateCases, ModelScores]:
    """Three sites; scores from a well-separated model at threshold 0.5."""
    rng = np.random.default_rng(seed)
    positive = rng.random(n) < 0.35
    site = np.array(["site-01", "site-02", "site-03"])[np.arange(n) % 3]
    scores = 1 / (1 + np.exp(-(np.where(positive, 1.6, -1.6) + rng.standard_normal(n))))
    return GateCases(tuple(f"k{i}" for i in range(n)), positive, {"site": site}), ModelScores(
        "1", scores, 0.5
    )


def halve_specificity_at(
    cases: GateCases, champion: ModelScores, site: str, version: str = "2"
) -> ModelScores:
    """The champion's scores, except that at ``site`` half of the negatives the champion
    cleared are now flagged: the site's specificity halves, nothing else moves."""
    scores = champion.scores.copy()
    cleared = np.flatnonzero(
        (cases.groups["site"] == site) & ~cases.positive & (scores < champion.threshold)
    )
    scores[cleared[::2]] = 0.9
    return ModelScores(version, scores, champion.threshold)


def single(plan: Plan, cases: GateCases, candidate: ModelScores, champion: ModelScores) -> Any:
    (result,) = evaluate_criteria(plan, cases, candidate, champion)
    return result


def test_paired_specificity_non_inferiority_in_the_gate_uses_the_negative_cases() -> None:
    cases, champion = sites_cases()
    worse = halve_specificity_at(cases, champion, "site-02")
    plan = plan_with({"kind": "non_inferiority", "metric": "specificity", "margin": 0.05})
    equal = single(plan, cases, ModelScores("2", champion.scores, 0.5), champion)
    assert equal.passed and equal.numbers["difference"] == 0.0
    assert equal.numbers["cases"] == int((~cases.positive).sum())
    failed = single(plan, cases, worse, champion)
    assert not failed.passed and "specificity difference" in failed.detail
    expected = paired_difference(
        (worse.scores < 0.5)[~cases.positive], (champion.scores < 0.5)[~cases.positive]
    )
    assert failed.numbers["lower_bound"] == pytest.approx(expected.lower)


def test_per_site_non_inferiority_names_the_site_that_lost_specificity() -> None:
    cases, champion = sites_cases()
    worse = halve_specificity_at(cases, champion, "site-02")
    plan = plan_with(
        {"kind": "non_inferiority", "metric": "specificity", "margin": 0.10, "by": "site"}
    )
    result = single(plan, cases, worse, champion)
    assert not result.passed
    assert [row.value for row in result.groups if row.passed is False] == ["site-02"]
    assert "site-02" in result.detail
    assert single(plan, cases, ModelScores("2", champion.scores, 0.5), champion).passed


def test_per_site_wilson_bounds_are_statsmodels_and_small_groups_are_skipped() -> None:
    cases, champion = sites_cases()
    plan = plan_with(
        {"kind": "lower_bound", "metric": "sensitivity", "by": "site", "min": 0.5, "min_cases": 20}
    )
    result = single(plan, cases, champion, champion)
    for row in result.groups:
        rows = (cases.groups["site"] == row.value) & cases.positive
        hits = int(np.count_nonzero(champion.scores[rows] >= 0.5))
        low, _ = proportion_confint(hits, int(rows.sum()), alpha=0.05, method="wilson")
        assert row.lower_bound == pytest.approx(low)
    strict = plan_with(
        {"kind": "lower_bound", "metric": "sensitivity", "by": "site", "min": 0.5, "min_cases": 500}
    )
    skipped = single(strict, cases, champion, champion)
    assert skipped.passed and all(not row.evaluated for row in skipped.groups)
    assert "fewer than 500" in skipped.groups[0].note


def test_a_group_criterion_by_a_missing_field_is_an_error() -> None:
    from pccp.gate import GateError

    cases, champion = sites_cases()
    plan = plan_with(
        {"kind": "non_inferiority", "metric": "sensitivity", "margin": 0.1, "by": "PatientSex"}
    )
    with pytest.raises(GateError, match="PatientSex"):
        evaluate_criteria(plan, cases, champion, champion)


def test_the_npv_criterion_reads_the_candidates_confusion_counts() -> None:
    cases, champion = sites_cases()
    plan = plan_with({"kind": "predictive_value", "metric": "npv", "prevalence": 0.05, "min": 0.9})
    result = single(plan, cases, champion, champion)
    metrics = binary_metrics(cases.positive, champion.scores, 0.5, PerformanceConfig())
    sens, spec = (
        metrics.counts.tp / metrics.counts.positives,
        (metrics.counts.tn / metrics.counts.negatives),
    )
    assert result.numbers["estimate"] == pytest.approx(predictive_value("npv", sens, spec, 0.05))
    assert result.passed


def test_a_candidate_that_halves_specificity_at_a_site_cannot_pass_the_shipped_plan(
    shipped: Plan,
) -> None:
    """The issue's bar: whatever else it does well, the shipped plan fails it, names the site
    and the metric, and the evidence flags it with a sentence."""
    cases, champion = sites_cases()
    sex = np.where(np.arange(cases.positive.size) % 2 == 0, "F", "M")
    cases = GateCases(cases.study_keys, cases.positive, {**cases.groups, "PatientSex": sex})
    worse = halve_specificity_at(cases, champion, "site-02")
    report = build_report(
        shipped,
        cases,
        worse,
        champion,
        model_name="cxr-lesion",
        locked_test_sha256="0" * 64,
        scope_violations=[],
        content=no_site_content(shipped),
    )
    assert report.outcome is GateOutcome.FAILED
    failing: dict[str, CriterionResult] = {c.id: c for c in report.criteria if not c.passed}
    assert "PE-12" in failing and "site=site-02" in failing["PE-12"].detail
    assert any("specificity" in c.detail and "site-02" in c.detail for c in failing.values())
    at_site = [
        r
        for r in report.regressions
        if (r.field, r.value, r.metric) == ("site", "site-02", "specificity")
    ]
    assert len(at_site) == 1 and "At site-02, specificity is" in at_site[0].sentence
    assert "times as many normal studies" in at_site[0].sentence


# --- regressions beyond the noise -------------------------------------------------------------


def test_a_candidate_equal_to_the_champion_flags_nothing() -> None:
    cases, champion = sites_cases()
    assert (
        flag_regressions(
            cases.positive, dict(cases.groups), (champion.scores, 0.5), (champion.scores, 0.5)
        )
        == []
    )


def test_worse_calibration_alone_is_flagged_by_the_paired_bootstrap() -> None:
    rng = np.random.default_rng(5)
    n = 1200
    p = rng.uniform(0.05, 0.95, n)
    positive = rng.random(n) < p
    groups = {"site": np.array(["a", "b"])[np.arange(n) % 2]}
    squeezed = 0.5 + (p - 0.5) * 0.3  # same ranking, decisions at the mapped threshold
    flags = flag_regressions(positive, groups, (squeezed, 0.5), (p, 0.5))
    assert {(f.field, f.metric) for f in flags} >= {(None, "ece")}
    assert all(f.metric == "ece" for f in flags)


def test_the_vectorised_ece_is_the_performance_librarys() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(300)
    truth = rng.random(300) < scores
    ece = ece_many(truth, scores, np.arange(300)[None, :])[0]
    metrics = binary_metrics(truth, scores, 0.5, PerformanceConfig(ece_bins=10))
    assert ece == pytest.approx(metrics.ece)


# --- the threshold policy ----------------------------------------------------------------------


def test_the_selected_threshold_is_the_highest_reaching_the_sensitivity() -> None:
    rng = np.random.default_rng(4)
    positive = rng.random(400) < 0.3
    scores = np.clip(rng.normal(np.where(positive, 0.7, 0.35), 0.15), 0, 1)
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        ours = threshold_for_sensitivity(positive, scores, target)
        _fpr, tpr, cuts = roc_curve(positive, scores, drop_intermediate=False)
        expected = cuts[int(np.argmax(tpr >= target - 1e-12))]
        assert ours == pytest.approx(expected)
        assert np.mean(scores[positive] >= ours) >= target - 1e-12
        assert np.mean(scores[positive] >= np.nextafter(ours, 2)) < target


def tuning(seed: int = 1, positives: float = 0.3) -> TuningSplit:
    """300 tuning cases, the first 100 in the champion's training manifest (``"c" * 64``),
    the first 50 of them on its train side."""
    rng = np.random.default_rng(seed)
    positive = rng.random(300) < positives
    champion = np.clip(rng.normal(np.where(positive, 0.6, 0.4), 0.15), 0, 1)
    candidate = np.clip(rng.normal(np.where(positive, 0.7, 0.3), 0.15), 0, 1)
    seen, trained = np.arange(300) < 100, np.arange(300) < 50
    return TuningSplit(positive, candidate, champion, "b" * 64, seen, trained, ("c" * 64,))


def test_hold_champion_sensitivity_reaches_the_champions_tuning_sensitivity(
    shipped: Plan,
) -> None:
    split = tuning()
    provenance = select_threshold(
        shipped.protocol.threshold_policy,
        split,
        champion_version="1",
        champion_threshold=0.45,
        plan=shipped,
    )
    assert split.champion_seen is not None  # the shipped plan measures it on unseen cases
    unseen = split.positive & ~split.champion_seen
    champion_sensitivity = np.mean(split.champion_scores[unseen] >= 0.45)
    assert provenance.rule is ThresholdRule.HOLD_CHAMPION_SENSITIVITY
    assert provenance.source == "tuning_split"
    assert provenance.target_sensitivity == pytest.approx(champion_sensitivity)
    assert provenance.tuning_sensitivity is not None
    assert provenance.tuning_sensitivity >= champion_sensitivity  # on every tuning case
    assert provenance.target_positives == np.count_nonzero(unseen)
    assert provenance.plan_version == shipped.plan_version
    assert ThresholdProvenance.from_tag(provenance.to_tag()) == provenance


def test_keep_champion_and_too_few_positives() -> None:
    keep = select_threshold(
        ThresholdPolicy(), tuning(), champion_version="1", champion_threshold=0.42, plan=None
    )
    assert keep.threshold == 0.42 and keep.source == "champion"
    with pytest.raises(ThresholdError, match="positive cases"):
        select_threshold(
            ThresholdPolicy(rule=ThresholdRule.TARGET_SENSITIVITY, target_sensitivity=0.9),
            tuning(positives=0.02),
            champion_version="1",
            champion_threshold=0.42,
            plan=None,
        )


def test_a_plan_states_the_target_with_its_rule_only() -> None:
    with pytest.raises(ValueError, match="target_sensitivity"):
        ThresholdPolicy(rule=ThresholdRule.TARGET_SENSITIVITY)
    with pytest.raises(ValueError, match="target_sensitivity"):
        ThresholdPolicy(rule=ThresholdRule.KEEP_CHAMPION, target_sensitivity=0.9)


def facts(provenance: ThresholdProvenance | None, **change: Any) -> ThresholdFacts:
    values: dict[str, Any] = {
        "candidate_threshold": provenance.threshold if provenance else 0.3,
        "champion_threshold": 0.45,
        "champion_version": "1",
        "provenance": provenance,
        "training_manifest_sha256": "b" * 64,
    }
    return ThresholdFacts(**(values | change))


def test_the_scope_guard_refuses_a_threshold_from_anywhere_else(shipped: Plan) -> None:
    policy = shipped.protocol.threshold_policy
    held = select_threshold(
        policy, tuning(), champion_version="1", champion_threshold=0.45, plan=shipped
    )
    assert threshold_violations(policy, facts(held)) == []
    cases: list[tuple[ThresholdFacts, str]] = [
        (facts(None), "no recorded provenance"),
        (facts(held, candidate_threshold=held.threshold + 0.05), "changed after selection"),
        (facts(held.model_copy(update={"source": "champion"})), "tuning split"),
        (facts(held, training_manifest_sha256="c" * 64), "tuning split"),
        (
            facts(held.model_copy(update={"rule": ThresholdRule.KEEP_CHAMPION})),
            "not the plan's hold_champion_sensitivity",
        ),
    ]
    for given, words in cases:
        found = threshold_violations(policy, given)
        assert found and any(words in violation for violation in found), (words, found)
    # And the gate's scope guard reports it next to the fixed elements.
    assert scope_violations(shipped, ModelSpec(), "cxr-lesion-triage-v1", threshold=facts(None))


def test_keep_champion_refuses_any_other_threshold() -> None:
    policy = ThresholdPolicy()
    kept = select_threshold(
        policy, tuning(), champion_version="1", champion_threshold=0.45, plan=None
    )
    assert threshold_violations(policy, facts(kept)) == []
    moved = kept.model_copy(update={"threshold": 0.5})
    found = threshold_violations(policy, facts(moved))
    assert any("keeps the champion's threshold" in violation for violation in found)


def test_the_report_carries_the_threshold_provenance(shipped: Plan) -> None:
    cases, champion = sites_cases()
    sex = np.where(np.arange(cases.positive.size) % 2 == 0, "F", "M")
    cases = GateCases(cases.study_keys, cases.positive, {**cases.groups, "PatientSex": sex})
    held = select_threshold(
        shipped.protocol.threshold_policy,
        tuning(),
        champion_version="1",
        champion_threshold=0.45,
        plan=shipped,
    )
    report = build_report(
        shipped,
        cases,
        ModelScores("2", champion.scores, 0.5),
        champion,
        model_name="cxr-lesion",
        locked_test_sha256="0" * 64,
        scope_violations=[],
        threshold=held,
        content=no_site_content(shipped),
    )
    assert report.threshold == held
    assert "hold_champion_sensitivity" in held.sentence() and "tuning split" in held.sentence()


def test_a_per_site_bound_passes_at_most_at_its_nominal_rate_when_the_truth_is_the_minimum() -> (
    None
):
    """The lower end of a two-sided 95% Wilson interval is a one-sided 97.5% bound: with the
    true sensitivity exactly at ``min`` at every site, a site passes at most 2.5% of the time
    (Wilson is close to nominal, not exact: a Monte Carlo band is allowed). One gate run over
    600 sites of 60 positive and 10 negative cases each."""
    rng = np.random.default_rng(11)
    sites, positives, minimum = 600, 60, 0.8
    plan = plan_with({"kind": "lower_bound", "metric": "sensitivity", "by": "site", "min": minimum})
    per_site = np.arange(positives + 10) < positives
    positive = np.tile(per_site, sites)
    site = np.repeat([f"site-{i:03d}" for i in range(sites)], per_site.size)
    cases = GateCases(tuple(f"k{i}" for i in range(positive.size)), positive, {"site": site})
    hits = (rng.random(positive.size) < minimum) & positive
    model = ModelScores("2", np.where(hits, 0.9, 0.1), 0.5)
    result = single(plan, cases, model, model)
    rate = sum(bool(row.passed) for row in result.groups) / sites
    assert all(row.evaluated for row in result.groups)
    assert rate <= 0.025 + 3 * np.sqrt(0.025 * 0.975 / sites), rate


def test_per_group_auroc_needs_two_cases_of_each_class_whatever_the_plan_says() -> None:
    cases, champion = sites_cases()
    lonely = cases.positive.copy()
    lonely[(cases.groups["site"] == "site-03")] = False
    lonely[np.flatnonzero(cases.groups["site"] == "site-03")[0]] = True  # one positive
    cases = GateCases(cases.study_keys, lonely, cases.groups)
    plan = plan_with(
        {"kind": "non_inferiority", "metric": "auroc", "margin": 0.1, "by": "site", "min_cases": 1}
    )
    result = single(plan, cases, champion, champion)
    [site_03] = [row for row in result.groups if row.value == "site-03"]
    assert not site_03.evaluated and "fewer than 2" in site_03.note
    assert result.passed
