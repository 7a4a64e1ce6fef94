"""The retraining job (issue 6): turn a pending retrain request into a ``challenger`` version.

For one request, each stage recorded in the request's ``progress`` (which is also the job's
heartbeat):

1. **claim**: a pending request, or a running one whose lease expired because the job that held
   it died, becomes running (``retrain_store.claim_next``);
2. **cases**: the labels in force (not expired) joined to the model's inference events, one
   :class:`~retrain.dataset.LabelledCase` per study;
3. **champion**: the registry's ``champion`` version fixes the model family (the candidate keeps
   its spec; training may change weights and threshold only) and, by default, the start weights;
4. **dataset**: ``retrain.data.load_dataset`` (shared with ``train-initial``) keeps the PCCP
   locked test set out (an overlap fails the job before any image is read), reads each image
   once, on ``image_workers`` threads, through the edge's pixel pipeline, for both its content
   hash and its training tensor, and splits by study; the manifest is written beside the
   checkpoints and its hash recorded;
5. **training**: seeded, early-stopped, calibrated; checkpoints under ``work_dir/<request>/``, so
   a job that dies resumes where it stopped on its next attempt;
6. **evaluation**: champion and candidate on the validation side, overall and per site;
7. **registration**: one MLflow run and one model version with alias ``challenger``, tagged with
   the request and alert (idempotent per request: a retried job never registers twice).

Nothing here moves ``champion``: only the PCCP promotion can change which model serves.

Failures: a request that cannot succeed as it stands (no champion, too few cases, locked-test
overlap) fails at once; anything else (MLflow down after its retries, an image unreachable) puts
the request back to pending for another attempt, up to ``max_attempts``. A failed request raises
an alert (detector ``retrain.failed``) through the alerts outbox, is logged at error level and
counted in ``radsentry_retrain_jobs_total{outcome="failed"}``.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog
import torch
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]
from sqlalchemy import Engine, select

from monitor.events import LabelSource
from monitor.service import candidates_store, change_log, gate_job, retrain_store
from monitor.service.db import as_utc
from monitor.service.gate_job import GateContext
from monitor.service.metrics import RETRAIN_JOB_SECONDS, RETRAIN_JOBS
from monitor.service.models import AlertRow, CurrentLabelRow, InferenceEventRow, RetrainRequestRow
from monitor.service.store import insert_for, table_of
from pccp.catalog import plan_for
from retrain.config import JobConfig
from retrain.data import load_dataset
from retrain.dataset import (
    DatasetError,
    LabelledCase,
    LockedTestSet,
)
from retrain.images import DicomWebSource
from retrain.model import TrainedModel, predict
from retrain.tracking import CHALLENGER, CHAMPION, RegisteredVersion, RunRecord
from retrain.train import EpochMetrics, TrainResult, train

log = structlog.get_logger(__name__)


class ModelRegistry(Protocol):
    """What the job needs of the registry (``retrain.tracking.Registry`` in production)."""

    def version_by_alias(self, model_name: str, alias: str) -> RegisteredVersion | None: ...

    def load_model(self, model_name: str, version: str) -> TrainedModel: ...

    def log_and_register(self, record: RunRecord, *, alias: str = ...) -> RegisteredVersion: ...


class JobFailed(Exception):
    """The request cannot succeed as it stands: retrying would fail the same way."""


@dataclass(frozen=True)
class JobContext:
    """What the job works with; built from the settings by ``jobs.retrain_requests_job``."""

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


@dataclass(frozen=True)
class Cases:
    """The labelled studies of a model, and how many were left out and why."""

    cases: list[LabelledCase]
    incomplete: int = 0
    """Studies without a label in force for every finding of the spec."""


def serve_pending(context: JobContext, limit: int | None = None) -> list[RetrainRequestRow]:
    """Serve requests one at a time until none is claimable (or ``limit`` were served). Each
    request is tried at most once per call: one put back for a retry waits for the next call
    (the scheduler's ``retrain.jobs_s``), a pause for whatever failed to recover."""
    served: list[RetrainRequestRow] = []
    while limit is None or len(served) < limit:
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
    except (JobFailed, DatasetError) as exc:
        outcome, result = "failed", _failed(context, row, str(exc))
    except Exception as exc:
        # Boundary: whatever went wrong, the request must end in a known state.
        reason = f"{type(exc).__name__}: {exc}"[:2000]
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
            reason=f"retrain request by {row.requested_by}: {row.reason}"[:2000],
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


def _run_gate(gate: GateContext, candidate_id: uuid.UUID) -> None:
    """The gate right after training; if it cannot run, the candidate waits for a retry."""
    try:
        gate_job.evaluate(gate, candidate_id)
    except Exception:  # boundary: the training succeeded whatever the gate does
        log.exception("gate did not run; the scheduler will try again", candidate=str(candidate_id))


def _train_candidate(context: JobContext, row: RetrainRequestRow) -> dict[str, Any]:
    """Stages 2-7; the request's columns to set on success."""
    engine, config = context.engine, context.config
    progress = _progress(engine, row.request_id)
    champion_version = context.registry.version_by_alias(row.model_name, CHAMPION)
    if champion_version is None:
        raise JobFailed(
            f"model {row.model_name!r} has no {CHAMPION!r} version in the registry "
            "(register one first, e.g. `radsentry train-initial`)"
        )
    champion = context.registry.load_model(row.model_name, champion_version.version)
    spec = champion.spec

    progress(stage="cases", champion_version=champion_version.version)
    found = load_cases(engine, row.model_name, spec.findings)
    usable = [case for case in found.cases if case.dicom_uri is not None]
    if len(usable) < config.min_cases:
        raise JobFailed(
            f"{len(usable)} labelled studies with an image; the job needs at least "
            f"{config.min_cases} (retrain.job.min_cases)"
        )
    progress(stage="images", cases=len(found.cases), incomplete_labels=found.incomplete)

    data = load_dataset(
        found.cases,
        _locked_test_set(context, row.model_name),
        spec.findings,
        spec.input_size,
        seed=config.split_seed,
        validation_share=config.validation_share,
        workers=config.image_workers,
        dicomweb=context.dicomweb,
    )
    dataset = data.dataset
    folder = context.work_dir / str(row.request_id)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_sha256 = dataset.manifest.write(folder / "manifest.json")
    progress(
        stage="training",
        manifest_sha256=manifest_sha256,
        train_cases=len(dataset.split.train),
        validation_cases=len(dataset.split.validation),
        epoch=0,
        max_epochs=config.train.max_epochs,
    )

    train_x, train_y = data.train_side()
    val_x, val_y = data.validation_side()

    def on_epoch(metrics: EpochMetrics) -> None:
        progress(epoch=metrics.epoch, val_loss=round(metrics.val_loss, 6))

    result = train(
        spec,
        config.train,
        (train_x, train_y),
        (val_x, val_y),
        checkpoint_dir=folder,
        progress=context.progress_bar,
        init_state=champion.state_dict if config.warm_start else None,
        resume=True,
        on_epoch_end=on_epoch,
    )
    comparison = compare(
        champion, result.model, val_x, val_y, [case.site_id for case in dataset.split.validation]
    )
    progress(stage="registering", comparison=comparison)
    version = context.registry.log_and_register(
        _record(context, row, result, dataset.manifest, champion_version, comparison),
        alias=CHALLENGER,
    )
    progress(stage="done")
    return {
        "manifest_sha256": manifest_sha256,
        "mlflow_run_id": version.run_id,
        "model_version": version.version,
    }


def load_cases(engine: Engine, model_name: str, findings: Sequence[str]) -> Cases:
    """One case per labelled study of ``model_name``: its labels in force (not expired) for
    every finding, and its latest inference event's image and time."""
    labels = table_of(CurrentLabelRow)
    with engine.connect() as connection:
        label_rows = connection.execute(
            select(labels).where(
                labels.c.model_name == model_name,
                labels.c.expired_at.is_(None),
                labels.c.finding.in_(list(findings)),
            )
        ).all()
        events = connection.execute(
            select(
                InferenceEventRow.site_id,
                InferenceEventRow.study_key,
                InferenceEventRow.occurred_at,
                InferenceEventRow.dicom_uri,
            ).where(InferenceEventRow.model_name == model_name)
        ).all()
    latest: dict[tuple[str, str], Any] = {}
    for event in events:
        key = (event.site_id, event.study_key)
        if key not in latest or as_utc(event.occurred_at) > as_utc(latest[key].occurred_at):
            latest[key] = event
    by_study: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for label in label_rows:
        by_study[(label.site_id, label.study_key)].append(label)
    cases: list[LabelledCase] = []
    incomplete = 0
    for key, rows in sorted(by_study.items()):
        if key not in latest:  # a label waiting for its prediction
            continue
        prediction = latest[key]
        if {row.finding for row in rows} != set(findings):
            incomplete += 1
            continue
        newest = max(rows, key=lambda row: as_utc(row.labelled_at))
        cases.append(
            LabelledCase(
                study_key=key[1],
                site_id=key[0],
                model_name=model_name,
                labels={row.finding: int(row.label) for row in rows},
                label_source=LabelSource(newest.source),
                predicted_at=as_utc(prediction.occurred_at),
                labelled_at=as_utc(newest.labelled_at),
                dicom_uri=prediction.dicom_uri,
            )
        )
    return Cases(cases, incomplete)


def compare(
    champion: TrainedModel,
    candidate: TrainedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    sites: Sequence[str],
) -> dict[str, Any]:
    """AUROC of champion and candidate on the same validation studies, overall and per site
    (first finding; None where a group lacks positives or negatives)."""
    truth = labels[:, 0].numpy()
    scores = {
        "champion": predict(champion, images)[:, 0],
        "candidate": predict(candidate, images)[:, 0],
    }
    site_array = np.array(sites)

    def group(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
        values: dict[str, Any] = {"n": int(mask.sum()), "positives": int(truth[mask].sum())}
        for name, score in scores.items():
            both = 0 < values["positives"] < values["n"]
            values[f"{name}_auroc"] = (
                float(roc_auc_score(truth[mask], score[mask])) if both else None
            )
        return values

    return {
        "finding": champion.spec.findings[0],
        "overall": group(np.ones(len(truth), dtype=bool)),
        "sites": {site: group(site_array == site) for site in sorted(set(sites))},
    }


def _record(
    context: JobContext,
    row: RetrainRequestRow,
    result: TrainResult,
    manifest: Any,
    champion: RegisteredVersion,
    comparison: Mapping[str, Any],
) -> RunRecord:
    tags = {
        "radsentry.request_id": str(row.request_id),
        "radsentry.trigger": row.trigger,
        "radsentry.requested_by": row.requested_by,
        "radsentry.champion_version": champion.version,
    }
    # Retraining keeps the champion's intended use (the PCCP scope guard checks it).
    if intended_use := champion.tags.get(gate_job.INTENDED_USE_TAG):
        tags[gate_job.INTENDED_USE_TAG] = intended_use
    if row.alert_id is not None:
        tags["radsentry.alert_id"] = str(row.alert_id)
    if row.site_id is not None:
        tags["radsentry.site_id"] = row.site_id
    metrics: dict[str, float] = {}
    for scope, values in [("overall", comparison["overall"]), *comparison["sites"].items()]:
        for name in ("champion", "candidate"):
            if (value := values[f"{name}_auroc"]) is not None:
                metrics[f"compare.{scope}.{name}_auroc"] = value
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
        metrics=metrics,
    )


def _locked_test_set(context: JobContext, model_name: str) -> LockedTestSet:
    """The governing plan's locked test set, else the configured one, else an empty one."""
    if context.gate is not None and (found := plan_for(context.gate.plans_dir, model_name)):
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
        reason=reason[:2000],
    )
    result = retrain_store.finish(
        context.engine, row.request_id, "failed", error=reason, log_entry=entry
    )
    raise_failure_alert(context.engine, result, context.config.fingerprint())
    return result


def raise_failure_alert(engine: Engine, row: RetrainRequestRow, fingerprint: str) -> uuid.UUID:
    """An alert (detector ``retrain.failed``) for a failed request, published by the outbox
    like every alert. Its id derives from the request, so a repeat adds nothing; it never
    counts as drift, so it cannot itself trigger retraining."""
    alert_id = uuid.uuid5(row.request_id, "retrain.failed")
    now = datetime.now(UTC)
    since = as_utc(row.started_at or row.created_at)
    values = {
        "alert_id": alert_id,
        "site_id": row.site_id or "*",
        "model_name": row.model_name,
        "model_version": row.model_version or "-",
        "detector": "retrain.failed",
        "features": [],
        "occurred_at": now,
        "since": since,
        "window_start": since,
        "window_end": now,
        "statistic": float(row.attempts),
        "p_value": None,
        "effect_size": 0.0,
        "effect_size_name": "attempts",
        "explanation": f"retrain request {row.request_id} failed: {row.error}"[:4000],
        "config_fingerprint": fingerprint,
        "reference_id": row.request_id,
        "status": "open",
        "drift_active": False,
        "drifting_checks": 0,
        "last_drift_at": now,
        "created_at": now,
    }
    with engine.begin() as connection:
        table = table_of(AlertRow)
        connection.execute(
            insert_for(connection, table).on_conflict_do_nothing(index_elements=["alert_id"]),
            values,
        )
    return alert_id
