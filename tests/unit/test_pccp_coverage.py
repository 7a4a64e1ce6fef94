"""The content-coverage guard (``pccp.coverage``): the locked test set must hold the content the
sites now send, or the candidate is refused with the reason and the mix table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from monitor.events import AGE_BANDS
from pccp.coverage import (
    UNKNOWN,
    ContentFacts,
    SiteMix,
    content_mix,
    content_value,
    evaluate_coverage,
)
from pccp.evidence import report_html, report_json
from pccp.gate import GateCases, GateError, GateOutcome, ModelScores, build_report
from pccp.plan import ContentCoverageCriterion, Plan, load_plan
from tests.unit.test_pccp_gate import PLAN_FILE, plan_with

GUARD = ContentCoverageCriterion(
    id="PE-16",
    description="The locked test set covers the site's views and age bands.",
    min_share=0.05,
    min_cases=30,
)


def headers(**shares: Sequence[tuple[str | None, int]]) -> list[dict[str, Any]]:
    """Study metadata with the given (value, count) pairs per field, row-aligned by position."""
    columns = {
        name: [value for value, count in pairs for _ in range(count)]
        for name, pairs in shares.items()
    }
    lengths = {len(values) for values in columns.values()}
    assert len(lengths) == 1
    return [{name: values[i] for name, values in columns.items()} for i in range(lengths.pop())]


LOCKED = content_mix(
    headers(
        ViewPosition=[("PA", 200), ("AP", 100)],
        PatientAgeBand=[("40-49", 150), ("60-69", 150)],
    ),
    GUARD.fields,
)


def site(site_id: str = "site-02", **shares: Sequence[tuple[str | None, int]]) -> SiteMix:
    return SiteMix(site_id, content_mix(headers(**shares), GUARD.fields))


def test_a_site_whose_mix_the_locked_set_covers_passes_with_the_mix_table() -> None:
    sent = site(ViewPosition=[("PA", 300), ("AP", 200)], PatientAgeBand=[("40-49", 500)])
    result = evaluate_coverage(GUARD, ContentFacts(LOCKED, (sent,)))

    assert result.passed and result.numbers["uncovered_values"] == 0
    assert "at 1 site(s)" in result.detail
    view = {row.value: row for row in result.coverage if row.field == "ViewPosition"}
    assert (view["PA"].site_share, view["PA"].locked_cases) == (0.6, 200)
    assert view["AP"].covered is True and view["AP"].locked_share == pytest.approx(1 / 3)
    ages = {row.value: row for row in result.coverage if row.field == "PatientAgeBand"}
    assert ages["60-69"].site_share == 0.0 and ages["60-69"].covered is None  # locked only


def test_a_new_view_the_locked_set_lacks_refuses_the_candidate_and_says_why() -> None:
    sent = site(ViewPosition=[("PA", 345), ("LL", 155)], PatientAgeBand=[("40-49", 500)])
    result = evaluate_coverage(GUARD, ContentFacts(LOCKED, (sent,)))

    assert not result.passed and result.numbers["uncovered_values"] == 1
    assert result.detail == (
        "site-02 now sends 31% ViewPosition LL (155 of 500 recent studies); the locked test set "
        "holds 0 LL cases (needs >= 30): the candidate's evidence does not cover what the site "
        "sends"
    )
    (lateral,) = [row for row in result.coverage if row.value == "LL"]
    assert (lateral.required, lateral.covered, lateral.locked_cases) == (True, False, 0)


def test_too_few_locked_cases_refuse_too_not_only_none() -> None:
    locked = content_mix(headers(ViewPosition=[("PA", 280), ("AP", 20)]), ("ViewPosition",))
    guard = GUARD.model_copy(update={"fields": ("ViewPosition",)})
    sent = site(ViewPosition=[("PA", 250), ("AP", 250)])
    result = evaluate_coverage(guard, ContentFacts(locked, (sent,)))
    assert not result.passed and "holds 20 AP cases (needs >= 30)" in result.detail


def test_a_new_value_below_min_share_is_listed_but_does_not_refuse() -> None:
    sent = site(ViewPosition=[("PA", 480), ("LL", 20)], PatientAgeBand=[("40-49", 500)])
    result = evaluate_coverage(GUARD, ContentFacts(LOCKED, (sent,)))
    assert result.passed
    (lateral,) = [row for row in result.coverage if row.value == "LL"]
    assert lateral.site_share == 0.04 and lateral.covered is None
    assert "under 5%" in lateral.note


def test_missing_values_are_unknown_and_never_required() -> None:
    assert content_value({}, "ViewPosition") == UNKNOWN
    assert content_value({"ViewPosition": None}, "ViewPosition") == UNKNOWN
    assert content_value({"ViewPosition": ""}, "ViewPosition") == UNKNOWN
    assert content_value({"ViewPosition": ["AP", "PA"]}, "ViewPosition") == "AP\\PA"
    assert content_value({"KVP": 110.0}, "KVP") == "110.0"
    sent = site(ViewPosition=[("PA", 300), (None, 200)], PatientAgeBand=[("40-49", 500)])
    result = evaluate_coverage(GUARD, ContentFacts(LOCKED, (sent,)))
    assert result.passed
    (unknown,) = [row for row in result.coverage if row.value == UNKNOWN]
    assert unknown.site_share == 0.4 and unknown.required is False


def test_sites_with_few_recent_studies_are_not_evaluated_and_each_site_is_judged_alone() -> None:
    quiet = site("site-01", ViewPosition=[("LL", 40)], PatientAgeBand=[("40-49", 40)])
    busy = site("site-03", ViewPosition=[("PA", 500)], PatientAgeBand=[("40-49", 500)])
    result = evaluate_coverage(GUARD, ContentFacts(LOCKED, (quiet, busy)))
    assert result.passed
    assert result.numbers["sites_evaluated"] == 1 and result.numbers["sites_not_evaluated"] == 1
    assert "not evaluated: site-01 (40 recent studies, fewer than 50)" in result.detail
    assert {row.site_id for row in result.coverage} == {"site-03"}

    nobody = evaluate_coverage(GUARD, ContentFacts(LOCKED))
    assert nobody.passed and nobody.detail.startswith("no site sent 50 or more recent studies")


def test_the_locked_sets_own_mix_passes_at_the_shipped_thresholds() -> None:
    """No false refusals on the same distribution: sites drawing 500 studies from the demo
    locked set's own mix (uniform adult ages 18 to 94, all PA) pass the shipped PE-16 in
    every one of 200 seeded draws; a site sending 15% lateral views never does."""
    shipped = load_plan(PLAN_FILE).criterion("PE-16")
    assert isinstance(shipped, ContentCoverageCriterion)
    rng = np.random.default_rng(3)

    def bands(n: int) -> list[str]:
        return [AGE_BANDS[min(9, int(age) // 10)] for age in rng.uniform(18, 95, n)]

    locked = content_mix(
        ({"ViewPosition": "PA", "PatientAgeBand": band} for band in bands(300)), shipped.fields
    )
    refused = {"same": 0, "lateral": 0}
    for _ in range(200):
        for name, lateral in (("same", 0.0), ("lateral", 0.15)):
            views = np.where(rng.random(500) < lateral, "LL", "PA")
            studies = [
                {"ViewPosition": str(view), "PatientAgeBand": band}
                for view, band in zip(views, bands(500), strict=True)
            ]
            sent = SiteMix("site-02", content_mix(studies, shipped.fields))
            refused[name] += not evaluate_coverage(shipped, ContentFacts(locked, (sent,))).passed
    assert refused == {"same": 0, "lateral": 200}


def test_the_plan_refuses_fields_that_are_not_event_metadata() -> None:
    with pytest.raises(ValueError, match="not event metadata fields: StudyDate"):
        ContentCoverageCriterion(id="PE-1", description="d", fields=("StudyDate",))
    with pytest.raises(ValueError, match="each field once"):
        ContentCoverageCriterion(id="PE-1", description="d", fields=("KVP", "KVP"))
    with pytest.raises(ValueError, match="min_share"):
        plan_with({"kind": "content_coverage", "min_share": 0.0})


def gate_inputs(plan: Plan) -> tuple[GateCases, ModelScores, ModelScores]:
    rng = np.random.default_rng(0)
    positive = rng.random(120) < 0.4
    scores = np.clip(positive * 0.5 + rng.random(120) * 0.5, 0, 1).astype(np.float64)
    cases = GateCases(
        tuple(f"k{i}" for i in range(120)), positive, {"site": np.array(["site-01"] * 120)}
    )
    return cases, ModelScores("2", scores, 0.5), ModelScores("1", scores, 0.5)


def test_the_gate_refuses_to_guess_when_the_sites_content_is_missing() -> None:
    plan = plan_with({"kind": "content_coverage"})
    cases, candidate, champion = gate_inputs(plan)
    with pytest.raises(GateError, match="compares the sites' recent content"):
        build_report(
            plan,
            cases,
            candidate,
            champion,
            model_name="cxr-lesion",
            locked_test_sha256="0" * 64,
            scope_violations=[],
        )


def test_a_refusal_fails_the_gate_and_the_evidence_shows_the_reason_and_the_table() -> None:
    plan = plan_with({"kind": "content_coverage", "min_share": 0.05, "min_cases": 30})
    cases, candidate, champion = gate_inputs(plan)
    sent = site(ViewPosition=[("PA", 345), ("LL", 155)], PatientAgeBand=[("40-49", 500)])
    report = build_report(
        plan,
        cases,
        candidate,
        champion,
        model_name="cxr-lesion",
        locked_test_sha256="0" * 64,
        scope_violations=[],
        content={"PE-1": ContentFacts(LOCKED, (sent,))},
    )
    assert report.outcome is GateOutcome.FAILED
    reason = "site-02 now sends 31% ViewPosition LL"
    assert reason in report.criteria[0].detail
    assert reason.encode() in report_json(report)
    page = report_html(report)
    assert reason in page and "not covered: the locked test set needs &gt;= 30 cases" in page
    assert '<table class="coverage">' in page and "<td>LL</td>" in page
