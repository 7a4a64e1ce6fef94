"""``radsentry backtest --labels`` on a long labelled history: wall time as history grows.

Writes one site's history of ``--events`` studies over ten years (the size of the hospital
history of issue 21: 160,000 studies, about 44 a day) with one label event per study (lesion
present in 30 %, delay lognormal with a median of two days, 3 % corrected a week later), and
a degradation at 60 % of the history (the model's AUROC falls from about 0.86 to 0.72), then
runs the real command in a child process with the default settings (a tracker refresh every
500 labels). ``--baseline REV`` runs the same command, on the same files, from a git worktree
of revision ``REV`` as well: the side-by-side comparison with the code before issue 21.

    .venv/bin/python -m benchmarks.bench_labelled_replay                       # 160k + 160k
    .venv/bin/python -m benchmarks.bench_labelled_replay --events 20000 --baseline 45191bd
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from monitor.events import LabelEvent, LabelSource, Prediction, to_json
from monitor.simulate.features import FeatureStreamConfig, feature_stream

START = datetime(2016, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=3653)
RUN_CLI = "import sys; from monitor.service.cli import app; sys.argv[0] = 'radsentry'; app()"
REPO = Path(__file__).resolve().parents[1]


def write_history(events_path: Path, labels_path: Path, n: int, seed: int = 0) -> float:
    """Events and labels as gzipped JSONL (see the module docstring); returns seconds taken."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    config = FeatureStreamConfig(
        site_id="site-01", n_events=n, seed=seed, start=START, interval=SPAN / n
    )
    onset = int(n * 0.6)
    with (
        gzip.open(events_path, "wb", compresslevel=1) as events,
        gzip.open(labels_path, "wb", compresslevel=1) as labels,
    ):
        for index, event in enumerate(feature_stream(config)):
            positive = int(rng.random() < 0.3)
            separation = 1.5 if index < onset else 0.8
            logit = rng.normal(separation * positive - 1.2, 1.0)
            scores = dict(event.prediction.scores, lesion=1.0 / (1.0 + math.exp(-logit)))
            event = event.model_copy(
                update={"prediction": Prediction(scores=scores, threshold=0.5)}
            )
            events.write(to_json(event) + b"\n")
            delay = timedelta(hours=float(rng.lognormal(math.log(48.0), 0.8)))
            label = LabelEvent(
                event_id=_label_id(index, 0),
                site_id=event.site_id,
                model_name=event.model_name,
                study_key=event.study_key,
                occurred_at=event.occurred_at + delay,
                labels={"lesion": positive},
                source=LabelSource.RADIOLOGIST,
            )
            labels.write(to_json(label) + b"\n")
            if rng.random() < 0.03:
                corrected = label.model_copy(
                    update={
                        "event_id": _label_id(index, 1),
                        "occurred_at": label.occurred_at + timedelta(days=7),
                        "labels": {"lesion": 1 - positive},
                    }
                )
                labels.write(to_json(corrected) + b"\n")
    return time.perf_counter() - started


def _label_id(index: int, revision: int) -> object:
    import uuid

    return uuid.uuid5(uuid.NAMESPACE_URL, f"bench-labelled-replay/{index}/{revision}")


def run(events: Path, labels: Path, out: Path, checkout: Path) -> tuple[float, str]:
    """Wall seconds of the CLI run from ``checkout``, and its output's last lines."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "COLUMNS": "160"}
    command = ["backtest", "--events", str(events), "--labels", str(labels), "--out", str(out)]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *command],
        cwd=checkout,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=160_000)
    parser.add_argument("--baseline", help="a git revision to run side by side")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-lr")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    events = args.workdir / f"events-{args.events}.jsonl.gz"
    labels = args.workdir / f"labels-{args.events}.jsonl.gz"
    if not (events.exists() and labels.exists()):
        seconds = write_history(events, labels, args.events)
        print(f"wrote {args.events:,} events and their labels in {seconds:.0f} s")
    checkouts = {"this checkout": REPO}
    if args.baseline:
        baseline = args.workdir / f"baseline-{args.baseline}"
        if not baseline.exists():
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO),
                    "worktree",
                    "add",
                    "--detach",
                    str(baseline),
                    args.baseline,
                ],
                check=True,
                capture_output=True,
            )
        checkouts = {args.baseline: baseline, **checkouts}
    with gzip.open(labels, "rb") as lines:
        n_labels = sum(1 for _ in lines)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.events:,} events, {n_labels:,} label events"
    )
    results = {}
    for name, checkout in checkouts.items():
        wall, output = run(events, labels, args.workdir / f"alerts-{name}.jsonl", checkout)
        results[name] = wall
        tail = "\n".join(line for line in output.splitlines()[-14:] if line.strip())
        print(f"\n{name}: {wall:,.1f} s ({args.events / wall:,.0f} events/s)\n{tail}")
    if len(results) == 2:
        before, after = results.values()
        print(f"\nspeed-up: {before / after:,.1f}x")


if __name__ == "__main__":
    main()
