"""The PCCP gate job against a real PostgreSQL database and real locked-test DICOM files: the
plan recorded once per version, the locked set's hash enforced, the scope guard, the evidence.

The registry is our own interface (``GateRegistry``), faked with in-memory models; the gate on
a real MLflow registry runs in test_retrain_e2e.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml  # type: ignore[import-untyped]
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from monitor.events import InferenceEventV2
from monitor.service.audit.store import entries
from monitor.service.cli import app
from monitor.service.errors import IllegalTransition
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import InferenceEventRow
from monitor.service.pccp import store as candidates_store
from monitor.service.pccp.jobs import (
    GateContext,
    GateRefused,
    evaluate,
    evaluate_pending,
    report_of,
)
from pccp.catalog import SHIPPED_PLANS
from pccp.locked_cases import from_labelled, read_locked_cases, write_locked_cases
from retrain.dataset import LockedTestSet, LockedTestSetError
from retrain.embedding import Projection, fit_projection_on_images
from retrain.initial import InitialConfig, render_cohort
from retrain.mlflow_names import DATASET_TAG, INTENDED_USE_TAG, THRESHOLD_PROVENANCE_TAG
from retrain.model import ModelSpec, TrainedModel, build_model
from retrain.tracking import RegisteredVersion, TrackingError
from tests.factories import T0, inference_event, threshold_provenance

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

MODEL = "gate-test"
COHORT = InitialConfig(
    seed=7, sites=2, studies_per_site=2, test_studies_per_site=40, render_size=64
)
SPEC = ModelSpec(pooling="avg")
INTENDED_USE = "cxr-lesion-triage-v1"


def in_plan(threshold: float = 0.5, **tags: str) -> dict[str, str]:
    """Tags of a version trained under the plan: its intended use, its training manifest, and
    a threshold the plan's policy selected on that manifest's tuning split."""
    provenance = threshold_provenance(threshold=threshold, tuning_cases=100, tuning_positives=30)
    return {
        INTENDED_USE_TAG: INTENDED_USE,
        DATASET_TAG: "d" * 64,
        THRESHOLD_PROVENANCE_TAG: provenance.to_tag(),
        **tags,
    }


def model(seed: int, spec: ModelSpec = SPEC) -> TrainedModel:
    torch.manual_seed(seed)
    return TrainedModel(spec, build_model(spec).state_dict(), (1.0,), (0.5,))


class FakeRegistry:
    """Versions, aliases and tags in memory; evidence kept for the test to read."""

    def __init__(self) -> None:
        self.models: dict[str, TrainedModel] = {"1": model(0), "2": model(1)}
        self.tags: dict[str, dict[str, str]] = {v: in_plan() for v in "12"}
        self.evidence: dict[str, dict[str, bytes]] = {}
        self.projections: dict[str, Projection] = {}

    def version_by_alias(self, model_name: str, alias: str) -> RegisteredVersion | None:
        return self.version(model_name, "1") if alias == "champion" else None

    def version(self, model_name: str, version: str) -> RegisteredVersion:
        aliases = ("champion",) if version == "1" else ()
        return RegisteredVersion(model_name, version, f"run-{version}", aliases, self.tags[version])

    def load_model(self, model_name: str, version: str) -> TrainedModel:
        return self.models[version]

    def load_projection(self, model_name: str, version: str) -> Projection:
        if version not in self.projections:
            raise TrackingError(f"{model_name} version {version} has no embedding projection")
        return self.projections[version]

    def attach_evidence(
        self, model_name: str, version: str, files: Mapping[str, bytes], tags: Mapping[str, str]
    ) -> str:
        self.evidence[version] = dict(files)
        self.tags[version] |= tags
        return f"memory://run-{version}/evidence"


@pytest.fixture(scope="module")
def locked_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A plan folder governing MODEL and a locked-cases folder, over 80 rendered studies."""
    root = tmp_path_factory.mktemp("gate")
    cases = render_cohort(COHORT, root / "studies", "test")
    locked = LockedTestSet.from_keys(case.study_key for case in cases)
    plans, locked_dir = root / "plans", root / "locked"
    plans.mkdir()
    locked.write(plans / "locked.json")
    document = yaml.safe_load((SHIPPED_PLANS / "cxr-lesion.yaml").read_text())
    document["description"]["model_name"] = MODEL
    document["protocol"]["data_management"]["locked_test_set"] = {
        "manifest": "locked.json",
        "sha256": locked.sha256,
    }
    (plans / "gate.yaml").write_text(yaml.safe_dump(document))
    write_locked_cases(locked_dir / f"{document['plan_id']}.jsonl", from_labelled(cases))
    return plans, locked_dir


@pytest.fixture
def context(pg_engine: Engine, locked_cohort: tuple[Path, Path]) -> GateContext:
    plans, locked_dir = locked_cohort
    return GateContext(pg_engine, FakeRegistry(), plans, locked_dir, image_workers=2)


def proposed(engine: Engine, version: str = "2") -> Any:
    return candidates_store.propose(
        engine, model_name=MODEL, model_version=version, proposed_by="retrain-job", reason="test"
    )


def actions(engine: Engine) -> list[str]:
    return [entry.action for entry in entries(engine)]


def test_the_gate_scores_the_locked_set_and_records_its_evidence(context: GateContext) -> None:
    row = evaluate(context, proposed(context.engine).candidate_id)

    assert row.status in ("passed", "failed")  # untrained models: the criteria decide
    report = report_of(row)
    assert report is not None and report.cases == 80
    assert [c.id for c in report.criteria] == [f"PE-{n}" for n in range(1, 17)]
    assert report.candidate_version == "2" and report.champion_version == "1"
    assert report.scope_violations == []
    assert row.plan_id == "cxr-lesion-pccp" and row.approvals_required == 2
    assert row.report is not None and row.report["evidence_uri"] == "memory://run-2/evidence"
    registry = context.registry
    assert isinstance(registry, FakeRegistry)
    assert set(registry.evidence["2"]) == {"gate-report.json", "gate-report.html"}
    assert registry.tags["2"]["radsentry.gate_outcome"] == row.status
    sites = {g.value for g in report.groups if g.field == "site"}
    sexes = {g.value for g in report.groups if g.field == "PatientSex"}
    assert sites == {"site-01", "site-02"} and sexes <= {"F", "M"} and sexes
    assert actions(context.engine) == ["candidate.proposed", "plan.loaded", "gate.result"]


def test_a_plan_is_logged_once_per_version_and_again_when_it_changes(
    context: GateContext, tmp_path: Path
) -> None:
    registry = context.registry
    assert isinstance(registry, FakeRegistry)
    registry.models["3"], registry.tags["3"] = model(2), in_plan()
    evaluate(context, proposed(context.engine, "2").candidate_id)
    evaluate(context, proposed(context.engine, "3").candidate_id)
    assert actions(context.engine).count("plan.loaded") == 1

    # The same plan with another impact assessment: a new fingerprint, recorded as a change.
    plans = tmp_path / "plans"
    plans.mkdir()
    document = yaml.safe_load((context.plans_dir / "gate.yaml").read_text())
    document["impact_assessment"]["text"] += " Revised."
    (plans / "gate.yaml").write_text(yaml.safe_dump(document))
    (plans / "locked.json").write_bytes((context.plans_dir / "locked.json").read_bytes())
    registry.models["4"], registry.tags["4"] = model(3), in_plan()
    changed = GateContext(context.engine, registry, plans, context.locked_cases_dir)
    evaluate(changed, proposed(context.engine, "4").candidate_id)
    logged = [e for e in entries(context.engine) if e.action.startswith("plan.")]
    assert [e.action for e in logged] == ["plan.loaded", "plan.changed"]
    assert logged[1].details["previous_fingerprint"] == logged[0].details["fingerprint"]


def test_a_locked_set_whose_hash_is_not_the_plans_is_refused(
    context: GateContext, tmp_path: Path
) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "gate.yaml").write_bytes((context.plans_dir / "gate.yaml").read_bytes())
    original = LockedTestSet.load(context.plans_dir / "locked.json")
    LockedTestSet.from_keys(sorted(original.study_keys)[1:]).write(plans / "locked.json")
    row = proposed(context.engine)
    with pytest.raises(GateRefused, match="not the plan's"):
        evaluate(
            GateContext(context.engine, context.registry, plans, context.locked_cases_dir),
            row.candidate_id,
        )
    assert candidates_store.get(context.engine, row.candidate_id).status == "candidate"
    assert "gate.result" not in actions(context.engine)


def test_locked_cases_that_are_not_exactly_the_locked_set_are_refused(
    context: GateContext, tmp_path: Path
) -> None:
    source = context.locked_cases_dir / "cxr-lesion-pccp.jsonl"
    locked = LockedTestSet.load(context.plans_dir / "locked.json")
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(source.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(LockedTestSetError, match="1 missing"):
        read_locked_cases(short, locked)
    assert len(read_locked_cases(source, locked)) == 80


@pytest.mark.parametrize(
    ("candidate", "tags", "violation"),
    [
        (model(1, ModelSpec(pooling="avg", input_size=32)), in_plan(), "input"),
        (model(1), {k: v for k, v in in_plan().items() if k != INTENDED_USE_TAG}, "intended-use"),
        (model(1), in_plan(**{INTENDED_USE_TAG: "adult-ct-triage"}), "intended use"),
        (model(1), {INTENDED_USE_TAG: INTENDED_USE}, "no recorded provenance"),
        (model(1), in_plan(threshold=0.3), "changed after selection"),
        (model(1), in_plan(**{DATASET_TAG: "e" * 64}), "tuning split"),
    ],
    ids=[
        "input-size",
        "no-intended-use",
        "other-intended-use",
        "threshold-without-provenance",
        "threshold-edited",
        "threshold-from-other-data",
    ],
)
def test_a_candidate_outside_the_plan_is_out_of_scope_and_never_promotable(
    context: GateContext, candidate: TrainedModel, tags: dict[str, str], violation: str
) -> None:
    registry = context.registry
    assert isinstance(registry, FakeRegistry)
    registry.models["2"], registry.tags["2"] = candidate, tags
    row = evaluate(context, proposed(context.engine).candidate_id)
    assert row.status == "out_of_scope"
    report = report_of(row)
    assert report is not None and any(violation in v.lower() for v in report.scope_violations)
    assert b"requires a new regulatory submission" in registry.evidence["2"]["gate-report.html"]
    with pytest.raises(IllegalTransition):
        candidates_store.sign(
            context.engine, row.candidate_id, signer="alice", decision="approve", reason="x"
        )


def test_a_model_no_plan_governs_cannot_be_evaluated(context: GateContext) -> None:
    row = candidates_store.propose(
        context.engine, model_name="ungoverned", model_version="1", proposed_by="x", reason="r"
    )
    with pytest.raises(GateRefused, match="no PCCP plan"):
        evaluate(context, row.candidate_id)
    assert evaluate_pending(context) == []  # the failure is logged, the candidate waits
    assert candidates_store.get(context.engine, row.candidate_id).status == "candidate"


def test_the_cli_checks_plans_and_its_arguments() -> None:
    runner = CliRunner()
    checked = runner.invoke(app, ["pccp", "check"])
    assert checked.exit_code == 0 and "cxr-lesion-pccp 1.4.0 governs cxr-lesion" in checked.output
    both = runner.invoke(app, ["pccp", "evaluate", "--pending", "--model", "m", "--version", "1"])
    assert both.exit_code == 2
    assert runner.invoke(app, ["pccp", "evaluate", "--model", "m"]).exit_code == 2


# --- the content-coverage guard (PE-16) against the sites' stored inference events -------------


def sent(
    engine: Engine,
    site_id: str,
    views: Mapping[str, int],
    days_ago: float = 0.0,
    embedding: tuple[list[float], str] | None = None,
) -> None:
    """Store accepted inference events of MODEL at ``site_id``, ``views[v]`` of each view (v2
    events with ``embedding``: the vector and its id)."""
    with engine.connect() as connection:
        start = connection.scalar(select(func.count()).select_from(InferenceEventRow)) or 0
    events = []
    for view, count in views.items():
        for _ in range(count):
            n = start + len(events)
            event = inference_event(n, site_id)
            update: dict[str, Any] = {
                "model_name": MODEL,
                "occurred_at": T0 + timedelta(minutes=n) - timedelta(days=days_ago),
                "metadata": event.metadata.model_copy(update={"ViewPosition": view}),
            }
            if embedding is not None:
                event = InferenceEventV2.model_validate(
                    event.model_dump(by_alias=True)
                    | {"schema": "inference-event/v2", "embedding": embedding[0]}
                    | {"embedding_id": embedding[1]}
                )
            events.append(event.model_copy(update=update))
    store_batch(engine, [Delivered(e, "t", 0, e.event_id.int) for e in events], [])


@pytest.fixture
def views_only(context: GateContext, tmp_path: Path) -> GateContext:
    """The gate plan with PE-16 on ViewPosition only (the 80 locked cases are too few for
    every age band to hold 20) and 30 locked cases required per view."""
    plans = tmp_path / "plans"
    plans.mkdir()
    document = yaml.safe_load((context.plans_dir / "gate.yaml").read_text())
    for criterion in document["protocol"]["performance_evaluation"]:
        if criterion["id"] == "PE-16":
            criterion.update(fields=["ViewPosition"], min_cases=30)
    (plans / "gate.yaml").write_text(yaml.safe_dump(document))
    (plans / "locked.json").write_bytes((context.plans_dir / "locked.json").read_bytes())
    return GateContext(context.engine, context.registry, plans, context.locked_cases_dir, 2)


def from_site(engine: Engine, site_id: str) -> Any:
    return candidates_store.propose(
        engine,
        model_name=MODEL,
        model_version="2",
        proposed_by="retrain-job",
        site_id=site_id,
        reason="drift at the site",
    )


def test_a_site_sending_views_the_locked_set_lacks_fails_the_gate_and_says_why(
    views_only: GateContext,
) -> None:
    engine = views_only.engine
    sent(engine, "site-02", {"PA": 65, "LL": 35})
    sent(engine, "site-01", {"PA": 100})
    row = evaluate(views_only, from_site(engine, "site-02").candidate_id)

    assert row.status == "failed"
    report = report_of(row)
    assert report is not None
    (guard,) = [c for c in report.criteria if c.id == "PE-16"]
    assert not guard.passed
    reason = (
        "site-02 now sends 35% ViewPosition LL (35 of 100 recent studies); the locked test set "
        "holds 0 LL cases (needs >= 30): the candidate's evidence does not cover what the site "
        "sends"
    )
    assert guard.detail == reason
    table = {(r.site_id, r.value): (r.site_studies, r.locked_cases) for r in guard.coverage}
    assert table == {("site-02", "PA"): (65, 80), ("site-02", "LL"): (35, 0)}  # its site only
    registry = views_only.registry
    assert isinstance(registry, FakeRegistry)
    assert reason.encode() in registry.evidence["2"]["gate-report.json"]
    assert b"not covered" in registry.evidence["2"]["gate-report.html"]
    with pytest.raises(IllegalTransition, match="it is failed"):
        candidates_store.sign(
            engine, row.candidate_id, signer="alice", decision="approve", reason="x"
        )


def test_a_site_sending_what_the_locked_set_holds_passes_the_guard(
    views_only: GateContext,
) -> None:
    engine = views_only.engine
    sent(engine, "site-02", {"LL": 100}, days_ago=60)  # before the 30-day window: not counted
    sent(engine, "site-02", {"PA": 100})
    row = evaluate(views_only, from_site(engine, "site-02").candidate_id)

    report = report_of(row)
    assert report is not None
    (guard,) = [c for c in report.criteria if c.id == "PE-16"]
    assert guard.passed, guard.detail
    assert [(r.value, r.site_studies, r.covered) for r in guard.coverage] == [("PA", 100, True)]
    assert guard.numbers["sites_evaluated"] == 1


def test_a_candidate_without_a_site_is_checked_against_every_site_of_the_model(
    views_only: GateContext,
) -> None:
    engine = views_only.engine
    sent(engine, "site-01", {"PA": 100})
    sent(engine, "site-03", {"PA": 50, "AP": 50})
    row = evaluate(views_only, proposed(engine).candidate_id)

    report = report_of(row)
    assert report is not None
    (guard,) = [c for c in report.criteria if c.id == "PE-16"]
    assert not guard.passed and guard.detail.startswith("site-03 now sends 50% ViewPosition AP")
    assert {r.site_id for r in guard.coverage} == {"site-01", "site-03"}


def test_the_evidence_reports_embeddings_outside_the_locked_sets(
    views_only: GateContext,
) -> None:
    registry = views_only.registry
    assert isinstance(registry, FakeRegistry)
    torch.manual_seed(0)
    projection = fit_projection_on_images(registry.models["1"], torch.rand(40, 1, 64, 64), 4)
    registry.projections["1"] = projection
    far = ([1000.0] * projection.dimensions, projection.embedding_id(MODEL, "1"))
    sent(views_only.engine, "site-02", {"PA": 60}, embedding=far)
    sent(views_only.engine, "site-02", {"PA": 20}, embedding=([0.0] * 4, "other@9/pca4-x"))
    row = evaluate(views_only, from_site(views_only.engine, "site-02").candidate_id)

    report = report_of(row)
    assert report is not None and report.embedding_coverage is not None
    coverage = report.embedding_coverage
    assert (coverage.site_embeddings, coverage.outside, coverage.locked_cases) == (60, 60, 80)
    assert coverage.sites == ["site-02"] and coverage.embedding_id == far[1]
    assert b"Embedding coverage" in registry.evidence["2"]["gate-report.html"]
    del registry.projections["1"]  # without a projection the evidence says nothing of it
    registry.models["3"], registry.tags["3"] = model(2), in_plan()
    again = evaluate(views_only, proposed(views_only.engine, "3").candidate_id)
    without = report_of(again)
    assert without is not None and without.embedding_coverage is None
