"""The Predetermined Change Control Plan as code: a typed, validated plan.

The model mirrors the three parts of the FDA guidance "Marketing Submission Recommendations for
a Predetermined Change Control Plan for Artificial Intelligence-Enabled Device Software
Functions" (final, December 2024):

1. **Description of modifications** (:class:`Description`): the device and model, the intended
   use, the plan version, which modification types are allowed and what is fixed (architecture,
   input specification, output findings, intended use).
2. **Modification protocol** (:class:`Protocol`): data management (label sources, minimum
   cases, the locked test set by manifest and SHA-256), re-training practices (allowed
   hyperparameter ranges), the threshold policy (:class:`ThresholdPolicy`: where a candidate's
   operating threshold comes from), performance evaluation (acceptance criteria) and update
   procedures (approvals, rollout, rollback).
3. **Impact assessment** (:class:`ImpactAssessment`): text, versioned with the plan.

Every acceptance criterion has an id (``PE-3``) that gate results and change-log entries cite.
Plans are YAML files in ``pccp/plans/``; :func:`load_plan` reads one and refuses anything the
model does not describe (unknown keys, duplicate ids, ranges that are empty). The JSON Schema in
``docs/schemas/pccp-plan.v1.schema.json`` is generated from this module.

This module only describes: ``pccp.gate`` checks a candidate against the criteria, and
``pccp.lifecycle`` holds the approval workflow.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitor.events import ALLOWED_METADATA_KEYS, Identifier, LabelSource
from retrain.config import TrainConfig

PLAN_SCHEMA: Final = "pccp-plan/v1"
PLAN_SCHEMA_FILE: Final = "pccp-plan.v1.schema.json"
CriterionId = Annotated[str, Field(pattern=r"^[A-Z]{2}-[0-9]{1,3}$")]
"""``PE-3``: two capitals (the plan section: PE performance evaluation), a number."""
Metric = Literal["auroc", "sensitivity", "specificity"]


class PlanError(ValueError):
    """A plan file that cannot be read or does not describe a valid plan."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModificationType(StrEnum):
    """What the plan allows to change without a new submission."""

    RETRAIN = "retrain_same_architecture"
    """New weights for the same architecture, on new labelled data."""
    RECALIBRATE = "recalibrate_threshold"
    """A new temperature and operating threshold only."""
    NEW_SITE = "extend_to_site"
    """Deployment at a site the plan did not name, after the same acceptance criteria."""


class FixedElements(_Frozen):
    """What no modification under this plan may change (the scope guard compares a candidate's
    ``retrain.model.ModelSpec`` and intended use with these)."""

    architecture: str = Field(min_length=1)
    input_size: int = Field(ge=16, le=1024)
    input_channels: Literal[1] = 1
    findings: tuple[Identifier, ...] = Field(min_length=1)
    intended_use_id: Identifier


class Description(_Frozen):
    """Part 1: the description of modifications."""

    device_name: str = Field(min_length=1)
    manufacturer: str = Field(min_length=1)
    model_name: Identifier
    """The registered model name in the model registry."""
    intended_use: str = Field(min_length=1)
    allowed_modifications: tuple[ModificationType, ...] = Field(min_length=1)
    fixed: FixedElements
    sites: tuple[Identifier, ...] = ()
    """Sites the plan covers; empty: any site (``extend_to_site`` then needs no listing)."""


class LockedTestSetRef(_Frozen):
    """The locked test set: a manifest file (``retrain.dataset.LockedTestSet``) and its hash."""

    manifest: Path
    """Relative to the plan file's folder, or absolute."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DataManagement(_Frozen):
    label_sources: tuple[LabelSource, ...] = Field(min_length=1)
    min_cases: int = Field(ge=1)
    min_cases_per_site: int = Field(ge=0)
    locked_test_set: LockedTestSetRef


class Range(_Frozen):
    """An inclusive range of one hyperparameter."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class RetrainingPractices(_Frozen):
    """Allowed ranges of ``retrain.config.TrainConfig`` fields (others are free)."""

    hyperparameters: dict[str, Range] = Field(default_factory=dict)
    warm_start_from_champion: bool = True

    @model_validator(mode="after")
    def _known_fields(self) -> Self:
        numeric = {
            name
            for name, field in TrainConfig.model_fields.items()
            if field.annotation in (int, float, "int", "float")
        }
        if unknown := sorted(set(self.hyperparameters) - numeric):
            raise ValueError(f"not numeric TrainConfig fields: {', '.join(unknown)}")
        return self

    def violations(self, config: TrainConfig) -> list[str]:
        """Each hyperparameter of ``config`` outside its allowed range, said in words."""
        values = config.model_dump()
        return [
            f"{name} = {values[name]} is outside [{allowed.min:g}, {allowed.max:g}]"
            for name, allowed in sorted(self.hyperparameters.items())
            if not allowed.min <= values[name] <= allowed.max
        ]


class _Criterion(_Frozen):
    id: CriterionId
    description: str = Field(min_length=1)


class _ByGroup(_Frozen):
    """Optional per-group evaluation of a criterion (``by: site``, ``by: PatientSex``...)."""

    by: str | None = Field(
        None,
        min_length=1,
        description="Evaluate in every value of this group field instead of overall.",
    )
    min_cases: int = Field(
        30,
        ge=1,
        description="With by: fewest cases of the metric's class in a group (positives for "
        "sensitivity, negatives for specificity, the smaller class for AUROC) for it to be "
        "evaluated; smaller groups are listed as not evaluated.",
    )


class BoundCriterion(_Criterion, _ByGroup):
    """The lower 95% bound of ``metric`` on the locked test set is at least ``min`` (AUROC by
    DeLong; sensitivity and specificity by Wilson, at the candidate's operating threshold),
    overall or, with ``by``, in every group large enough."""

    kind: Literal["lower_bound"] = "lower_bound"
    metric: Metric
    min: float = Field(ge=0.0, le=1.0)


class NonInferiorityCriterion(_Criterion, _ByGroup):
    """``metric``(candidate) - ``metric``(champion) > -``margin`` on the same cases, one-sided
    at ``alpha``: paired DeLong for AUROC, Newcombe's paired interval for sensitivity and
    specificity (each model at its own threshold); overall or, with ``by``, in every group
    large enough."""

    kind: Literal["non_inferiority"] = "non_inferiority"
    metric: Metric = "auroc"
    margin: float = Field(ge=0.0, le=0.5)
    alpha: float = Field(0.025, gt=0.0, lt=0.5)


class PredictiveValueCriterion(_Criterion):
    """PPV or NPV at a stated ``prevalence`` (the intended population's, not the test set's),
    from the candidate's sensitivity and specificity: its one-sided 95% lower bound (from the
    Wilson bounds of both) at least ``min``."""

    kind: Literal["predictive_value"] = "predictive_value"
    metric: Literal["ppv", "npv"]
    prevalence: float = Field(gt=0.0, lt=1.0)
    min: float = Field(ge=0.0, le=1.0)


class GroupMinimumCriterion(_Criterion):
    """``metric`` at least ``min`` in every site (``by: site``) or every value of a subgroup
    field (e.g. ``by: PatientSex``) with at least ``min_cases`` cases."""

    kind: Literal["group_minimum"] = "group_minimum"
    by: str = Field(min_length=1)
    metric: Metric
    min: float = Field(ge=0.0, le=1.0)
    min_cases: int = Field(30, ge=1)


class CalibrationCriterion(_Criterion):
    """Expected calibration error (10 equal-width bins) at most ``max``."""

    kind: Literal["calibration"] = "calibration"
    max: float = Field(gt=0.0, le=1.0)


class RegressionsCriterion(_Criterion):
    """At most ``max_count`` groups (sites and subgroups) where the candidate's ``metric`` is
    more than ``tolerance`` below the champion's."""

    kind: Literal["regressions"] = "regressions"
    metric: Metric = "auroc"
    tolerance: float = Field(ge=0.0, le=0.5)
    max_count: int = Field(ge=0)


class ContentCoverageCriterion(_Criterion):
    """The locked test set covers what the sites now send: for each of ``fields``, every value
    that makes up at least ``min_share`` of a site's recent studies has at least ``min_cases``
    locked cases (``pccp.coverage``; the FDA guidance asks for a performance evaluation
    representative of the intended use). A site's recent studies are its last
    ``recent_studies`` accepted inference events for the model within ``lookback_days`` of its
    latest one; a site with fewer than ``min_recent_studies`` is listed as not evaluated."""

    kind: Literal["content_coverage"] = "content_coverage"
    fields: tuple[str, ...] = Field(("ViewPosition", "PatientAgeBand"), min_length=1)
    min_share: float = Field(0.05, gt=0.0, le=1.0)
    min_cases: int = Field(30, ge=1)
    recent_studies: int = Field(500, ge=1)
    lookback_days: float = Field(30.0, gt=0.0)
    min_recent_studies: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _metadata_fields(self) -> Self:
        if unknown := sorted(set(self.fields) - ALLOWED_METADATA_KEYS):
            raise ValueError(f"not event metadata fields: {', '.join(unknown)}")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("each field once")
        return self


Criterion = Annotated[
    BoundCriterion
    | NonInferiorityCriterion
    | PredictiveValueCriterion
    | GroupMinimumCriterion
    | CalibrationCriterion
    | RegressionsCriterion
    | ContentCoverageCriterion,
    Field(discriminator="kind"),
]


MIN_APPROVALS: Final = 2
"""Four eyes: the fewest distinct approvers a plan may require."""


class UpdateProcedures(_Frozen):
    approvals_required: int = Field(
        ge=MIN_APPROVALS, description="Distinct approvers (four eyes: 2)."
    )
    approver_role: Literal["mlops"] = "mlops"
    rollout: str = Field(min_length=1)
    rollback: str = Field(min_length=1)


class ThresholdRule(StrEnum):
    """How a candidate's operating threshold is set."""

    KEEP_CHAMPION = "keep_champion"
    """The champion's threshold, unchanged."""
    HOLD_CHAMPION_SENSITIVITY = "hold_champion_sensitivity"
    """The highest threshold at which the candidate's sensitivity on the tuning split reaches
    the champion's sensitivity there (at the champion's threshold): the sensitivity the sites
    were promised is kept, and specificity is as high as that allows."""
    TARGET_SENSITIVITY = "target_sensitivity"
    """The highest threshold at which the candidate's sensitivity on the tuning split reaches
    ``target_sensitivity``."""


class TargetCases(StrEnum):
    """Which tuning cases ``hold_champion_sensitivity`` measures the champion's sensitivity on."""

    TUNING_SPLIT = "tuning_split"
    """Every case of the tuning split (plans up to 1.3.0). Where the tuning split holds cases
    the champion trained or selected its threshold on (rehearsal on its development cases),
    the target is the champion's optimistic sensitivity on its own selection data."""
    UNSEEN_BY_CHAMPION = "unseen_by_champion"
    """Only the tuning cases on neither side of the training manifest of the champion, nor of
    any version it was retrained from: cases it never trained, early-stopped, calibrated or
    selected its threshold on. The candidate's threshold is then selected on the tuning cases
    none of those versions trained on (docs/pccp.md, "The threshold policy")."""


class ThresholdPolicy(_Frozen):
    """Part of the protocol: where a candidate's operating threshold comes from.

    A re-selecting rule reads only the tuning split (the validation part of the candidate's
    own training data, never the locked test set). The retraining job applies the rule and
    records the threshold's provenance on the model version; the gate's scope guard refuses a
    candidate whose threshold came from anywhere else.
    """

    rule: ThresholdRule = ThresholdRule.KEEP_CHAMPION
    target_sensitivity: float | None = Field(None, gt=0.0, lt=1.0)
    min_tuning_positives: int = Field(
        20,
        ge=1,
        description="A re-selecting rule needs at least this many positive cases in the tuning "
        "split; with fewer the retraining job fails rather than pick a threshold from noise.",
    )
    target_cases: TargetCases = Field(
        TargetCases.TUNING_SPLIT,
        description="hold_champion_sensitivity only: the tuning cases the champion's sensitivity "
        "(the target) is measured on. unseen_by_champion leaves out every case in the training "
        "manifest of the champion or of a version it was retrained from (with fewer than "
        "min_tuning_positives positive cases left, the retraining job fails), and selects the "
        "candidate's threshold on the tuning cases none of those versions trained on.",
    )
    description: str = ""

    @model_validator(mode="after")
    def _target_with_its_rule(self) -> Self:
        wants_target = self.rule is ThresholdRule.TARGET_SENSITIVITY
        if wants_target != (self.target_sensitivity is not None):
            raise ValueError("target_sensitivity is required by, and only by, target_sensitivity")
        if (
            self.target_cases is not TargetCases.TUNING_SPLIT
            and self.rule is not ThresholdRule.HOLD_CHAMPION_SENSITIVITY
        ):
            raise ValueError("target_cases applies to the hold_champion_sensitivity rule only")
        return self


class Protocol(_Frozen):
    """Part 2: the modification protocol."""

    data_management: DataManagement
    retraining: RetrainingPractices
    threshold_policy: ThresholdPolicy = ThresholdPolicy()
    """Absent: the champion's threshold is kept."""
    performance_evaluation: tuple[Criterion, ...] = Field(min_length=1)
    update_procedures: UpdateProcedures


class ImpactAssessment(_Frozen):
    """Part 3: benefits, risks and their mitigations, versioned with the plan."""

    version: str = Field(min_length=1)
    text: str = Field(min_length=1)


class Plan(_Frozen):
    """One PCCP, as approved with the device's marketing submission."""

    schema_id: Literal["pccp-plan/v1"] = Field(PLAN_SCHEMA, alias="schema")
    plan_id: Identifier
    plan_version: str = Field(min_length=1)
    description: Description
    protocol: Protocol
    impact_assessment: ImpactAssessment

    @model_validator(mode="after")
    def _criteria_named_once(self) -> Self:
        ids = [criterion.id for criterion in self.protocol.performance_evaluation]
        if duplicates := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"criterion ids must be unique: {', '.join(duplicates)}")
        return self

    def criterion(self, criterion_id: str) -> Criterion:
        """The criterion with id ``criterion_id``, or KeyError."""
        for criterion in self.protocol.performance_evaluation:
            if criterion.id == criterion_id:
                return criterion
        raise KeyError(criterion_id)

    def fingerprint(self) -> str:
        """SHA-256 of the plan's canonical JSON: what gate results and log entries record."""
        document = self.model_dump(mode="json", by_alias=True)
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_plan(path: Path) -> Plan:
    """Read and validate a plan YAML file; :class:`PlanError` says what is wrong and where."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path}: unreadable plan ({type(exc).__name__}: {exc})") from exc
    if not isinstance(document, dict):
        raise PlanError(f"{path}: a plan is a mapping at the top level")
    try:
        return Plan.model_validate(document)
    except ValueError as exc:
        raise PlanError(f"{path}: {exc}") from exc


def locked_test_set_path(plan: Plan, plan_file: Path) -> Path:
    """The locked test set's manifest path, resolved against the plan file's folder."""
    manifest = plan.protocol.data_management.locked_test_set.manifest
    return manifest if manifest.is_absolute() else (plan_file.parent / manifest).resolve()


def plan_json_schema() -> dict[str, Any]:
    """The published JSON Schema of plan files."""
    schema = Plan.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://radsentry.dev/schemas/{PLAN_SCHEMA}"
    return schema


def render_plan_schema() -> bytes:
    """The schema as written to ``docs/schemas`` (sorted keys, two-space indent)."""
    return (json.dumps(plan_json_schema(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_plan_schema(directory: Path) -> Path:
    """Write :data:`PLAN_SCHEMA_FILE` into ``directory``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PLAN_SCHEMA_FILE
    path.write_bytes(render_plan_schema())
    return path
