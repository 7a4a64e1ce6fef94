"""The gate's evidence files: canonical JSON that round-trips, and an HTML page
with every criterion, both plots, escaped text and no study key."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from numpy.typing import NDArray

from pccp.evidence import OUT_OF_SCOPE_SENTENCE, TEMPLATE, report_html, report_json
from pccp.gate import GateCases, GateOutcome, GateReport, ModelScores, build_report
from pccp.plan import Plan, load_plan
from tests.factories import no_site_content

ROOT = Path(__file__).resolve().parents[2]
PLAN = load_plan(ROOT / "pccp" / "plans" / "cxr-lesion.yaml")
KEY_PREFIX = "study-9f27c1"
"""Every study key starts with it, so a leaked key is easy to find."""


def sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def scored(
    seed: int = 0, n: int = 600, threshold: float = 0.25
) -> tuple[GateCases, ModelScores, ModelScores]:
    """Calibrated candidate, noisier champion, three sites and two sexes."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.3, 2.5, n)
    positive = rng.random(n) < sigmoid(logit)
    groups = {
        "site": np.array(["site-a", "site-b", "site-c"])[np.arange(n) % 3],
        "PatientSex": np.where(rng.random(n) < 0.5, "F", "M"),
    }
    cases = GateCases(tuple(f"{KEY_PREFIX}-{i:04d}" for i in range(n)), positive, groups)
    champion = ModelScores("1", sigmoid(logit + rng.normal(0.0, 1.0, n)), 0.25)
    return cases, ModelScores("2", sigmoid(logit), threshold), champion


def report(
    plan: Plan = PLAN,
    threshold: float = 0.25,
    violations: tuple[str, ...] = (),
    model_name: str = "cxr-lesion",
) -> GateReport:
    cases, candidate, champion = scored(threshold=threshold)
    return build_report(
        plan,
        cases,
        candidate,
        champion,
        model_name=model_name,
        locked_test_sha256="ab" * 32,
        scope_violations=list(violations),
        content=no_site_content(plan),
        evaluated_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def failing() -> GateReport:
    """A candidate whose threshold is too high: PE-2 (sensitivity) fails, the rest pass."""
    return report(threshold=0.5)


def test_the_json_is_canonical_and_round_trips(failing: GateReport) -> None:
    encoded = report_json(failing)
    assert GateReport.model_validate_json(encoded) == failing
    assert encoded == report_json(GateReport.model_validate_json(encoded))
    document = json.loads(encoded)
    assert encoded.decode() == json.dumps(document, sort_keys=True, indent=2) + "\n"
    assert document["outcome"] == "failed"
    assert document["evaluated_at"] == "2025-03-01T12:00:00Z"
    assert [c["id"] for c in document["criteria"]] == [f"PE-{i}" for i in range(1, 17)]


def test_no_study_key_reaches_the_report(failing: GateReport) -> None:
    assert KEY_PREFIX not in report_json(failing).decode()
    assert KEY_PREFIX not in report_html(failing)


def criterion_row(html: str, criterion_id: str) -> str:
    start = html.index(f'<tr id="{criterion_id}">')
    return html[start : html.index("</tr>", start)]


def test_the_page_shows_every_criterion_with_its_result(failing: GateReport) -> None:
    html = report_html(failing)
    for criterion in failing.criteria:
        row = criterion_row(html, criterion.id)
        assert ("<strong>PASS</strong>" in row) is criterion.passed
        assert ("<strong>FAIL</strong>" in row) is not criterion.passed
        assert str(escape(criterion.description)) in row
        assert str(escape(criterion.detail)) in row
    assert "<strong>FAIL</strong>" in criterion_row(html, "PE-2")
    assert "successes = " in criterion_row(html, "PE-2")
    assert '<div class="outcome failed">FAILED</div>' in html


def test_the_page_has_a_header_two_inline_plots_and_the_group_tables(
    failing: GateReport,
) -> None:
    html = report_html(failing)
    for text in (
        failing.plan_id,
        failing.plan_version,
        failing.plan_fingerprint,
        failing.locked_test_sha256,
        "version 2",
        "version 1",
        "By site",
        "By PatientSex",
        "site-c",
    ):
        assert text in html
    assert html.count("<svg") == 2 and html.count("</svg>") == 2
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert "ROC on the locked test set" in html and "Reliability (10 bins)" in html
    assert OUT_OF_SCOPE_SENTENCE not in html


def test_the_page_is_reproducible(failing: GateReport) -> None:
    assert report_html(failing) == report_html(GateReport.model_validate_json(report_json(failing)))


def test_out_of_scope_is_said_in_big_letters_with_each_violation() -> None:
    outside = report(violations=("input size 128 px is not the plan's fixed 64 px",))
    html = report_html(outside)
    assert outside.outcome is GateOutcome.OUT_OF_SCOPE
    assert '<div class="outcome out_of_scope">OUT OF SCOPE</div>' in html
    assert OUT_OF_SCOPE_SENTENCE in html
    assert "input size 128 px is not the plan&#39;s fixed 64 px" in html


def test_text_from_the_plan_and_the_registry_is_escaped() -> None:
    criteria = list(PLAN.protocol.performance_evaluation)
    criteria[0] = criteria[0].model_copy(update={"description": "<script>alert(1)</script> & co"})
    protocol = PLAN.protocol.model_copy(update={"performance_evaluation": tuple(criteria)})
    plan = PLAN.model_copy(update={"protocol": protocol})
    html = report_html(report(plan=plan, model_name='<img src=x onerror="bad()">'))
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "&lt;img src=x onerror=&#34;bad()&#34;&gt;" in html


def test_the_template_ships_as_package_data() -> None:
    assert resources.files("pccp").joinpath("templates", TEMPLATE).is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "templates/*.j2" in config["tool"]["setuptools"]["package-data"]["pccp"]


def test_the_site_table_comes_first_whatever_the_order_of_the_fields(
    failing: GateReport,
) -> None:
    reordered = failing.model_copy(update={"groups": sorted(failing.groups, key=lambda g: g.field)})
    html = report_html(reordered)
    assert reordered.groups[0].field == "PatientSex"
    assert html.index("<h2>By site</h2>") < html.index("<h2>By PatientSex</h2>")
