"""The PCCP acceptance gate as a job: `radsentry pccp evaluate`, after retrains, and scheduled.

For one candidate:

1. Find the plan that governs its model (``pccp.catalog``) and record it in the change log if it
   is new or changed (``plan.loaded`` / ``plan.changed``).
2. Load the locked test set's manifest and refuse to go on unless its SHA-256 is the plan's;
   read the locked cases (``pccp.locked_cases``: exactly the manifest's studies).
3. Score every locked study with the candidate and with the current champion (the registry's
   ``champion`` alias), each at its own input size and operating threshold.
4. Check the scope guard (the fixed elements, and the candidate's threshold against the plan's
   threshold policy by its recorded provenance, tag ``radsentry.threshold_provenance``) and
   every criterion (``pccp.gate.build_report``); a ``content_coverage`` criterion compares the
   candidate's site's recent inference events with the locked cases' metadata
   (``monitor.service.pccp.content``); with it, the evidence reports how many of the site's
   recent embeddings lie outside the locked set's (``pccp.embedding_coverage``: the locked
   studies embedded with the champion's projection, the one the site's v2 events carry).
5. Attach the evidence (report JSON and HTML) to the candidate's MLflow version, tag the version
   with the outcome, and store outcome and report on the candidate with a ``gate.result``
   change-log entry (``candidates_store.record_gate``).

A gate that cannot run (no plan, a tampered manifest, MLflow down) raises :class:`GateRefused`
or the underlying error and leaves the candidate in ``candidate``: nothing is recorded as
passed or failed on evidence that was never computed. The scheduler's ``pccp-gate`` job tries
unevaluated candidates again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import structlog
from sqlalchemy import Engine

from monitor.service.audit import store as change_log
from monitor.service.errors import ServiceError
from monitor.service.logging import job_boundary
from monitor.service.models import CandidateRow
from monitor.service.pccp import store as candidates_store
from monitor.service.pccp.content import content_facts, recent_embeddings
from monitor.service.settings import Settings
from pccp.catalog import PlanFile, plan_for
from pccp.embedding_coverage import embedding_coverage
from pccp.evidence import report_html, report_json
from pccp.gate import (
    GateCases,
    GateReport,
    ModelScores,
    ThresholdFacts,
    build_report,
    scope_violations,
)
from pccp.locked_cases import LockedCase, read_locked_cases
from pccp.plan import ContentCoverageCriterion, Plan, locked_test_set_path
from pccp.report import EmbeddingCoverage
from pccp.threshold import ThresholdProvenance
from retrain.data import tensors_for
from retrain.dataset import LockedTestSet
from retrain.embedding import EmbeddingError, Projection, embed
from retrain.mlflow_names import (
    CHAMPION,
    DATASET_TAG,
    INTENDED_USE_TAG,
    OUTCOME_TAG,
    PLAN_VERSION_TAG,
    THRESHOLD_PROVENANCE_TAG,
)
from retrain.model import TrainedModel, predict
from retrain.tracking import RegisteredVersion, TrackingError

log = structlog.get_logger(__name__)

GATE_ACTOR: Final = "pccp-gate"


class GateRefused(ServiceError, RuntimeError):
    """The gate will not evaluate: no plan, or a locked test set that is not the plan's."""


class GateRegistry(Protocol):
    """What the gate needs of the registry (``retrain.tracking.Registry``)."""

    def version_by_alias(self, model_name: str, alias: str) -> RegisteredVersion | None: ...

    def version(self, model_name: str, version: str) -> RegisteredVersion: ...

    def load_model(self, model_name: str, version: str) -> TrainedModel: ...

    def load_projection(self, model_name: str, version: str) -> Projection: ...

    def attach_evidence(
        self, model_name: str, version: str, files: Mapping[str, bytes], tags: Mapping[str, str]
    ) -> str: ...


@dataclass(frozen=True)
class GateContext:
    engine: Engine
    registry: GateRegistry
    plans_dir: Path
    locked_cases_dir: Path
    image_workers: int = 4


def gate_context(engine: Engine, settings: Settings, registry: GateRegistry) -> GateContext:
    """The PCCP gate's context from the settings."""
    return GateContext(
        engine=engine,
        registry=registry,
        plans_dir=settings.plans_dir,
        locked_cases_dir=settings.locked_cases_dir,
        image_workers=settings.pccp.image_workers,
    )


def evaluate(context: GateContext, candidate_id: Any) -> CandidateRow:
    """Run the gate on one candidate and record its outcome (see the module docstring)."""
    row = candidates_store.get(context.engine, candidate_id)
    bound = log.bind(model=row.model_name, version=row.model_version)
    found = plan_for(context.plans_dir, row.model_name)
    if found is None:
        raise GateRefused(
            f"no PCCP plan in {context.plans_dir} governs {row.model_name!r}: "
            "its candidates cannot be evaluated or promoted"
        )
    plan = found.plan
    note_plan(context.engine, found)
    locked = locked_test_set(found)
    cases = read_locked_cases(context.locked_cases_dir / f"{plan.plan_id}.jsonl", locked)

    champion_version = context.registry.version_by_alias(row.model_name, CHAMPION)
    if champion_version is None:
        raise GateRefused(f"{row.model_name} has no champion to compare the candidate with")
    candidate_version = context.registry.version(row.model_name, row.model_version)
    candidate_model = context.registry.load_model(row.model_name, row.model_version)
    champion_model = context.registry.load_model(row.model_name, champion_version.version)

    bound.info("gate scoring the locked test set", cases=len(cases))
    finding = plan.description.fixed.findings[0]
    scores = _Scorer(cases, row.model_name, finding, context.image_workers)
    candidate_scores = scores.of(candidate_model, row.model_version)
    champion_scores = scores.of(champion_model, champion_version.version)
    provenance = ThresholdProvenance.from_tag(candidate_version.tags.get(THRESHOLD_PROVENANCE_TAG))
    report = build_report(
        plan,
        scores.cases(plan),
        candidate_scores,
        champion_scores,
        model_name=row.model_name,
        locked_test_sha256=locked.sha256,
        scope_violations=scope_violations(
            plan,
            candidate_model.spec,
            candidate_version.tags.get(INTENDED_USE_TAG),
            threshold=ThresholdFacts(
                candidate_threshold=candidate_scores.threshold,
                champion_threshold=champion_scores.threshold,
                champion_version=champion_version.version,
                provenance=provenance,
                training_manifest_sha256=candidate_version.tags.get(DATASET_TAG),
            ),
        ),
        threshold=provenance,
        content=content_facts(context.engine, plan, cases, row.site_id),
    )
    coverage = _embedding_coverage(
        context, plan, row, champion_version.version, champion_model, scores
    )
    report = report.model_copy(update={"embedding_coverage": coverage})
    evidence_uri = context.registry.attach_evidence(
        row.model_name,
        row.model_version,
        {"gate-report.json": report_json(report), "gate-report.html": report_html(report).encode()},
        {OUTCOME_TAG: report.outcome.value, PLAN_VERSION_TAG: plan.plan_version},
    )
    document = report.model_dump(mode="json") | {"evidence_uri": evidence_uri}
    result = candidates_store.record_gate(
        context.engine,
        row.candidate_id,
        outcome=report.outcome.value,
        report=document,
        plan_id=plan.plan_id,
        plan_version=plan.plan_version,
        plan_fingerprint=plan.fingerprint(),
        approvals_required=plan.protocol.update_procedures.approvals_required,
        champion_version=champion_version.version,
        actor=GATE_ACTOR,
    )
    bound.info("gate evaluated", outcome=result.status)
    return result


def _embedding_coverage(
    context: GateContext,
    plan: Plan,
    row: CandidateRow,
    champion_version: str,
    champion: TrainedModel,
    scores: _Scorer,
) -> EmbeddingCoverage | None:
    """The sites' recent embeddings against the locked set's, when the plan has a
    ``content_coverage`` criterion (its window), the champion a projection, and the sites
    embeddings of it; otherwise None, and the evidence says nothing about embeddings."""
    criterion = next(
        (
            c
            for c in plan.protocol.performance_evaluation
            if isinstance(c, ContentCoverageCriterion)
        ),
        None,
    )
    if criterion is None:
        return None
    bound = log.bind(model=row.model_name, version=champion_version)
    try:
        projection = context.registry.load_projection(row.model_name, champion_version)
    except TrackingError as exc:
        bound.info("no embedding coverage: the champion has no projection", reason=str(exc))
        return None
    embedding_id = projection.embedding_id(row.model_name, champion_version)
    sites, site = recent_embeddings(context.engine, plan, row.site_id, embedding_id, criterion)
    if not len(site):
        return None
    try:
        locked = embed(champion, projection, scores.images(champion.spec.input_size))
        return embedding_coverage(locked, site, embedding_id=embedding_id, sites=sites)
    except (EmbeddingError, ValueError) as exc:
        bound.warning("no embedding coverage", reason=str(exc))
        return None


def evaluate_pending(context: GateContext, limit: int = 10) -> list[CandidateRow]:
    """Evaluate candidates the gate has not seen; one that fails stays for the next call."""
    done = []
    for row in candidates_store.pending(context.engine, limit):
        try:
            done.append(evaluate(context, row.candidate_id))
        except Exception:  # boundary: one candidate's failure must not stop the others
            log.exception("gate failed; the candidate stays unevaluated", version=row.model_version)
    return done


def locked_test_set(found: PlanFile) -> LockedTestSet:
    """The plan's locked test set, refused unless its hash is the one the plan fixes."""
    locked = LockedTestSet.load(locked_test_set_path(found.plan, found.path))
    expected = found.plan.protocol.data_management.locked_test_set.sha256
    if locked.sha256 != expected:
        raise GateRefused(
            f"the locked test set's SHA-256 {locked.sha256[:12]} is not the plan's "
            f"{expected[:12]}: the gate refuses to evaluate on another set"
        )
    return locked


def note_plan(engine: Engine, found: PlanFile) -> None:
    """Record ``plan.loaded`` the first time a plan is used, ``plan.changed`` when it differs
    from the last recorded version (same plan id, another fingerprint)."""
    plan = found.plan
    fingerprint = plan.fingerprint()
    with engine.begin() as connection:
        # Under the log's lock: two gates starting together record a change once.
        last = change_log.latest_details(
            connection, ("plan.loaded", "plan.changed"), f"plan/{plan.plan_id}"
        )
        if last is not None and last.get("fingerprint") == fingerprint:
            return
        change_log.append(
            connection,
            change_log.Entry(
                actor=GATE_ACTOR,
                action="plan.loaded" if last is None else "plan.changed",
                subject=f"plan/{plan.plan_id}",
                plan_version=plan.plan_version,
                details={
                    "fingerprint": fingerprint,
                    "previous_fingerprint": None if last is None else last["fingerprint"],
                    "file": found.path.name,
                    "model_name": plan.description.model_name,
                    "locked_test_sha256": plan.protocol.data_management.locked_test_set.sha256,
                },
            ),
        )


class _Scorer:
    """Scores of the locked cases, images read once per input size."""

    def __init__(
        self, cases: list[LockedCase], model_name: str, finding: str, workers: int
    ) -> None:
        at = datetime.now(UTC)
        self._cases = cases
        self._labelled = [case.as_labelled(model_name, at) for case in cases]
        self._finding = finding
        self._workers = workers
        self._images: dict[int, Any] = {}

    def cases(self, plan: Plan) -> GateCases:
        fields = {"site"} | {
            by for c in plan.protocol.performance_evaluation if (by := getattr(c, "by", None))
        }
        return GateCases(
            study_keys=tuple(case.study_key for case in self._cases),
            positive=np.array([case.labels[self._finding] == 1 for case in self._cases]),
            groups={
                field: np.array([case.subgroup(field) for case in self._cases])
                for field in sorted(fields)
            },
        )

    def images(self, size: int) -> Any:
        """The locked images at ``size`` px, read once."""
        if size not in self._images:
            self._images[size] = tensors_for(
                self._labelled, (self._finding,), size, workers=self._workers
            ).images
        return self._images[size]

    def of(self, model: TrainedModel, version: str) -> ModelScores:
        spec = model.spec
        if self._finding not in spec.findings:
            raise GateRefused(f"version {version} does not output {self._finding!r}")
        column = spec.findings.index(self._finding)
        scores = predict(model, self.images(spec.input_size))[:, column]
        return ModelScores(
            version=version,
            scores=np.asarray(scores, dtype=np.float64),
            threshold=float(model.thresholds[column]),
        )


def report_of(row: CandidateRow) -> GateReport | None:
    """The candidate's stored evidence as a report, or None before the gate ran."""
    if row.report is None:
        return None
    document = {k: v for k, v in row.report.items() if k != "evidence_uri"}
    return GateReport.model_validate(document)


@job_boundary("PCCP gate job failed")
def evaluate_candidates(engine: Engine, settings: Settings) -> None:
    """The scheduled job: the gate on candidates it has not evaluated (a retrain's gate that
    could not run, or a candidate proposed by hand). When the database or the plans folder is
    unreadable, the next run tries again."""
    from monitor.service.registry import registry_for

    evaluated = evaluate_pending(gate_context(engine, settings, registry_for(settings)))
    if evaluated:
        log.info("candidates evaluated", count=len(evaluated))
