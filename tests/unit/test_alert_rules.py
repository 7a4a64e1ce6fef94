"""The Prometheus alerting rules (dashboards/alerts): promtool accepts them and their unit tests
pass, every rule is tested, every metric they read is one RadSentry exposes, and every runbook
link lands on a heading of docs/operations.md.

promtool is a required tool of the test suite: `make test` installs it (Debian
package `prometheus`). Without it these tests fail rather than skip, so CI cannot pass on rules
nobody checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from monitor.service import metrics
from monitor.service.metrics_db import DatabaseCollector

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "dashboards" / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.yaml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yaml"))
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/radsentry/radsentry/blob/main/docs/operations.md#"
SEVERITIES = {"page", "ticket", "info"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: the alert rules cannot be checked. `make test` installs "
            "it (apt-get install prometheus); on a workstation install Prometheus's promtool."
        )
    return path


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules.extend(group["rules"])
    return rules


def _exposed_names() -> set[str]:
    """Every sample name RadSentry's metrics and its database collector can expose."""
    families = [
        family
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    ]
    families.extend(DatabaseCollector().describe())
    return {family.name + suffix for family in families for suffix in SUFFIXES[family.type]}


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_rule_and_test_files_exist() -> None:
    assert RULE_FILES, "no rule files in dashboards/alerts"
    assert TEST_FILES, "no promtool tests in dashboards/alerts/tests"


def test_promtool_check_rules_accepts_the_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", *map(str, TEST_FILES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_tested_firing_and_not_firing() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert names - fires == set(), "rules without a firing case"
    assert names - quiet == set(), "rules without a not-firing case"


def test_rules_read_only_metrics_radsentry_exposes() -> None:
    exposed = _exposed_names()
    for rule in _rules():
        referenced = set(re.findall(r"\bradsentry_[a-z0-9_]+\b", rule["expr"]))
        assert referenced, f"{rule.get('alert')} reads no RadSentry metric"
        assert referenced <= exposed, f"{rule.get('alert')} reads {referenced - exposed}"


def test_every_rule_has_severity_summary_description_and_a_runbook_that_exists() -> None:
    anchors = _anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in _rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url: str = annotations["runbook_url"]
        assert url == RUNBOOK_BASE + name.lower(), name
        assert name.lower() in anchors, f"docs/operations.md has no heading for {name}"


def test_anchor_rule_matches_github() -> None:
    assert _anchors("## Runbooks\n### RadSentrySiteSilent\n#### What it means, briefly") == {
        "runbooks",
        "radsentrysitesilent",
        "what-it-means-briefly",
    }
