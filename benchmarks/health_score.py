"""Validation of the health score on the simulator's scanner change (docs/benchmarks.md).

    PYTHONPATH=. .venv/bin/python benchmarks/health_score.py [--studies 1400 --change-at 700]

The simulator (``monitor.simulate``, 64-pixel images, one site) moves the site to the degraded
portable reader at ``--change-at``: its images change and the score model's AUROC drops from
about 0.90 to 0.70. Each stream runs through the drift engine (reference 300 studies, windows
of 100, thresholds learned from chunks of 50); every window's detector effects are scored
(``monitor.performance.health``) and compared with the realised AUROC of the same studies.

* **Weights**: learned on the labelled windows of a *history* stream (seed ``--seed``), then
  applied to ``--runs`` evaluation streams (the next seeds); also reported with default
  (equal) weights.
* **Correlation**: Pearson and Spearman, per window, between the health score and the realised
  AUROC of the window's labelled studies (all labels, as if every one had arrived).
* **Lead**: health "moves" at the first window after the change with health below 80 (the
  false-alarm rate of that rule is measured on the windows before the change). The realised
  metric moves when, with only the labels that had *arrived* by then (the simulator's delays,
  mean 72 h, 80% labelled), the AUROC of the latest 100 labelled predictions has a DeLong 95%
  upper bound below the reference period's AUROC. Lead = studies (and windows) between them.

Nothing here reads PadChest or any held-out set; the simulator is synthetic.
"""

from __future__ import annotations

import argparse
import tempfile
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.stats import norm, pearsonr, spearmanr

from monitor.drift.calibration import OVERALL, LearnedThresholdConfig
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.drift.engine import DriftEngine
from monitor.events import InferenceEvent, LabelEvent
from monitor.performance._auroc import delong
from monitor.performance.health import HealthConfig, LabelledWindow, Moments, score, standardise
from monitor.simulate import SimulationConfig, simulate

FINDING = "lesion"
SITE = "site-01"
CONFIG = EngineConfig(
    reference_size=300,
    window=WindowConfig(size=100, min_size=50),
    detectors=DetectorSet(online=None),
    learned=LearnedThresholdConfig(chunk_size=50, min_chunks=6),
)
ALARM_BELOW = 80.0


@dataclass
class Run:
    ends: list[int]
    """Per window: index of the last study in it."""
    effects: list[dict[str, float]]
    auroc: list[tuple[float, float] | None]
    moments: dict[str, Moments]
    events: list[InferenceEvent]
    labels: list[LabelEvent]


def run_stream(seed: int, studies: int, change_at: int, workdir: Path) -> Run:
    config = SimulationConfig(
        seed=seed,
        start=datetime(2026, 3, 1, tzinfo=UTC),
        sites=1,
        studies_per_site=studies,
        image_size=64,
        change_site=SITE,
        change_at_index=change_at,
    )
    engine = DriftEngine(CONFIG)
    events: list[InferenceEvent] = []
    labels: list[LabelEvent] = []
    windows: dict[datetime, dict[str, float]] = {}
    for event in simulate(config, workdir / str(seed)):
        if isinstance(event, LabelEvent):
            labels.append(event)
            continue
        events.append(event)
        for check in engine.process(event).checks:
            if check.result is not None:
                windows.setdefault(check.window_end, {})[check.detector] = check.result.effect_size
    (stream,) = engine.streams.values()
    moments = {
        name: Moments(t.for_feature(OVERALL).mean, t.for_feature(OVERALL).sd)  # type: ignore[union-attr]
        for name, t in stream.learned.items()
        if t.for_feature(OVERALL) is not None
    }
    times = [e.occurred_at for e in events]
    label_of = {label.study_key: label.labels[FINDING] for label in labels}
    ends, effects, aurocs = [], [], []
    start = CONFIG.reference_size
    for end_time in sorted(windows):
        end = bisect_right(times, end_time) - 1
        ends.append(end)
        effects.append(windows[end_time])
        aurocs.append(_auroc([events[i] for i in range(start, end + 1)], label_of))
        start = end + 1
    return Run(ends, effects, aurocs, moments, events, labels)


def _auroc(events: list[InferenceEvent], label_of: dict[str, int]) -> tuple[float, float] | None:
    pairs = [
        (e.prediction.scores[FINDING], label_of[e.study_key])
        for e in events
        if e.study_key in label_of
    ]
    scores = np.array([s for s, _ in pairs])
    truth = np.array([y for _, y in pairs])
    if min((truth == 1).sum(), (truth == 0).sum()) < 5:
        return None
    return delong(scores[truth == 1], scores[truth == 0])


def history_of(run: Run) -> list[LabelledWindow]:
    found = []
    for effects, realised in zip(run.effects, run.auroc, strict=True):
        if realised is not None:
            z = {d: v for d, v in standardise(effects, run.moments).items() if v is not None}
            found.append(LabelledWindow(z, *realised))
    return found


def realised_detection(run: Run, change_at: int, rolling: int = 100) -> int | None:
    """First study index (after the change) at which the labels arrived so far show the drop."""
    score_of = {e.study_key: (i, e.prediction.scores[FINDING]) for i, e in enumerate(run.events)}
    arrived = sorted(run.labels, key=lambda label: label.occurred_at)
    reference = [
        (score_of[x.study_key][1], x.labels[FINDING])
        for x in run.labels
        if score_of[x.study_key][0] < change_at
    ]
    base = delong(
        np.array([s for s, y in reference if y == 1]), np.array([s for s, y in reference if y == 0])
    )[0]
    seen: list[tuple[int, float, int]] = []
    position = 0
    for index, event in enumerate(run.events):
        while position < len(arrived) and arrived[position].occurred_at <= event.occurred_at:
            label = arrived[position]
            seen.append((*score_of[label.study_key], label.labels[FINDING]))
            position += 1
        if index < change_at or index % 10:
            continue
        latest = sorted(seen)[-rolling:]
        truth = np.array([y for _, _, y in latest])
        scores = np.array([s for _, s, _ in latest])
        if min((truth == 1).sum(), (truth == 0).sum()) < 5:
            continue
        auroc, variance = delong(scores[truth == 1], scores[truth == 0])
        if auroc + norm.ppf(0.975) * np.sqrt(variance) < base:
            return index
    return None


def evaluate(
    run: Run, history: list[LabelledWindow], change_at: int, config: HealthConfig
) -> dict[str, object]:
    healths = [score(effects, run.moments, history, config).health for effects in run.effects]
    health = np.array([np.nan if h is None else h for h in healths])
    realised = np.array([np.nan if a is None else a[0] for a in run.auroc])
    after = np.array(run.ends) >= change_at
    both = np.isfinite(health) & np.isfinite(realised)
    moved = [
        end for end, h, a in zip(run.ends, health, after, strict=True) if a and h < ALARM_BELOW
    ]
    return {
        "pairs": list(zip(health[both], realised[both], strict=True)),
        "pearson": float(pearsonr(health[both], realised[both])[0]),
        "spearman": float(spearmanr(health[both], realised[both])[0]),
        "false_alarms": f"{int((health[~after] < ALARM_BELOW).sum())}/{int((~after).sum())}",
        "health_before": float(np.nanmedian(health[~after])),
        "health_after": float(np.nanmedian(health[after])),
        "auroc_before": float(np.nanmedian(realised[~after])),
        "auroc_after": float(np.nanmedian(realised[after])),
        "health_moves_at": moved[0] if moved else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1400)
    parser.add_argument("--change-at", type=int, default=700)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    config = HealthConfig()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        trained = run_stream(args.seed, args.studies, args.change_at, workdir)
        history = history_of(trained)
        learned = score(trained.effects[-1], trained.moments, history, config).weights
        print(f"weights ({learned.source}, {learned.labelled_windows} windows, seed {args.seed}):")
        print("  " + ", ".join(f"{d} {w:.2f}" for d, w in sorted(learned.weights.items())))
        pooled: dict[str, list[tuple[float, float]]] = {"learned": [], "default": []}
        for offset in range(1, args.runs + 1):
            run = run_stream(args.seed + offset, args.studies, args.change_at, workdir)
            realised_at = realised_detection(run, args.change_at)
            for name, used in (("learned", history), ("default", [])):
                found = evaluate(run, used, args.change_at, config)
                pooled[name] += found.pop("pairs")  # type: ignore[arg-type]
                moves_at = found["health_moves_at"]
                lead = (
                    None if moves_at is None or realised_at is None else realised_at - int(moves_at)  # type: ignore[call-overload]
                )
                summary = ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in found.items()
                )
                print(
                    f"seed {args.seed + offset} {name} weights: {summary}; realised AUROC moves "
                    f"at study {realised_at}; lead {lead} studies "
                    f"({None if lead is None else round(lead / CONFIG.window.size, 1)} windows)"
                )

        for name, pairs in pooled.items():
            health, realised = (np.array(column) for column in zip(*pairs, strict=True))
            print(
                f"pooled {name}: {len(pairs)} windows, pearson "
                f"{pearsonr(health, realised)[0]:.2f}, "
                f"spearman {spearmanr(health, realised)[0]:.2f}"
            )


if __name__ == "__main__":
    main()
