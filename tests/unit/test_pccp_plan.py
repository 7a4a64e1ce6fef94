"""The PCCP plan as code: the shipped plan, its schema, and what a plan refuses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from pccp.plan import (
    PLAN_SCHEMA_FILE,
    BoundCriterion,
    NonInferiorityCriterion,
    Plan,
    PlanError,
    load_plan,
    locked_test_set_path,
    render_plan_schema,
)
from retrain.config import JobConfig, TrainConfig
from retrain.dataset import LockedTestSet
from retrain.initial import InitialConfig

ROOT = Path(__file__).resolve().parents[2]
PLAN_FILE = ROOT / "pccp" / "plans" / "cxr-lesion.yaml"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(PLAN_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def edited(document: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of ``document`` with the dotted ``path`` set to ``value``."""
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return changed


def test_the_shipped_plan_loads_and_fits_the_initial_model_and_its_locked_test_set() -> None:
    plan = load_plan(PLAN_FILE)
    fixed, spec = plan.description.fixed, InitialConfig().spec
    assert (fixed.architecture, fixed.input_size, fixed.findings) == (
        spec.architecture,
        spec.input_size,
        spec.findings,
    )
    locked = LockedTestSet.load(locked_test_set_path(plan, PLAN_FILE))
    assert locked.sha256 == plan.protocol.data_management.locked_test_set.sha256
    assert len(locked.study_keys) == 400  # 300 PA studies and 100 AP (plan 1.3.0)
    assert plan.protocol.update_procedures.approvals_required >= 2  # four eyes
    assert isinstance(plan.criterion("PE-1"), BoundCriterion)
    assert isinstance(plan.criterion("PE-4"), NonInferiorityCriterion)
    with pytest.raises(KeyError):
        plan.criterion("PE-99")


def test_the_job_and_initial_training_configs_are_inside_the_plans_ranges() -> None:
    from monitor.service.demo.run import DEMO_JOB

    practices = load_plan(PLAN_FILE).protocol.retraining
    assert practices.violations(JobConfig().train) == []
    assert practices.violations(DEMO_JOB.train) == []
    assert practices.violations(InitialConfig().train) == []
    outside = TrainConfig(learning_rate=0.5, max_epochs=500)
    assert practices.violations(outside) == [
        "learning_rate = 0.5 is outside [0.0001, 0.01]",
        "max_epochs = 500 is outside [1, 50]",
    ]


def test_the_fingerprint_follows_the_content_not_the_layout(document: dict[str, Any]) -> None:
    plan = Plan.model_validate(document)
    reordered = dict(reversed(list(document.items())))
    assert Plan.model_validate(reordered).fingerprint() == plan.fingerprint()
    changed = edited(document, "protocol.performance_evaluation.0.min", 0.81)
    assert Plan.model_validate(changed).fingerprint() != plan.fingerprint()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("protocol.performance_evaluation.1.id", "PE-1", "criterion ids must be unique: PE-1"),
        ("protocol.performance_evaluation.0.id", "performance-1", "should match pattern"),
        ("protocol.performance_evaluation.0.kind", "vibes", "kind"),
        ("protocol.performance_evaluation.0.min", 1.5, "less than or equal to 1"),
        ("protocol.update_procedures.approvals_required", 1, "greater than or equal to 2"),
        ("protocol.retraining.hyperparameters", {"optimizer": {"min": 0, "max": 1}}, "optimizer"),
        ("protocol.retraining.hyperparameters", {"max_epochs": {"min": 9, "max": 1}}, "above max"),
        ("protocol.data_management.locked_test_set.sha256", "abc", "sha256"),
        ("protocol.data_management.label_sources", ["hearsay"], "label_sources"),
        ("description.allowed_modifications", ["new_architecture"], "allowed_modifications"),
        ("description.fixed.findings", [], "findings"),
        ("schema", "pccp-plan/v2", "schema"),
        ("surprise", 1, "surprise"),
    ],
)
def test_an_invalid_plan_is_refused_naming_what_is_wrong(
    document: dict[str, Any], path: str, value: object, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match=message):
        Plan.model_validate(edited(document, path, value))
    bad = tmp_path / "plan.yaml"
    bad.write_text(yaml.safe_dump(edited(document, path, value)), encoding="utf-8")
    with pytest.raises(PlanError, match=str(bad)):
        load_plan(bad)


def test_unreadable_files_are_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="unreadable"):
        load_plan(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- not a plan\n", encoding="utf-8")
    with pytest.raises(PlanError, match="mapping"):
        load_plan(tmp_path / "list.yaml")


def test_the_checked_in_plan_schema_matches_the_model() -> None:
    checked_in = (ROOT / "docs" / "schemas" / PLAN_SCHEMA_FILE).read_bytes()
    assert checked_in == render_plan_schema(), "docs/schemas is stale: run `make schemas`"
