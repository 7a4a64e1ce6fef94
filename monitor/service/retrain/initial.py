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
from typing import TYPE_CHECKING, Final

import structlog

from monitor.service.audit import store as change_log
from monitor.service.errors import ServiceError
from monitor.service.registry import registry_for
from monitor.service.settings import Settings
from pccp.catalog import plan_for
from retrain.dataset import write_cases
from retrain.mlflow_names import CHAMPION, INITIAL, INTENDED_USE_TAG, REQUEST_TAG, TRIGGER_TAG

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pccp.catalog import PlanFile
    from pccp.plan import Plan
    from retrain.dataset import LabelledCase
    from retrain.initial import InitialConfig, InitialModel
    from retrain.tracking import RegisteredVersion, RunRecord

log = structlog.get_logger(__name__)


class ChampionExists(ServiceError, RuntimeError):
    """The model already has a champion: only a PCCP promotion may replace it."""


DEVELOPMENT_CASES: Final = "development-cases.jsonl"
"""v1's development cases (train and validation, with their images' URIs) in the cohort's
folder: what a retraining job rehearses on (``retrain.job.rehearsal_cases``)."""


def cohort_folder(settings: Settings, config: InitialConfig) -> Path:
    """Where ``register_initial`` renders the cohort and keeps its case file."""
    return (settings.data_dir / "initial" / f"seed-{config.seed}").resolve()


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
    """Render the cohort, train v1, log and register it with its known embedding directions
    (``monitor.simulate.examples.simulated_directions``), and make it the champion.

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
    cohort_dir = cohort_folder(settings, config)
    studies = cohort_dir / "studies"
    cases = render_cohort(config, studies, "development", should_stop=should_stop)
    write_cases(cohort_dir / DEVELOPMENT_CASES, cases)
    test_cases = (
        render_cohort(config, studies, "test", should_stop=should_stop)
        if config.test_studies_per_site
        else ()
    )
    governing = plan_for(settings.plans_dir, config.model_name)
    locked = _locked_keys(governing) if governing is not None else None
    if governing is not None and locked is not None:
        held_out = list(test_cases)
        test_keys = {case.study_key for case in held_out}
        if config.portable_test_studies and test_keys < locked:
            # The plan locks this test part and more: the shipped plan the portable reader's
            # AP studies too (plan 1.3.0). Another plan's set is not rendered for.
            held_out += render_cohort(
                config,
                studies,
                "degraded",
                studies_per_site=config.portable_test_studies,
                should_stop=should_stop,
            )
        _write_locked_cases(settings, governing.plan, locked, held_out)
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
    if initial.result.projection is not None:
        # Known directions, so the embedding detector's alerts name the content that moved
        # ("towards lateral views"): fitted from the simulator's content shifts, a few seconds.
        from monitor.simulate.examples import simulated_directions

        directions = simulated_directions(
            initial.model, initial.result.projection, seed=config.seed
        )
        registry.log_directions(config.model_name, version.version, directions)
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


def _locked_keys(governing: PlanFile) -> frozenset[str] | None:
    """The study keys of the plan's locked test set; None (logged) when it is unreadable."""
    from pccp.plan import locked_test_set_path
    from retrain.dataset import LockedTestSet, LockedTestSetError

    plan = governing.plan
    try:
        return LockedTestSet.load(locked_test_set_path(plan, governing.path)).study_keys
    except LockedTestSetError as exc:
        log.warning("the plan's locked test set is unreadable", plan_id=plan.plan_id, error=exc)
        return None


def _write_locked_cases(
    settings: Settings, plan: Plan, locked: frozenset[str], held_out: Sequence[LabelledCase]
) -> None:
    """When the held-out cohort holds every study of the plan's locked test set, write those
    studies' cases where the gate reads them (images, labels, subgroup metadata). The shipped
    plan locks all of it (the catalogue rooms' PA studies and the portable reader's AP ones);
    a plan may lock a part (tests lock the PA part alone)."""
    from pccp.locked_cases import from_labelled, write_locked_cases

    cases = [case for case in held_out if case.study_key in locked]
    if len(cases) != len(locked):
        log.warning(
            "the held-out cohort is not the plan's locked test set; locked cases not written",
            plan_id=plan.plan_id,
            found=len(cases),
            locked=len(locked),
        )
        return
    path = settings.locked_cases_dir / f"{plan.plan_id}.jsonl"
    write_locked_cases(path, from_labelled(cases))
    log.info("locked test cases written", plan_id=plan.plan_id, cases=len(cases))


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
