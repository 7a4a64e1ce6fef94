"""Training throughput, wall time and what v1 learns, on the simulator's own images, on the CPU.

The default run is ``radsentry train-initial``'s path (``retrain.initial``): render the
development cohort with the simulator (3 sites x 500 studies at 256 px, DICOM files written and
read back), load them as the training job does (``retrain.data.tensors_for``: the edge
extractor's decoding, area-resized to 64 px), train the default ``InitialConfig`` (its early
stopping included) and evaluate on held-out studies of the same rooms and of the degraded room.
Then it retrains as the retraining job would after a scanner change (warm start from v1, on
the development cases plus labelled studies of the degraded room) and evaluates again; and it
times the simulator's per-study scoring with the trained model (``TrainedModelScorer``).

Prints the date, machine, command, each step's wall time, images/s of the training passes and
the AUROCs. torch is limited to ``--threads`` threads (default 1: the benchmark box is shared).

    .venv/bin/python -m benchmarks.bench_train                 # the default InitialConfig
    .venv/bin/python -m benchmarks.bench_train --epochs 5      # fixed epochs, early stopping off
    .venv/bin/python -m benchmarks.bench_train --lesion-sigma 0.025 0.045 --pooling max

``--lesion-sigma`` and ``--pooling`` replace the image model's lesion sizes and v1's pooling, for
the comparisons in docs/simulate.md ("What a model learns from these images"); ``--seed`` seeds
the cohort, the split and training.

``synthetic_radiographs`` (images straight from ``render_study``, optional lesion gain) is kept
for tests that need an easy task in memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import torch

from monitor.events import InferenceEvent
from monitor.simulate import SimulationConfig, images, simulate
from monitor.simulate.images import FakePatient, render_study
from monitor.simulate.model_scores import TrainedModelScorer
from monitor.simulate.profiles import CATALOGUE
from retrain.config import TrainConfig
from retrain.data import tensors_for
from retrain.dataset import LabelledCase, Side, split_cases
from retrain.images import read_uri
from retrain.initial import Evaluation, InitialConfig, evaluate, render_cohort, train_initial
from retrain.model import ModelSpec, TrainedModel
from retrain.train import TrainResult, train


def synthetic_radiographs(
    count: int, size: int, seed: int, prevalence: float = 0.5, lesion_gain: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rendered studies as float32 ``[N, 1, size, size]`` in [0, 1], labels ``[N, 1]``.

    Rendered at ``size`` directly, in memory (no DICOM file, no resizing). Profiles cycle
    through the simulator's catalogue, their lesion contrast multiplied by ``lesion_gain``
    (above 1 makes the task easier, for quick tests); brightness is the stored value /
    (2^bits - 1), inverted for MONOCHROME1 so that dense is bright, as ``ModelSpec`` expects.
    """
    rng = np.random.default_rng(seed)
    patient = FakePatient.generate(rng, date(2020, 1, 1))
    images = np.empty((count, 1, size, size), dtype=np.float32)
    labels = (rng.random(count) < prevalence).astype(np.float32)
    for index in range(count):
        profile = CATALOGUE[index % len(CATALOGUE)]
        profile = replace(profile, lesion_contrast=profile.lesion_contrast * lesion_gain)
        dataset = render_study(profile, bool(labels[index]), rng, size, patient=patient)
        pixels = dataset.pixel_array.astype(np.float32) / float(2**profile.bits_stored - 1)
        if profile.photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
        images[index, 0] = pixels
    return torch.from_numpy(images), torch.from_numpy(labels[:, None])


def main(argv: list[str] | None = None) -> None:
    """Render, train, evaluate, retrain, report."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()}")
    print(f"command: python -m benchmarks.bench_train {' '.join(sys.argv[1:])}")
    _override_image_model(args)
    config = _config(args)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        development = render_cohort(config, root / "development")
        test = render_cohort(config, root / "test", "test")
        degraded = render_cohort(config, root / "degraded", "degraded", studies_per_site=600)
        count = len(development) + len(test) + len(degraded)
        print(f"render {count} studies at {config.render_size} px: {_since(started)}")
        started = time.perf_counter()
        initial = train_initial(config, development, root / "v1", test_cases=test)
        print(f"train_initial (load, train, evaluate): {_since(started)}")
        _report_training(initial.result, initial.manifest.totals_by_split[Side.TRAIN])
        degraded_new, degraded_held_out = _halves(degraded, config.seed)
        _report("v1", initial.test, evaluate(initial.model, degraded_held_out))
        _time_scoring(initial.model, degraded_held_out[:200], root)
        if not args.no_retrain:
            started = time.perf_counter()
            retrained = _retrain(config, initial.model, [*development, *degraded_new], root)
            print(f"retrain (warm start, {len(degraded_new)} degraded studies): {_since(started)}")
            _report("v2", evaluate(retrained, test), evaluate(retrained, degraded_held_out))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies-per-site", type=int, default=InitialConfig().studies_per_site)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="fixed epoch count, early stopping off")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-retrain", action="store_true", help="skip the warm-start retrain")
    parser.add_argument(
        "--lesion-sigma", type=float, nargs=2, metavar=("LOW", "HIGH"), help="image model override"
    )
    parser.add_argument("--pooling", choices=("max", "avg"), help="ModelSpec override")
    return parser.parse_args(argv)


def _override_image_model(args: argparse.Namespace) -> None:
    """Swap the image model's lesion sizes for this process (how docs/simulate.md compares them)."""
    if args.lesion_sigma is not None:
        images._LESION_SIGMA = tuple(args.lesion_sigma)  # type: ignore[misc]
    print(f"image model: lesion sigma {images._LESION_SIGMA}")


def _config(args: argparse.Namespace) -> InitialConfig:
    """The default ``InitialConfig`` with the command line's changes (validated)."""
    defaults = InitialConfig()
    train_changes: dict[str, object] = {"device": "cpu", "seed": args.seed}
    if args.epochs is not None:
        train_changes |= {"max_epochs": args.epochs, "patience": args.epochs}
    spec_changes = {} if args.pooling is None else {"pooling": args.pooling}
    return InitialConfig(
        seed=args.seed,
        studies_per_site=args.studies_per_site,
        train=TrainConfig.model_validate(defaults.train.model_dump() | train_changes),
        spec=ModelSpec.model_validate(defaults.spec.model_dump() | spec_changes),
    )


def _halves(
    cases: Sequence[LabelledCase], seed: int
) -> tuple[tuple[LabelledCase, ...], tuple[LabelledCase, ...]]:
    """Labelled studies of the new room for retraining, and held-out ones to evaluate on."""
    split = split_cases(cases, seed=seed, validation_share=0.5)
    return split.train, split.validation


def _retrain(
    config: InitialConfig, champion: TrainedModel, cases: Sequence[LabelledCase], root: Path
) -> TrainedModel:
    """What the retraining job does: study-level split, warm start from the champion."""
    spec = config.spec
    tensors = tensors_for(cases, spec.findings, spec.input_size, workers=config.image_workers)
    split = split_cases(cases, seed=config.seed, validation_share=config.validation_share)
    result = train(
        spec,
        config.train,
        tensors.select(case.study_key for case in split.train),
        tensors.select(case.study_key for case in split.validation),
        checkpoint_dir=root / "v2",
        progress=False,
        init_state=champion.state_dict,
    )
    _report_training(result, len(split.train))
    return result.model


def _report_training(result: TrainResult, train_cases: int) -> None:
    for epoch in result.history:
        print(
            f"epoch {epoch.epoch}: train loss {epoch.train_loss:.4f} val loss {epoch.val_loss:.4f} "
            f"val AUROC {epoch.val_auroc[0]:.3f} ({epoch.seconds:.1f} s)"
        )
    train_seconds = sum(epoch.seconds for epoch in result.history)
    seen = train_cases * len(result.history)
    print(
        f"training passes: {seen} images in {train_seconds:.1f} s = "
        f"{seen / train_seconds:.0f} images/s; best epoch {result.best_epoch}, "
        f"temperature {result.model.temperature[0]:.3f}, threshold {result.model.thresholds[0]:.3f}"
    )


def _report(name: str, test: Evaluation | None, degraded: Evaluation) -> None:
    for label, evaluation in (("held-out catalogue", test), ("degraded room", degraded)):
        if evaluation is None:
            continue
        sites = ", ".join(
            f"{site} {auroc:.3f}" for site, auroc in evaluation.auroc_by_site.items() if auroc
        )
        print(
            f"{name} on {label} ({evaluation.cases} studies, {evaluation.positives} positive): "
            f"AUROC {_value(evaluation.auroc)} ({sites}), sensitivity "
            f"{_value(evaluation.sensitivity)}, specificity {_value(evaluation.specificity)}"
        )


def _time_scoring(model: TrainedModel, cases: Sequence[LabelledCase], root: Path) -> None:
    """The simulator's per-study cost with the trained model as scorer, against the score model."""
    scorer = TrainedModelScorer(model, "1")
    datasets = [read_uri(case.dicom_uri) for case in cases if case.dicom_uri]
    started = time.perf_counter()
    for ds in datasets:
        scorer.score(ds)
    per_study = (time.perf_counter() - started) / max(len(datasets), 1)
    print(
        f"TrainedModelScorer.score: {per_study * 1000:.2f} ms per study ({len(datasets)} studies)"
    )
    config = SimulationConfig(seed=1, start=datetime(2025, 1, 1, tzinfo=UTC), studies_per_site=100)
    for name, study_scorer in (("score model", None), ("trained model", scorer)):
        started = time.perf_counter()
        events = list(simulate(config, root / "timing" / name.replace(" ", "-"), study_scorer))
        studies = sum(isinstance(event, InferenceEvent) for event in events)
        elapsed = time.perf_counter() - started
        print(f"simulate with the {name}: {elapsed / studies * 1000:.2f} ms per study ({studies})")


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


if __name__ == "__main__":
    main()
