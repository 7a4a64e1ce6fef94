"""The initial champion: ``radsentry train-initial``.

The one place outside a PCCP promotion that sets ``champion``, and only for a model that has
none: it trains v1 on a synthetic pre-deployment cohort, logs it like every retrain (manifest,
fingerprints, per-epoch metrics), registers it with aliases ``initial`` and ``champion``, and
records ``champion.initial`` in the change log. When the held-out cohort is the governing plan's
locked test set, its cases are written where the PCCP gate reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from monitor.service.audit import store as change_log
from monitor.service.errors import ServiceError
from monitor.service.registry import registry_for
from monitor.service.settings import Settings
from pccp.catalog import plan_for
from retrain.mlflow_names import CHAMPION, INITIAL, INTENDED_USE_TAG, REQUEST_TAG, TRIGGER_TAG

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pccp.plan import Plan
    from retrain.dataset import LabelledCase
    from retrain.initial import InitialConfig, InitialModel
    from retrain.tracking import RegisteredVersion, RunRecord

log = structlog.get_logger(__name__)


class ChampionExists(ServiceError, RuntimeError):
    """The model already has a champion: only a PCCP promotion may replace it."""


@dataclass(frozen=True)
class InitialRegistration:
    version: RegisteredVersion
    model: InitialModel
    cohort_dir: Path


def register_initial(
    settings: Settings,
    config: InitialConfig,
    *,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> InitialRegistration:
    """Render the cohort, train v1, log and register it, and make it the champion.

    ``should_stop`` is asked while the cohort renders and between training batches; when it
    answers True, ``retrain.train.TrainingStopped`` is raised before anything is registered.
    Training checkpoints under a folder of this config's own (its fingerprint), so the next
    call resumes from the last finished epoch."""
    from retrain.initial import render_cohort, train_initial

    registry = registry_for(settings)
    if (existing := registry.version_by_alias(config.model_name, CHAMPION)) is not None:
        raise ChampionExists(
            f"{config.model_name} already has a champion (version {existing.version}); "
            "only a PCCP promotion may replace it"
        )
    cohort_dir = (settings.data_dir / "initial" / f"seed-{config.seed}").resolve()
    studies = cohort_dir / "studies"
    cases = render_cohort(config, studies, "development", should_stop=should_stop)
    test_cases = (
        render_cohort(config, studies, "test", should_stop=should_stop)
        if config.test_studies_per_site
        else []
    )
    governing = plan_for(settings.plans_dir, config.model_name)
    if governing is not None and test_cases:
        _write_locked_cases(settings, governing.plan, test_cases)
    initial = train_initial(
        config,
        cases,
        cohort_dir / "work" / config.fingerprint()[:16],
        test_cases=test_cases,
        progress=progress,
        resume=True,
        should_stop=should_stop,
    )
    intended_use = governing.plan.description.fixed.intended_use_id if governing else None
    version = registry.log_and_register(_record(config, initial, intended_use), alias=INITIAL)
    registry.set_initial_champion(config.model_name, version.version)
    log.info("initial champion registered", model_name=config.model_name, version=version.version)
    return InitialRegistration(version, initial, cohort_dir)


def record_initial(engine: Engine, registered: InitialRegistration) -> None:
    """The change-log entry of a first champion (``champion.initial``)."""
    version = registered.version
    change_log.record(
        engine,
        change_log.Entry(
            actor="train-initial",
            action="champion.initial",
            subject=f"{version.model_name}/version/{version.version}",
            details={
                "mlflow_run_id": version.run_id,
                "manifest_sha256": registered.model.manifest.sha256(),
                "config_fingerprint": registered.model.config_fingerprint,
            },
            reason="initial model of a model without a champion",
        ),
    )


def _write_locked_cases(settings: Settings, plan: Plan, test_cases: Sequence[LabelledCase]) -> None:
    """The held-out cohort is the plan's locked test set when their keys hash alike: then
    write its cases where the gate reads them (images, labels, subgroup metadata)."""
    from pccp.locked_cases import from_labelled, write_locked_cases
    from retrain.dataset import LockedTestSet

    held_out = LockedTestSet.from_keys(case.study_key for case in test_cases)
    if held_out.sha256 != plan.protocol.data_management.locked_test_set.sha256:
        log.warning(
            "the held-out cohort is not the plan's locked test set; locked cases not written",
            plan_id=plan.plan_id,
        )
        return
    path = settings.locked_cases_dir / f"{plan.plan_id}.jsonl"
    write_locked_cases(path, from_labelled(test_cases))
    log.info("locked test cases written", plan_id=plan.plan_id, cases=len(test_cases))


def _record(config: InitialConfig, initial: InitialModel, intended_use: str | None) -> RunRecord:
    from retrain.tracking import RunRecord

    manifest_sha256 = initial.manifest.sha256()
    # The "request" of an initial model is its cohort: the same cohort registers once.
    tags = {
        REQUEST_TAG: f"initial-{manifest_sha256[:32]}",
        TRIGGER_TAG: "initial",
    }
    if intended_use is not None:
        tags[INTENDED_USE_TAG] = intended_use
    return RunRecord(
        model_name=config.model_name,
        result=initial.result,
        train_config=config.train,
        manifest=initial.manifest,
        tags=tags,
        params={"initial.fingerprint": initial.config_fingerprint},
        metrics=initial.test.metrics("test") if initial.test is not None else {},
    )
