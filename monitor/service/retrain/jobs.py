"""The retraining job: turn a pending retrain request into a ``challenger`` version.

For one request, each stage recorded in the request's ``progress`` (which is also the job's
heartbeat):

1. **claim**: a pending request, or a running one whose lease expired because the job that held
   it died, becomes running (``retrain_store.claim_next``);
2. **cases** (``cases.load_cases``, beside this module): the labels in force (not expired) joined
   to the model's inference events, one :class:`~retrain.dataset.LabelledCase` per study, and,
   with ``rehearsal_cases`` configured, the cases of that file that are not among them (the
   champion's development data, so the candidate does not forget what it read well);
3. **champion**: the registry's ``champion`` version fixes the model family (the candidate keeps
   its spec; training may change weights and threshold only) and, by default, the start weights;
4. **dataset**: ``retrain.data.load_dataset`` (shared with ``train-initial``) keeps the PCCP
   locked test set out (an overlap fails the job before any image is read), reads each image
   once, on ``image_workers`` threads, through the edge's pixel pipeline, for both its content
   hash and its training tensor, and splits by study; the manifest is written beside the
   checkpoints and its hash recorded. A request whose data set, champion, training settings
   and plan are those an earlier request already trained a version on (:func:`training_key`)
   fails here: seeded training would give the same model again, under a new version number,
   and show the locked test set the same candidate a second time;
5. **training**: seeded, early-stopped, calibrated; checkpoints under ``work_dir/<request>/``, so
   a job that dies resumes where it stopped on its next attempt;
6. **evaluation** (``retrain.compare``): champion and candidate on the validation side, overall
   and per site;
7. **threshold**: the governing PCCP plan's threshold policy (``pccp.threshold``) sets the
   candidate's operating threshold from the validation side (the tuning split; never the locked
   test set), or keeps the champion's; with no plan, the trainer's own choice stands. A plan
   that measures the champion's sensitivity on the cases it never saw (``target_cases:
   unseen_by_champion``) gets the training manifests of the champion and of the versions it
   was retrained from (:func:`champion_lineage_manifests`). The threshold's provenance is
   recorded on the version (``radsentry.threshold_provenance``) for the gate's scope guard
   and the evidence;
8. **registration**: one MLflow run and one model version with alias ``challenger``, tagged with
   the request and alert (idempotent per request: a retried job never registers twice).

Nothing here moves ``champion``: only the PCCP promotion can change which model serves.

A stop (``JobContext.should_stop``, the demo's Ctrl-C) ends training between two batches: the
request goes back to pending with the attempt not counted and ``progress.stopped`` saying where
it stopped, nothing is registered, and :class:`~retrain.train.TrainingStopped` reaches the
caller; the next attempt resumes from the checkpoint of the last finished epoch. A stop that
comes once training has finished lets the job finish (scoring and registering take seconds),
so a request is never left with a half-registered version.

Failures: a request that cannot succeed as it stands (no champion, too few cases, locked-test
overlap, the training an earlier request already did, too few positive tuning cases for the
plan's threshold rule, a champion without its training manifest where the rule needs it)
fails at once; anything
else (MLflow down after its retries, an image unreachable) puts the request back to pending for
another attempt, up to ``max_attempts``. A failed request raises an alert (detector
``retrain.failed``) through the alerts outbox, is logged at error level and counted in
``radsentry_retrain_jobs_total{outcome="failed"}``.

The scheduled jobs at the bottom (the retrain-trigger scan and the serving of requests) are
boundaries: a failure is logged and the next run tries again.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine

from monitor.drift.alerts import Alert, StreamKey
from monitor.service.audit import store as change_log
from monitor.service.db import as_utc
from monitor.service.drift import alerts as alerts_store
from monitor.service.errors import ServiceError
from monitor.service.logging import job_boundary
from monitor.service.metrics import RETRAIN_JOB_SECONDS, RETRAIN_JOBS
from monitor.service.models import RetrainRequestRow, clip_reason
from monitor.service.pccp import jobs as gate_job
from monitor.service.pccp import store as candidates_store
from monitor.service.pccp.jobs import GateContext
from monitor.service.registry import registry_for
from monitor.service.retrain import store as retrain_store
from monitor.service.retrain.cases import Cases, load_cases
from monitor.service.settings import RetrainSettings, Settings
from pccp.catalog import PlanFile, plan_for
from pccp.plan import TargetCases, ThresholdPolicy, ThresholdRule
from pccp.threshold import (
    ThresholdError,
    ThresholdProvenance,
    TuningSplit,
    seen_by_champion,
    select_threshold,
)
from retrain.compare import Comparison, compare
from retrain.config import JobConfig
from retrain.data import TrainingData, load_dataset
from retrain.dataset import (
    DatasetError,
    DatasetManifest,
    LabelledCase,
    LockedTestSet,
    ManifestCase,
    Side,
    read_cases,
)
from retrain.images import DicomWebClientSource, DicomWebSource
from retrain.mlflow_names import (
    ALERT_TAG,
    CHALLENGER,
    CHAMPION,
    CHAMPION_VERSION_TAG,
    INTENDED_USE_TAG,
    REQUEST_TAG,
    REQUESTED_BY_TAG,
    SITE_TAG,
    THRESHOLD_PROVENANCE_TAG,
    THRESHOLD_TAG,
    TRIGGER_TAG,
)
from retrain.model import TrainedModel, predict
from retrain.tracking import RegisteredVersion, RunRecord
from retrain.train import EpochMetrics, TrainingStopped, TrainResult, train

log = structlog.get_logger(__name__)


class ModelRegistry(Protocol):
    """What the job needs of the registry (``retrain.tracking.Registry`` in production)."""

    def version_by_alias(self, model_name: str, alias: str) -> RegisteredVersion | None: ...

    def load_model(self, model_name: str, version: str) -> TrainedModel: ...

    def version(self, model_name: str, version: str) -> RegisteredVersion: ...

    def training_manifest(self, model_name: str, version: str) -> DatasetManifest | None: ...

    def log_and_register(self, record: RunRecord, *, alias: str = ...) -> RegisteredVersion: ...


class JobFailed(ServiceError):
    """The request cannot succeed as it stands: retrying would fail the same way."""


@dataclass(frozen=True)
class JobContext:
    """What the job works with; built from the settings by :func:`serve_retrain_requests`."""

    engine: Engine
    registry: ModelRegistry
    config: JobConfig
    work_dir: Path
    dicomweb: DicomWebSource | None = None
    lease: timedelta = timedelta(minutes=30)
    progress_bar: bool = False
    gate: GateContext | None = None
    """Where the PCCP gate finds plans and locked cases; None: candidates wait for the
    scheduler's ``pccp-gate`` job or `radsentry pccp evaluate`."""
    plans_dir: Path | None = None
    """Where the governing plan (locked test set, threshold policy) is found; None: the gate's
    ``plans_dir`` if there is a gate, else no plan governs."""
    should_stop: Callable[[], bool] | None = None
    """Asked between training batches and before each claim: True stops the job, which puts
    its request back (module docstring) and raises ``TrainingStopped``."""


def serve_pending(context: JobContext, limit: int | None = None) -> list[RetrainRequestRow]:
    """Serve requests one at a time until none is claimable (or ``limit`` were served). Each
    request is tried at most once per call: one put back for a retry waits for the next call
    (the scheduler's ``retrain.jobs_s``), a pause for whatever failed to recover.

    ``TrainingStopped`` when ``context.should_stop`` stopped a request's training (the request
    is back to pending, see the module docstring); no request is claimed once it answers True."""
    served: list[RetrainRequestRow] = []
    stopping = context.should_stop or (lambda: False)
    while (limit is None or len(served) < limit) and not stopping():
        row = retrain_store.claim_next(
            context.engine,
            lease=context.lease,
            max_attempts=context.config.max_attempts,
            exclude=[r.request_id for r in served],
        )
        if row is None:
            break
        if row.status == "failed":  # out of attempts: claim_next failed it
            _failed(context, row, row.error or "out of attempts")
            served.append(row)
            continue
        served.append(run_request(context, row))
    return served


def run_request(context: JobContext, row: RetrainRequestRow) -> RetrainRequestRow:
    """One attempt at one claimed request; the request as it stands afterwards."""
    started = time.perf_counter()
    bound = log.bind(request_id=str(row.request_id), model_name=row.model_name)
    bound.info("retrain job started", attempt=row.attempts)
    try:
        columns = _train_candidate(context, row)
    except TrainingStopped as stopped:
        _put_back_stopped(context, row, stopped)
        RETRAIN_JOBS.labels(outcome="stopped").inc()
        raise
    except (JobFailed, DatasetError) as exc:
        outcome, result = "failed", _failed(context, row, str(exc))
    except Exception as exc:
        # Boundary: whatever went wrong, the request must end in a known state.
        reason = clip_reason(f"{type(exc).__name__}: {exc}")
        if row.attempts >= context.config.max_attempts:
            outcome, result = "failed", _failed(context, row, reason)
        else:
            bound.exception("retrain attempt failed; the request will be retried")
            outcome = "retried"
            result = retrain_store.finish(context.engine, row.request_id, "pending", error=reason)
    else:
        outcome = "succeeded"
        entry = change_log.Entry(
            actor="retrain-job",
            action="training.run",
            subject=f"{row.model_name}/version/{columns['model_version']}",
            details={"request_id": str(row.request_id), **columns},
            reason=clip_reason(f"retrain request by {row.requested_by}: {row.reason}"),
        )
        # Proposed before the request is finished: a crash between the two re-runs the
        # request, whose registration and proposal are both idempotent.
        candidate = candidates_store.propose(
            context.engine,
            model_name=row.model_name,
            model_version=columns["model_version"],
            proposed_by="retrain-job",
            triggered_by=row.requested_by,
            request_id=row.request_id,
            site_id=row.site_id,
            reason=f"trained for retrain request {row.request_id}",
        )
        result = retrain_store.finish(
            context.engine, row.request_id, "succeeded", log_entry=entry, **columns
        )
        bound.info("challenger registered", model_version=result.model_version)
        if context.gate is not None:
            _run_gate(context.gate, candidate.candidate_id)
    RETRAIN_JOBS.labels(outcome=outcome).inc()
    RETRAIN_JOB_SECONDS.labels(outcome=outcome).observe(time.perf_counter() - started)
    return result


def _put_back_stopped(
    context: JobContext, row: RetrainRequestRow, stopped: TrainingStopped
) -> None:
    """A stopped attempt is no failed one: back to pending, its attempt not counted, and
    ``progress.stopped`` saying where (the checkpoint it resumes from is in ``work_dir``)."""
    where = (
        f"stopped after {stopped.epochs_done} of at most {stopped.max_epochs} epochs "
        f"({datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}); the next attempt resumes from there"
    )
    retrain_store.record_progress(context.engine, row.request_id, stage="stopped", stopped=where)
    retrain_store.finish(context.engine, row.request_id, "pending", attempts=row.attempts - 1)
    log.info("retrain job stopped; request back to pending", request_id=str(row.request_id))


def _run_gate(gate: GateContext, candidate_id: uuid.UUID) -> None:
    """The gate right after training; if it cannot run, the candidate waits for a retry."""
    try:
        gate_job.evaluate(gate, candidate_id)
    except Exception:  # boundary: the training succeeded whatever the gate does
        log.exception("gate did not run; the scheduler will try again", candidate=str(candidate_id))


def _train_candidate(context: JobContext, row: RetrainRequestRow) -> dict[str, Any]:
    """Stages 2-7; the request's columns to set on success."""
    config = context.config
    progress = _progress(context.engine, row.request_id)
    champion_version, champion = _champion(context, row.model_name)
    spec = champion.spec
    plan = _governing_plan(context, row.model_name)  # read once: every stage applies the same

    progress(stage="cases", champion_version=champion_version.version)
    found = _usable_cases(context, row.model_name, spec.findings)
    cases = _with_rehearsal(config, row.model_name, found.cases)
    progress(
        stage="images",
        cases=len(found.cases),
        rehearsal_cases=len(cases) - len(found.cases),
        incomplete_labels=found.incomplete,
    )

    data = load_dataset(
        cases,
        _locked_test_set(context, plan),
        spec.findings,
        spec.input_size,
        seed=config.split_seed,
        validation_share=config.validation_share,
        workers=config.image_workers,
        dicomweb=context.dicomweb,
    )
    folder = context.work_dir / str(row.request_id)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_sha256 = data.dataset.manifest.write(folder / "manifest.json")
    key = training_key(config, manifest_sha256, champion_version.version, plan)
    _refuse_repeat(context, row, key, manifest_sha256, len(data.dataset.manifest.cases))
    progress(
        stage="training",
        training_key=key,
        manifest_sha256=manifest_sha256,
        train_cases=len(data.dataset.split.train),
        validation_cases=len(data.dataset.split.validation),
        epoch=0,
        max_epochs=config.train.max_epochs,
    )
    result, tuning = _train_and_compare(context, champion, data, folder, progress)
    comparison = compare(
        champion.spec.findings[0],
        tuning.positive.astype(float),
        tuning.champion_scores,
        tuning.candidate_scores,
        [case.site_id for case in data.dataset.split.validation],
    )
    tuning_cases = [
        case for case in data.dataset.manifest.cases if case.side is Side.VALIDATION
    ]  # sorted by study key, as the validation side's rows
    threshold = _select_threshold(
        context,
        row.model_name,
        plan,
        champion_version,
        champion,
        replace(tuning, training_manifest_sha256=manifest_sha256),
        tuning_cases,
    )
    first, *others = result.model.thresholds
    result = replace(result, model=replace(result.model, thresholds=(threshold.threshold, *others)))
    progress(
        stage="registering",
        comparison=comparison.as_json(),
        threshold=threshold.model_dump(mode="json") | {"trainer_threshold": first},
    )
    version = context.registry.log_and_register(
        _record(
            context, row, result, data.dataset.manifest, champion_version, threshold, comparison
        ),
        alias=CHALLENGER,
    )
    progress(stage="done")
    return {
        "manifest_sha256": manifest_sha256,
        "mlflow_run_id": version.run_id,
        "model_version": version.version,
    }


def training_key(
    config: JobConfig, manifest_sha256: str, champion_version: str, plan: PlanFile | None
) -> str:
    """SHA-256 of what decides the candidate a training produces: the data set (its manifest
    holds the cases, their labels, the split's seed and the locked set's hash), the champion it
    starts from and is compared with, the training settings, the governing plan's version
    (its threshold policy) and this release. Training is seeded, so two trainings with one key
    give the same candidate (on one machine's arithmetic)."""
    facts = {
        "manifest_sha256": manifest_sha256,
        "champion_version": champion_version,
        "train": config.train.fingerprint(),
        "warm_start": config.warm_start,
        "plan": None if plan is None else [plan.plan.plan_id, plan.plan.plan_version],
        "release": package_version("radsentry"),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _refuse_repeat(
    context: JobContext, row: RetrainRequestRow, key: str, manifest_sha256: str, cases: int
) -> None:
    """Fail the request (before any training) when an earlier request already trained a
    version with the same :func:`training_key`: training again would register the same model
    under a new number and show the PCCP gate's locked test set the same candidate again."""
    for earlier in retrain_store.trained_on(context.engine, row.model_name, manifest_sha256):
        if (
            earlier.request_id == row.request_id
            or (earlier.progress or {}).get("training_key") != key
        ):
            continue
        try:
            gate = candidates_store.find(
                context.engine, row.model_name, str(earlier.model_version)
            ).status
        except candidates_store.CandidateNotFound:
            gate = "not proposed"
        raise JobFailed(
            f"nothing to train: the {cases} labelled cases (training manifest "
            f"{manifest_sha256[:12]}), the champion and the training settings are those "
            f"request {earlier.request_id} trained {row.model_name} version "
            f"{earlier.model_version} on (its gate status: {gate}); training is seeded, so it "
            "would give the same model again. Retrain once new labels have arrived, or after "
            "the training settings or the plan have changed"
        )


def _champion(context: JobContext, model_name: str) -> tuple[RegisteredVersion, TrainedModel]:
    """The registry's ``champion`` version and its model; JobFailed when there is none."""
    champion_version = context.registry.version_by_alias(model_name, CHAMPION)
    if champion_version is None:
        raise JobFailed(
            f"model {model_name!r} has no {CHAMPION!r} version in the registry "
            "(register one first, e.g. `radsentry train-initial`)"
        )
    return champion_version, context.registry.load_model(model_name, champion_version.version)


def _usable_cases(context: JobContext, model_name: str, findings: Sequence[str]) -> Cases:
    """The model's labelled cases; JobFailed when too few have an image to train on."""
    found = load_cases(context.engine, model_name, findings)
    usable = [case for case in found.cases if case.dicom_uri is not None]
    if len(usable) < context.config.min_cases:
        raise JobFailed(
            f"{len(usable)} labelled studies with an image; the job needs at least "
            f"{context.config.min_cases} (retrain.job.min_cases)"
        )
    return found


def _with_rehearsal(
    config: JobConfig, model_name: str, cases: Sequence[LabelledCase]
) -> list[LabelledCase]:
    """The new labelled cases and, with ``rehearsal_cases`` configured, the rehearsal cases
    that are not among them (a study labelled again counts once, with its new label).
    JobFailed when the rehearsal file is unreadable or holds another model's cases."""
    if config.rehearsal_cases is None:
        return list(cases)
    try:
        rehearsal = read_cases(config.rehearsal_cases)
    except DatasetError as exc:
        raise JobFailed(f"rehearsal cases (retrain.job.rehearsal_cases): {exc}") from exc
    if others := {case.model_name for case in rehearsal} - {model_name}:
        raise JobFailed(
            f"rehearsal cases {config.rehearsal_cases} are for {sorted(others)}, not {model_name}"
        )
    new = {case.study_key for case in cases}
    return [*cases, *(case for case in rehearsal if case.study_key not in new)]


def _train_and_compare(
    context: JobContext,
    champion: TrainedModel,
    data: TrainingData,
    folder: Path,
    progress: Callable[..., None],
) -> tuple[TrainResult, TuningSplit]:
    """Train the candidate (checkpoints in ``folder``), then score the validation side (the
    tuning split) with it and with the champion (first finding)."""
    config = context.config
    train_x, train_y = data.train_side()
    val_x, val_y = data.validation_side()

    def on_epoch(metrics: EpochMetrics) -> None:
        progress(epoch=metrics.epoch, val_loss=round(metrics.val_loss, 6))

    result = train(
        champion.spec,
        config.train,
        (train_x, train_y),
        (val_x, val_y),
        checkpoint_dir=folder,
        progress=context.progress_bar,
        init_state=champion.state_dict if config.warm_start else None,
        resume=True,
        on_epoch_end=on_epoch,
        should_stop=context.should_stop,
    )
    tuning = TuningSplit(
        positive=val_y[:, 0].numpy() > 0.5,
        candidate_scores=predict(result.model, val_x)[:, 0].astype(float),
        champion_scores=predict(champion, val_x)[:, 0].astype(float),
        training_manifest_sha256="",  # set by the caller, who wrote the manifest
    )
    return result, tuning


def _governing_plan(context: JobContext, model_name: str) -> PlanFile | None:
    plans_dir = context.plans_dir or (context.gate.plans_dir if context.gate else None)
    return None if plans_dir is None else plan_for(plans_dir, model_name)


def _select_threshold(
    context: JobContext,
    model_name: str,
    found: PlanFile | None,
    champion_version: RegisteredVersion,
    champion: TrainedModel,
    tuning: TuningSplit,
    tuning_cases: Sequence[ManifestCase],
) -> ThresholdProvenance:
    """The governing plan's threshold policy on the tuning split; with no plan, the trainer's
    (``retrain.train``'s sensitivity or Youden rule, recorded as such). A policy that measures
    the champion's sensitivity on the cases it never saw gets the champion's lineage's
    training manifests (:func:`champion_lineage_manifests`)."""
    if found is not None:
        policy = found.plan.protocol.threshold_policy
        if (
            policy.rule is ThresholdRule.HOLD_CHAMPION_SENSITIVITY
            and policy.target_cases is TargetCases.UNSEEN_BY_CHAMPION
        ):
            manifests = champion_lineage_manifests(context.registry, model_name, champion_version)
            if manifests is not None:
                tuning = replace(
                    tuning,
                    champion_seen=seen_by_champion(tuning_cases, manifests),
                    champion_trained=seen_by_champion(
                        tuning_cases, manifests, frozenset({Side.TRAIN})
                    ),
                    champion_manifests=tuple(m.sha256() for m in manifests),
                )
    else:
        policy = ThresholdPolicy(
            rule=ThresholdRule.TARGET_SENSITIVITY,
            target_sensitivity=context.config.train.target_sensitivity,
            min_tuning_positives=1,
            description="no plan governs the model: the trainer's target sensitivity",
        )
    try:
        return select_threshold(
            policy,
            tuning,
            champion_version=champion_version.version,
            champion_threshold=float(champion.thresholds[0]),
            plan=None if found is None else found.plan,
        )
    except ThresholdError as exc:
        raise JobFailed(str(exc)) from exc


def champion_lineage_manifests(
    registry: ModelRegistry, model_name: str, champion: RegisteredVersion
) -> list[DatasetManifest] | None:
    """The training manifests of the champion and of every version it was retrained from
    (its ``radsentry.champion_version`` tags, followed back): a warm-started model carries
    what its ancestors were trained on. None when one of them logged no manifest."""
    manifests: list[DatasetManifest] = []
    version: RegisteredVersion | None = champion
    seen: set[str] = set()
    while version is not None and version.version not in seen:
        seen.add(version.version)
        manifest = registry.training_manifest(model_name, version.version)
        if manifest is None:
            log.warning(
                "a version of the champion's lineage has no training manifest",
                model_name=model_name,
                version=version.version,
            )
            return None
        manifests.append(manifest)
        parent = version.tags.get(CHAMPION_VERSION_TAG)
        version = None if parent is None else registry.version(model_name, parent)
    return manifests


def _record(
    context: JobContext,
    row: RetrainRequestRow,
    result: TrainResult,
    manifest: Any,
    champion: RegisteredVersion,
    threshold: ThresholdProvenance,
    comparison: Comparison,
) -> RunRecord:
    tags = {
        REQUEST_TAG: str(row.request_id),
        TRIGGER_TAG: row.trigger,
        REQUESTED_BY_TAG: row.requested_by,
        CHAMPION_VERSION_TAG: champion.version,
        THRESHOLD_TAG: f"{threshold.threshold:.17g}",
        THRESHOLD_PROVENANCE_TAG: threshold.to_tag(),
    }
    # Retraining keeps the champion's intended use (the PCCP scope guard checks it).
    if intended_use := champion.tags.get(INTENDED_USE_TAG):
        tags[INTENDED_USE_TAG] = intended_use
    if row.alert_id is not None:
        tags[ALERT_TAG] = str(row.alert_id)
    if row.site_id is not None:
        tags[SITE_TAG] = row.site_id
    return RunRecord(
        model_name=row.model_name,
        result=result,
        train_config=context.config.train,
        manifest=manifest,
        tags=tags,
        params={
            "job.fingerprint": context.config.fingerprint(),
            "job.warm_start": "champion" if context.config.warm_start else "none",
        },
        metrics=_comparison_metrics(comparison),
    )


def _comparison_metrics(comparison: Comparison) -> dict[str, float]:
    """``compare.<scope>.<model>_auroc`` for each scope where the AUROC exists."""
    metrics: dict[str, float] = {}
    for scope, group in comparison.scopes():
        aurocs = {"champion": group.champion_auroc, "candidate": group.candidate_auroc}
        for name, value in aurocs.items():
            if value is not None:
                metrics[f"compare.{scope}.{name}_auroc"] = value
    return metrics


def _locked_test_set(context: JobContext, found: PlanFile | None) -> LockedTestSet:
    """The governing plan's locked test set, else the configured one, else an empty one."""
    if found is not None:
        return gate_job.locked_test_set(found)
    config = context.config
    if config.locked_test_set is None:
        return LockedTestSet.from_keys([])
    return LockedTestSet.load(config.locked_test_set)


def _progress(engine: Engine, request_id: uuid.UUID) -> Callable[..., None]:
    def record(**values: Any) -> None:
        retrain_store.record_progress(engine, request_id, **values)

    return record


def _failed(context: JobContext, row: RetrainRequestRow, reason: str) -> RetrainRequestRow:
    """Fail the request, raise its alert and log it: a failed job must be seen."""
    log.error(
        "retrain job failed",
        request_id=str(row.request_id),
        model_name=row.model_name,
        attempts=row.attempts,
        reason=reason,
    )
    entry = change_log.Entry(
        actor="retrain-job",
        action="retrain.failed",
        subject=f"{row.model_name}/request/{row.request_id}",
        details={"request_id": str(row.request_id), "attempts": row.attempts},
        reason=clip_reason(reason),
    )
    result = retrain_store.finish(
        context.engine, row.request_id, "failed", error=reason, log_entry=entry
    )
    raise_failure_alert(context.engine, result, context.config.fingerprint())
    return result


def raise_failure_alert(engine: Engine, row: RetrainRequestRow, fingerprint: str) -> uuid.UUID:
    """An alert (detector ``retrain.failed``) for a failed request, stored by the alert store
    and published by its outbox like every alert. Its id derives from the request, so a repeat
    adds nothing; it never counts as drift, so it cannot itself trigger retraining."""
    now = datetime.now(UTC)
    since = as_utc(row.started_at or row.created_at)
    alert = Alert(
        alert_id=uuid.uuid5(row.request_id, "retrain.failed"),
        key=StreamKey(row.site_id or "*", row.model_name, row.model_version or "-"),
        detector="retrain.failed",
        features=(),
        occurred_at=now,
        since=since,
        window_start=since,
        window_end=now,
        statistic=float(row.attempts),
        p_value=None,
        effect_size=0.0,
        effect_size_name="attempts",
        explanation=f"retrain request {row.request_id} failed: {row.error}"[:4000],
        config_fingerprint=fingerprint,
        reference_id=row.request_id,
    )
    alerts_store.raise_alert(engine, alert, now=now)
    return alert.alert_id


# --- scheduled jobs -------------------------------------------------------------------------
# The entry points that the scheduler stores by reference are in ``monitor/service/jobs.py``.


@job_boundary("retrain scan failed")
def consider_retraining(engine: Engine, settings: RetrainSettings) -> None:
    """Turn active alerts into retrain requests where the retraining policy says so."""
    created = retrain_store.consider_alerts(engine, settings.policy)
    if created:
        log.info("retrain requests created", count=len(created))


def job_context(
    engine: Engine,
    settings: Settings,
    *,
    dicomweb: DicomWebSource | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> JobContext:
    """The job's context from the settings: the configured registry, work dir, lease, the
    gate's plans and locked cases (used by the scheduled job and by the demo's)."""
    registry = registry_for(settings)
    return JobContext(
        engine=engine,
        registry=registry,
        config=settings.retrain.job,
        work_dir=(settings.data_dir / "retrain").resolve(),
        dicomweb=dicomweb,
        lease=timedelta(seconds=settings.retrain.lease_s),
        gate=gate_job.gate_context(engine, settings, registry),
        plans_dir=settings.plans_dir,
        should_stop=should_stop,
    )


def serve_retrain_requests(engine: Engine, settings: Settings) -> None:
    """Serve pending retrain requests (:func:`serve_pending`) with the configured registry;
    each request ends succeeded, failed or back to pending, whatever happens."""
    _serve_scheduled(job_context(engine, settings, dicomweb=DicomWebClientSource()))


@job_boundary("retrain job failed to claim requests")
def _serve_scheduled(context: JobContext) -> None:
    # Each request is its own boundary (run_request): what fails here is claiming requests
    # (the database down), and the next run retries.
    served = serve_pending(context)
    if served:
        log.info("retrain requests served", count=len(served))
