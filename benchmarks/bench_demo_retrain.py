"""The demo's retraining recipes, judged on a development set and never on the locked test set.

Why the demo's candidate fails the PCCP gate, and which training recipe would make it pass,
must be decided without looking at the locked test set. This script takes a demo data dir
after `radsentry demo --until decision` (its champion, its labelled deployment studies), trains
candidates as the retraining job does (warm start, the plan's threshold rule on the tuning
split) under several recipes, and scores each with the plan's criteria (PE-1 to PE-15; PE-16 is
about the site's content, not the scores) on a development set rendered by the simulator with
another cohort seed: 300 PA studies per catalogue room and 300 AP studies of the portable
reader, four times the locked set's size with its composition. It reports the criteria on the
whole development set, the share of 200 locked-sized draws from it (100 PA per site and 100
AP) on which each criterion passes, and the band of thresholds at which all pass.

    python -m benchmarks.bench_demo_retrain devset
    python -m benchmarks.bench_demo_retrain --cohort 2 devset   # another development set
    python -m benchmarks.bench_demo_retrain prepare DATA_DIR
    python -m benchmarks.bench_demo_retrain run DATA_DIR base rehearse rehearse:lr=0.0003
    python -m benchmarks.bench_demo_retrain challenger DATA_DIR   # the demo's own candidate
    python -m benchmarks.bench_demo_retrain rescore DATA_DIR demo:threads=1  # a trained one
    python -m benchmarks.bench_demo_retrain summary plan-1.4.0   # per cohort, from results

Each trained candidate is scored at the threshold of each threshold policy in ``POLICIES`` (the
same candidate, so the policies are compared in the same run): plan 1.3.0's target on the
whole tuning split, plan 1.4.0's target on the tuning cases the champion never saw, and, for
comparison only, that target with the candidate's threshold also selected on those cases alone.
``rescore`` scores a candidate ``run`` saved again, without training it.

``--cohort SEED`` (before the command) renders and scores on the development set of another
cohort seed: the same simulator process as cohort seed 1's (and as the locked set's), with an
independent seed, so the development sets are independent draws of the same strata. Seed 1 (the
default) is the development set of the earlier subsections, cached under ``CACHE/devset``; any
other under ``CACHE/devset-SEED``. The locked set's cohort seed is refused.

Results are appended to ``CACHE/results.jsonl``; docs/benchmarks.md, "Full-loop demo".
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from pccp.gate import GateCases, ModelScores, evaluate_criteria
from pccp.locked_cases import LockedCase, from_labelled
from pccp.plan import ContentCoverageCriterion, Plan, TargetCases, ThresholdPolicy
from pccp.threshold import (
    TuningSplit,
    seen_by_champion,
    select_threshold,
    threshold_for_sensitivity,
)
from retrain.config import TrainConfig
from retrain.data import load_dataset, tensors_for
from retrain.dataset import Side, read_cases, write_cases
from retrain.initial import InitialConfig, render_cohort
from retrain.model import TrainedModel, predict
from retrain.train import train

CACHE = Path("/tmp/radsentry-bench-demo-retrain")
DEV_SEED = 1
"""The locked test set is cohort seed 0's held-out parts; the development set is seed 1's."""
LOCKED_SEED = InitialConfig().seed
"""The cohort seed whose held-out parts are the locked test set (the demo's v1 is this seed's);
never a development set's."""
MODEL = "cxr-lesion"
DRAWS = 200


@dataclass(frozen=True)
class Recipe:
    name: str
    rehearsal: bool = False
    """Train on the champion's development cases too (``retrain.job.rehearsal_cases``)."""
    lr: float = 1e-3
    max_epochs: int = 40
    patience: int = 8
    validation_share: float = 0.2
    warm_start: bool = True
    seed: int = 0
    average_from: int = 0
    """Stochastic weight averaging from this epoch on (``TrainConfig.average_from_epoch``);
    0: the best epoch's weights."""
    threads: int = 0
    """torch's intra-op threads while training; 0: torch's default (one per core)."""


RECIPES = {
    "base": Recipe("base"),
    "rehearse": Recipe("rehearse", rehearsal=True),
    "demo": Recipe("demo", rehearsal=True, lr=3e-4, patience=40),
}
"""``demo`` is ``monitor.service.demo.run.DEMO_JOB``'s recipe; with ``threads=1`` it trains
the demo's own candidate (the demo's process runs torch on one thread)."""


def devset_folder(cohort: int = DEV_SEED) -> Path:
    """Where the development set of cohort seed ``cohort`` is cached (seed 1's where it was)."""
    if cohort == LOCKED_SEED:
        raise ValueError(f"cohort seed {cohort} is the locked test set's; choose another")
    if cohort < 0:
        raise ValueError("a cohort seed is not negative")
    return CACHE / ("devset" if cohort == DEV_SEED else f"devset-{cohort}")


def devset(per_site: int = 300, portable: int = 300, cohort: int = DEV_SEED) -> None:
    """The held-out parts ("test": the catalogue rooms' PA studies; "degraded": the portable
    reader's AP studies, at site-01) of cohort seed ``cohort``, rendered as the locked set's are
    (``monitor.service.retrain.initial.register_initial``) but ``per_site`` and ``portable``
    studies instead of 100 each."""
    out = devset_folder(cohort)
    config = InitialConfig(seed=cohort)
    pa = render_cohort(config, out / "studies", "test", studies_per_site=per_site)
    ap = render_cohort(config, out / "studies", "degraded", studies_per_site=portable)
    lines = [case.model_dump_json() for case in from_labelled([*pa, *ap])]
    (out / "cases.jsonl").write_text("\n".join(lines) + "\n")
    print(f"development set (cohort seed {cohort}): {len(pa)} PA and {len(ap)} AP studies")


def prepare(data_dir: Path) -> None:
    """The demo's labelled deployment cases (as the job reads them) and v1's development
    cases, into the cache."""
    from monitor.service.db import make_engine
    from monitor.service.embedded_pg import close_embedded_database, open_embedded_database
    from monitor.service.retrain.cases import load_cases

    out = CACHE / data_dir.name
    engine = make_engine(open_embedded_database(data_dir).url())
    try:
        found = load_cases(engine, MODEL, ("lesion",))
    finally:
        engine.dispose()
        close_embedded_database(data_dir)
    write_cases(out / "deployment.jsonl", found.cases)
    cohort = data_dir / "initial" / "seed-0"
    stored = cohort / "development-cases.jsonl"
    if stored.exists():
        development = read_cases(stored)
    else:  # a data dir from before the case file: render the cohort again (deterministic)
        development = render_cohort(InitialConfig(), cohort / "studies", "development")
    write_cases(out / "development.jsonl", development)
    print(f"{len(found.cases)} deployment cases, {len(development)} development cases")


def _development_set(cohort: int = DEV_SEED) -> tuple[list[LockedCase], torch.Tensor]:
    folder = devset_folder(cohort)
    if not (folder / "cases.jsonl").exists():
        raise FileNotFoundError(f"no development set for cohort seed {cohort}: run devset first")
    lines = (folder / "cases.jsonl").read_text().splitlines()
    cases = [LockedCase.model_validate_json(line) for line in lines if line.strip()]
    images_path = folder / "images64.pt"
    if not images_path.exists():
        labelled = [case.as_labelled(MODEL, datetime.now(UTC)) for case in cases]
        torch.save(tensors_for(labelled, ("lesion",), 64).images, images_path)
    return cases, torch.load(images_path)


def _gate_cases(cases: list[LockedCase], rows: np.ndarray[Any, Any]) -> GateCases:
    chosen = [cases[i] for i in rows]
    return GateCases(
        study_keys=tuple(c.study_key for c in chosen),
        positive=np.array([c.labels["lesion"] == 1 for c in chosen]),
        groups={f: np.array([c.subgroup(f) for c in chosen]) for f in ("PatientSex", "site")},
    )


def _locked_sized(cases: list[LockedCase], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """100 studies of each (site, view) stratum: the locked set's composition."""
    strata: dict[tuple[str, str], list[int]] = {}
    for index, case in enumerate(cases):
        strata.setdefault((case.site_id, case.subgroup("ViewPosition")), []).append(index)
    return np.concatenate([rng.choice(m, 100, replace=False) for _, m in sorted(strata.items())])


def score_criteria(
    plan: Plan,
    cases: list[LockedCase],
    champion: tuple[np.ndarray[Any, Any], float],
    candidate: tuple[np.ndarray[Any, Any], float],
    draws: int = DRAWS,
) -> tuple[dict[str, tuple[bool, str]], dict[str, float], float]:
    """The criteria on the whole set (passed, detail), each one's pass rate over locked-sized
    draws, and the rate at which all pass."""
    criteria = [
        c
        for c in plan.protocol.performance_evaluation
        if not isinstance(c, ContentCoverageCriterion)
    ]
    protocol = plan.protocol.model_copy(update={"performance_evaluation": criteria})
    plan = plan.model_copy(update={"protocol": protocol})

    def decide(rows: np.ndarray[Any, Any]) -> list[Any]:
        return evaluate_criteria(
            plan,
            _gate_cases(cases, rows),
            ModelScores("candidate", candidate[0][rows], candidate[1]),
            ModelScores("champion", champion[0][rows], champion[1]),
        )

    whole = {r.id: (r.passed, r.detail) for r in decide(np.arange(len(cases)))}
    rng = np.random.default_rng(2026)
    passes = dict.fromkeys(whole, 0)
    every = 0
    for _ in range(draws):
        results = decide(_locked_sized(cases, rng))
        for result in results:
            passes[result.id] += result.passed
        every += all(result.passed for result in results)
    draws = max(draws, 1)
    return whole, {k: v / draws for k, v in passes.items()}, every / draws


def site_specificity(
    cases: list[LockedCase],
    champion: tuple[np.ndarray[Any, Any], float],
    candidate: tuple[np.ndarray[Any, Any], float],
    tolerance: float = 0.10,
    draws: int = DRAWS,
) -> dict[str, dict[str, float]]:
    """Per site: the candidate's and the champion's specificity on the whole set and its
    negatives, and the share of the locked-sized draws (the same draws as
    :func:`score_criteria`'s) on which the candidate's is more than ``tolerance`` below the
    champion's (PE-12's regression, at that site alone). The negatives only one of the two
    clears (discordant pairs) say how much a smaller sample's difference varies."""
    negative = np.array([c.labels["lesion"] != 1 for c in cases])
    sites = np.array([c.site_id for c in cases])
    cleared = (candidate[0] < candidate[1], champion[0] < champion[1])

    def specificities(rows: np.ndarray[Any, Any], site: str) -> tuple[float, float, int]:
        mask = np.zeros(len(cases), dtype=bool)
        mask[rows] = True
        mask &= negative & (sites == site)
        count = int(np.count_nonzero(mask))
        return float(cleared[0][mask].mean()), float(cleared[1][mask].mean()), count

    everything = np.arange(len(cases))
    out: dict[str, dict[str, float]] = {}
    regressed = dict.fromkeys(sorted(set(sites.tolist())), 0)
    rng = np.random.default_rng(2026)
    for _ in range(draws):
        rows = _locked_sized(cases, rng)
        for site in regressed:
            candidate_spec, champion_spec, _ = specificities(rows, site)
            regressed[site] += candidate_spec - champion_spec < -tolerance
    for site, count in regressed.items():
        candidate_spec, champion_spec, negatives = specificities(everything, site)
        at_site = negative & (sites == site)
        out[site] = {
            "candidate": round(candidate_spec, 3),
            "champion": round(champion_spec, 3),
            "negatives": negatives,
            "cleared_by_candidate_only": int(np.count_nonzero(at_site & cleared[0] & ~cleared[1])),
            "cleared_by_champion_only": int(np.count_nonzero(at_site & ~cleared[0] & cleared[1])),
            "regressed_share_locked_sized": count / max(draws, 1),
        }
    return out


def _point(positive: np.ndarray[Any, Any], scores: np.ndarray[Any, Any], cut: float) -> list[float]:
    return [
        round(float((scores[positive] >= cut).mean()), 3),
        round(float((scores[~positive] < cut).mean()), 3),
    ]


MARGINS = (0.02, 0.03, 0.05)
"""Margins tried on plan 1.4.0's target (``plan-1.4.0+M``); rejected, docs/benchmarks.md."""
POLICIES = (
    "plan-1.3.0",
    "plan-1.4.0",
    "select-all",
    "unseen-only",
    *(f"plan-1.4.0+{margin}" for margin in MARGINS),
    "gate-slack",
)
"""``plan-1.3.0``: the target on the whole tuning split, the threshold selected there too;
``plan-1.4.0``: the target on the tuning cases the champion's lineage never saw, the threshold
selected on those it never trained on; for comparison, that target with the threshold
selected on every tuning case (``select-all``) or on the unseen cases alone
(``unseen-only``), and plan 1.4.0 with its target raised by a margin M (``plan-1.4.0+M``,
capped at 1; the threshold selected on the same cases as plan 1.4.0's); ``gate-slack``
(:func:`gate_slack_threshold`): the threshold at which the plan's operating-point criteria,
emulated on the tuning cases the champion never saw, have the most room. The margins and
``gate-slack`` were tried and rejected (docs/benchmarks.md, "Full-loop demo")."""


def _operating_point_rules(plan: Plan) -> list[tuple[str, str, str | None, float]]:
    """The plan's criteria at the operating point as (kind, metric, by, limit): ``bound``, the
    metric at least ``limit``; ``difference``, the candidate's metric less the champion's at
    least ``limit`` (minus a margin or tolerance). Point estimates stand in for the gate's
    interval bounds: the tuning split is not the locked set's size."""
    rules: list[tuple[str, str, str | None, float]] = []
    for c in plan.protocol.performance_evaluation:
        metric = getattr(c, "metric", None)
        if metric not in ("sensitivity", "specificity"):
            continue
        if c.kind == "lower_bound":
            rules.append(("bound", metric, c.by, c.min))
        elif c.kind == "non_inferiority":
            rules.append(("difference", metric, c.by, -c.margin))
        elif c.kind == "regressions":
            rules.append(("difference", metric, "site", -c.tolerance))
    return rules


def gate_slack_threshold(
    plan: Plan,
    positive: np.ndarray[Any, Any],
    candidate: np.ndarray[Any, Any],
    champion: np.ndarray[Any, Any],
    champion_threshold: float,
    sites: np.ndarray[Any, Any],
    min_class_cases: int = 20,
) -> tuple[float, float]:
    """The candidate threshold (one of its scores) at which the smallest room left by the
    plan's operating-point criteria (:func:`_operating_point_rules`), overall and in every site
    with ``min_class_cases`` cases of the metric's class (overall: whatever the count), is
    largest; ties go to the higher
    threshold. Returns (threshold, that room)."""
    rules = _operating_point_rules(plan)
    flagged_by_champion = champion >= champion_threshold

    def rates(flags: np.ndarray[Any, Any], rows: np.ndarray[Any, Any]) -> dict[str, float]:
        pos, neg = rows & positive, rows & ~positive
        return {
            "sensitivity": float(flags[pos].mean()) if pos.any() else math.nan,
            "specificity": float((~flags[neg]).mean()) if neg.any() else math.nan,
        }

    groups = {"all": np.ones_like(positive)} | {
        site: sites == site for site in sorted(set(sites.tolist()))
    }
    counted = {
        name: {
            "sensitivity": name == "all" or int((rows & positive).sum()) >= min_class_cases,
            "specificity": name == "all" or int((rows & ~positive).sum()) >= min_class_cases,
        }
        for name, rows in groups.items()
    }
    reference = {name: rates(flagged_by_champion, rows) for name, rows in groups.items()}
    best = (-math.inf, 0.0)
    for cut in np.unique(candidate):
        flags = candidate >= cut
        now = {name: rates(flags, rows) for name, rows in groups.items()}
        room = math.inf
        for kind, metric, by, limit in rules:
            for name in groups:
                if (by is None) != (name == "all") or not counted[name][metric]:
                    continue
                value = now[name][metric]
                if kind == "difference":
                    value -= reference[name][metric]
                room = min(room, value - limit)
        if room >= best[0]:
            best = (room, float(cut))
    return best[1], best[0]


def _job_inputs(data_dir: Path, recipe: Recipe) -> tuple[Any, ...]:
    """The champion, its version and lineage manifests, the plan and the data set, as the job
    reads them."""
    from monitor.service.pccp import jobs as gate_job
    from monitor.service.registry import registry_for
    from monitor.service.retrain.jobs import champion_lineage_manifests
    from monitor.service.settings import Settings
    from pccp.catalog import plan_for

    settings = Settings(data_dir=data_dir)
    registry = registry_for(settings)
    version = registry.version_by_alias(MODEL, "champion")
    assert version is not None
    champion = registry.load_model(MODEL, version.version)
    lineage = champion_lineage_manifests(registry, MODEL, version)
    assert lineage is not None, "the champion has no training manifest"
    found = plan_for(settings.plans_dir, MODEL)
    assert found is not None
    cases = list(read_cases(CACHE / data_dir.name / "deployment.jsonl"))
    if recipe.rehearsal:
        new = {case.study_key for case in cases}
        development = read_cases(CACHE / data_dir.name / "development.jsonl")
        cases += [case for case in development if case.study_key not in new]
    data = load_dataset(
        cases,
        gate_job.locked_test_set(found),  # checked for overlap only, never read
        ("lesion",),
        champion.spec.input_size,
        seed=0,
        validation_share=recipe.validation_share,
    )
    return version, champion, lineage, found.plan, data


def run(data_dir: Path, recipe: Recipe, cohort: int = DEV_SEED) -> dict[str, Any]:
    version, champion, lineage, plan, data = _job_inputs(data_dir, recipe)
    started = time.perf_counter()
    config = TrainConfig(
        seed=recipe.seed,
        max_epochs=recipe.max_epochs,
        patience=recipe.patience,
        learning_rate=recipe.lr,
        average_from_epoch=recipe.average_from or None,
    )
    folder = CACHE / "work" / f"{data_dir.name}-{recipe.name}"
    shutil.rmtree(folder, ignore_errors=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads or threads)
    try:
        result = train(
            champion.spec,
            config,
            data.train_side(),
            data.validation_side(),
            checkpoint_dir=folder,
            progress=False,
            init_state=champion.state_dict if recipe.warm_start else None,
        )
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    result.model.save(folder / "model.pt")
    return {
        "data_dir": data_dir.name,
        "recipe": recipe.__dict__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "train_seconds": round(seconds, 1),
        "val_loss": [round(m.val_loss, 4) for m in result.history],
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "cohort": cohort,
        **score_policies(version.version, champion, lineage, plan, data, result.model, cohort),
    }


def rescore(data_dir: Path, recipe: Recipe, cohort: int = DEV_SEED) -> dict[str, Any]:
    """The candidate ``run`` saved for ``recipe``, scored again under every policy."""
    version, champion, lineage, plan, data = _job_inputs(data_dir, recipe)
    model = TrainedModel.load(CACHE / "work" / f"{data_dir.name}-{recipe.name}" / "model.pt")
    return {
        "data_dir": data_dir.name,
        "recipe": recipe.__dict__,
        "rescored": True,
        "cohort": cohort,
        **score_policies(version.version, champion, lineage, plan, data, model, cohort),
    }


def score_policies(
    champion_version: str,
    champion: TrainedModel,
    lineage: list[Any],
    plan: Plan,
    data: Any,
    model: TrainedModel,
    cohort: int = DEV_SEED,
) -> dict[str, Any]:
    """The candidate's threshold under each of ``POLICIES``, each scored on the development
    set of cohort seed ``cohort``; the band of passing thresholds once (it is the candidate's,
    whatever the policy)."""
    val_x, val_y = data.validation_side()
    tuning_cases = [c for c in data.dataset.manifest.cases if c.side is Side.VALIDATION]
    tuning = TuningSplit(
        positive=val_y[:, 0].numpy() > 0.5,
        candidate_scores=predict(model, val_x)[:, 0].astype(float),
        champion_scores=predict(champion, val_x)[:, 0].astype(float),
        training_manifest_sha256="",
        champion_seen=seen_by_champion(tuning_cases, lineage),
        champion_trained=seen_by_champion(tuning_cases, lineage, frozenset({Side.TRAIN})),
        champion_manifests=tuple(m.sha256() for m in lineage),
    )
    champion_threshold = float(champion.thresholds[0])
    shipped = plan.protocol.threshold_policy
    policies = {
        "plan-1.3.0": shipped.model_copy(update={"target_cases": TargetCases.TUNING_SPLIT}),
        "plan-1.4.0": shipped.model_copy(update={"target_cases": TargetCases.UNSEEN_BY_CHAMPION}),
    }
    selected: dict[str, dict[str, Any]] = {}
    for name, policy in policies.items():
        provenance = select_threshold(
            ThresholdPolicy.model_validate(policy.model_dump()),
            tuning,
            champion_version=champion_version,
            champion_threshold=champion_threshold,
            plan=plan,
        )
        selected[name] = {
            "target_sensitivity": provenance.target_sensitivity,
            "target_cases": provenance.target_case_count,
            "target_positives": provenance.target_positives,
            "excluded_cases": provenance.excluded_cases,
            "excluded_positives": provenance.excluded_positives,
            "threshold": provenance.threshold,
            "selection_cases": provenance.selection_cases,
            "selection_positives": provenance.selection_positives,
        }
    assert tuning.champion_seen is not None
    unseen_positive = tuning.positive & ~tuning.champion_seen
    target = selected["plan-1.4.0"]["target_sensitivity"]
    selected["select-all"] = selected["plan-1.4.0"] | {
        "threshold": threshold_for_sensitivity(tuning.positive, tuning.candidate_scores, target)
    }
    selected["unseen-only"] = selected["plan-1.4.0"] | {
        "threshold": threshold_for_sensitivity(unseen_positive, tuning.candidate_scores, target)
    }
    assert tuning.champion_trained is not None
    untrained_positive = tuning.positive & ~tuning.champion_trained
    for margin in MARGINS:
        raised = min(target + margin, 1.0)
        selected[f"plan-1.4.0+{margin}"] = selected["plan-1.4.0"] | {
            "target_sensitivity": raised,
            "threshold": threshold_for_sensitivity(
                untrained_positive, tuning.candidate_scores, raised
            ),
        }
    unseen = ~tuning.champion_seen
    sites = np.array([case.site_id for case in tuning_cases])
    cut, room = gate_slack_threshold(
        plan,
        tuning.positive[unseen],
        tuning.candidate_scores[unseen],
        tuning.champion_scores[unseen],
        champion_threshold,
        sites[unseen],
    )
    selected["gate-slack"] = selected["plan-1.4.0"] | {"threshold": cut, "room": round(room, 4)}
    summary: dict[str, Any] = {
        "train_cases": len(data.dataset.split.train),
        "tuning_cases": int(tuning.positive.size),
        "tuning_positives": int(np.count_nonzero(tuning.positive)),
        "champion_manifests": [m.sha256()[:12] for m in lineage],
    }
    band: list[float] | None = None
    for name, chosen in selected.items():
        scored = evaluate(
            plan, champion, champion_threshold, model, chosen["threshold"], band, cohort
        )
        band = scored["passing_band"] if band is None else band
        summary[name] = chosen | scored
    summary["passing_band"] = band
    return summary


def evaluate(
    plan: Plan,
    champion: TrainedModel,
    champion_threshold: float,
    model: TrainedModel,
    cut: float,
    band: list[float] | None = None,
    cohort: int = DEV_SEED,
) -> dict[str, Any]:
    """The candidate at threshold ``cut`` on the development set of cohort seed ``cohort``;
    ``band``: the passing band already computed for this candidate (else computed here)."""
    cases, images = _development_set(cohort)
    positive = np.array([c.labels["lesion"] == 1 for c in cases])
    ap = np.array([c.subgroup("ViewPosition") == "AP" for c in cases])
    candidate = predict(model, images)[:, 0].astype(float)
    reference = predict(champion, images)[:, 0].astype(float)
    whole, rates, every = score_criteria(
        plan, cases, (reference, champion_threshold), (candidate, cut)
    )
    if band is None:
        passing = [
            float(t)
            for t in np.round(np.arange(0.03, 0.5, 0.01), 2)
            if all(
                p
                for p, _ in score_criteria(
                    plan, cases, (reference, champion_threshold), (candidate, float(t)), 0
                )[0].values()
            )
        ]
        band = [min(passing), max(passing)] if passing else []
    return {
        "threshold": cut,
        "auroc": {
            "candidate_pa": round(roc_auc_score(positive[~ap], candidate[~ap]), 3),
            "champion_pa": round(roc_auc_score(positive[~ap], reference[~ap]), 3),
            "candidate_ap": round(roc_auc_score(positive[ap], candidate[ap]), 3),
            "champion_ap": round(roc_auc_score(positive[ap], reference[ap]), 3),
        },
        "sensitivity_specificity": {
            "candidate_pa": _point(positive[~ap], candidate[~ap], cut),
            "candidate_ap": _point(positive[ap], candidate[ap], cut),
            "champion_pa": _point(positive[~ap], reference[~ap], champion_threshold),
            "champion_ap": _point(positive[ap], reference[ap], champion_threshold),
        },
        "failed_on_development_set": {k: d for k, (p, d) in whole.items() if not p},
        "pass_rate_locked_sized": {k: v for k, v in rates.items() if v < 1},
        "all_pass_rate_locked_sized": every,
        "specificity_by_site": site_specificity(
            cases, (reference, champion_threshold), (candidate, cut)
        ),
        "passing_band": band,
        "champion_sensitivity": {
            "pa": _point(positive[~ap], reference[~ap], champion_threshold)[0],
            "ap": _point(positive[ap], reference[ap], champion_threshold)[0],
            "all": _point(positive, reference, champion_threshold)[0],
        },
    }


def evaluate_challenger(data_dir: Path, cohort: int = DEV_SEED) -> dict[str, Any]:
    """The demo's own candidate (the registry's ``challenger``) on the development set."""
    from monitor.service.registry import registry_for
    from monitor.service.settings import Settings
    from pccp.catalog import plan_for

    settings = Settings(data_dir=data_dir)
    registry = registry_for(settings)
    versions = [registry.version_by_alias(MODEL, alias) for alias in ("champion", "challenger")]
    found = plan_for(settings.plans_dir, MODEL)
    assert None not in versions and found is not None
    champion, candidate = (registry.load_model(MODEL, v.version) for v in versions if v)
    return evaluate(
        found.plan,
        champion,
        float(champion.thresholds[0]),
        candidate,
        float(candidate.thresholds[0]),
        cohort=cohort,
    )


def summary(policy: str = "plan-1.4.0") -> None:
    """One Markdown row per candidate and cohort (the latest result of each) under ``policy``:
    the share of draws on which all criteria pass, the criteria that fail on some, and site-02's
    specificity (candidate / champion on the cohort's negatives, the share of draws with PE-12's
    regression there); then site-02's specificity pooled over the cohorts, per candidate, and
    the chance (normal approximation, from the pooled discordant pairs) that a fresh sample of
    70 site-02 negatives (100 studies at the prevalence of 0.3) shows PE-12's regression."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in (CACHE / "results.jsonl").read_text().splitlines():
        outcome = json.loads(line)
        if "cohort" in outcome:
            latest[(outcome["recipe"]["name"], outcome["cohort"])] = outcome
    print(
        "| candidate | cohort | threshold | all pass | criteria failing on draws "
        "| site-02 spec. cand. / champion (negatives) | PE-12 at site-02 on draws |"
    )
    print("|---|---:|---:|---:|---|---|---:|")
    pooled: dict[str, list[float]] = {}
    passing: dict[str, list[float]] = {}
    for (name, cohort), outcome in sorted(latest.items()):
        scored = outcome[policy]
        site = scored["specificity_by_site"]["site-02"]
        failing = ", ".join(
            f"{k} {100 * (1 - v):g} %" for k, v in sorted(scored["pass_rate_locked_sized"].items())
        )
        print(
            f"| {name} | {cohort} | {scored['threshold']:.4f} "
            f"| {100 * scored['all_pass_rate_locked_sized']:g} % | {failing or 'none'} "
            f"| {site['candidate']:.3f} / {site['champion']:.3f} ({site['negatives']}) "
            f"| {100 * site['regressed_share_locked_sized']:g} % |"
        )
        passing.setdefault(name, []).append(scored["all_pass_rate_locked_sized"])
        total = pooled.setdefault(name, [0.0, 0.0, 0.0, 0.0, 0.0])
        total[0] += site["candidate"] * site["negatives"]
        total[1] += site["champion"] * site["negatives"]
        total[2] += site["negatives"]
        total[3] += site["cleared_by_candidate_only"]
        total[4] += site["cleared_by_champion_only"]
    print()
    for name, (candidate, champion, negatives, better, worse) in sorted(pooled.items()):
        gained, lost = better / negatives, worse / negatives
        mean = gained - lost
        spread = math.sqrt(max(gained + lost - mean**2, 1e-12) / 70)
        chance = 0.5 * math.erfc((mean + 0.10) / spread / math.sqrt(2))
        rates = passing[name]
        print(
            f"{name}: all pass on {100 * min(rates):g} to {100 * max(rates):g} % of the draws "
            f"(mean {100 * sum(rates) / len(rates):.1f} %) over {len(rates)} cohorts; "
            f"site-02 specificity pooled over the cohorts {candidate / negatives:.3f} "
            f"against the champion's {champion / negatives:.3f} ({negatives:g} negatives; "
            f"cleared by one alone: candidate {better:g}, champion {worse:g}); "
            f"PE-12 regression on 70 fresh negatives: {100 * chance:.1f} %"
        )


def _recipe(spec: str) -> Recipe:
    name, *changes = spec.split(":")
    recipe = replace(RECIPES[name], name=spec.replace(":", "_").replace("=", ""))
    for change in changes:
        key, value = change.split("=")
        kind = type(getattr(recipe, key))
        parsed: Any = value == "1" if kind is bool else kind(value)
        recipe = replace(recipe, **{key: parsed})
    return recipe


def main(argv: list[str]) -> None:
    cohort = DEV_SEED
    if argv[:1] == ["--cohort"]:
        cohort, argv = int(argv[1]), argv[2:]
        devset_folder(cohort)  # refuses the locked set's seed before any work
    command, *rest = argv
    if command == "devset":
        devset(cohort=cohort)
    elif command == "challenger":
        print(json.dumps(evaluate_challenger(Path(rest[0]), cohort), indent=1))
    elif command == "summary":
        summary(*rest)
    elif command == "prepare":
        prepare(Path(rest[0]))
    elif command in ("run", "rescore"):
        act = run if command == "run" else rescore
        for spec in rest[1:]:
            outcome = act(Path(rest[0]), _recipe(spec), cohort)
            with (CACHE / "results.jsonl").open("a") as handle:
                handle.write(json.dumps(outcome) + "\n")
            print(json.dumps(outcome, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
