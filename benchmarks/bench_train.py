"""Training throughput and wall time of a default synthetic retrain on the CPU.

Renders synthetic chest radiographs with ``monitor.simulate.images.render_study`` (one
finding: "lesion", prevalence 50 %), trains the default ``small_cnn`` spec with the default
``TrainConfig`` (early stopping off for a fixed epoch count) in one process, and prints the
date, machine, command, images/s and wall time. torch is limited to ``--threads`` threads
(default 1: the benchmark box is shared).

    .venv/bin/python -m benchmarks.bench_train            # --images 2000 --size 64 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import torch

from monitor.simulate.images import FakePatient, render_study
from monitor.simulate.profiles import CATALOGUE
from retrain.config import TrainConfig
from retrain.model import ModelSpec, predict
from retrain.train import train


def synthetic_radiographs(
    count: int, size: int, seed: int, prevalence: float = 0.5, lesion_gain: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rendered studies as float32 ``[N, 1, size, size]`` in [0, 1], labels ``[N, 1]``.

    Profiles cycle through the simulator's catalogue, their lesion contrast multiplied by
    ``lesion_gain`` (above 1 makes the task easier, for quick tests); brightness is the stored
    value / (2^bits - 1), inverted for MONOCHROME1 so that dense is bright, as ``ModelSpec``
    expects.
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
    """Render, train, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000, help="training images")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), load {os.getloadavg()}")
    print(f"command: python -m benchmarks.bench_train {' '.join(sys.argv[1:])}")
    started = time.perf_counter()
    train_set = synthetic_radiographs(args.images, args.size, seed=1)
    val_set = synthetic_radiographs(max(args.images // 4, 100), args.size, seed=2)
    rendered = len(train_set[0]) + len(val_set[0])
    print(f"render {rendered} images: {time.perf_counter() - started:.1f} s")
    spec = ModelSpec(input_size=args.size)
    config = TrainConfig(max_epochs=args.epochs, patience=args.epochs, device="cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as checkpoints:
        result = train(
            spec, config, train_set, val_set, checkpoint_dir=Path(checkpoints), progress=False
        )
    wall = time.perf_counter() - started
    train_seconds = sum(epoch.seconds for epoch in result.history)
    seen = args.images * len(result.history)
    for epoch in result.history:
        print(
            f"epoch {epoch.epoch}: train loss {epoch.train_loss:.4f} val loss {epoch.val_loss:.4f} "
            f"val AUROC {epoch.val_auroc[0]:.3f} ({epoch.seconds:.1f} s)"
        )
    rate = seen / train_seconds
    print(f"training passes: {seen} images in {train_seconds:.1f} s = {rate:.0f} images/s")
    print(f"train() wall time (validation, checkpoints, calibration included): {wall:.1f} s")
    print(
        f"temperature {result.model.temperature[0]:.3f}, threshold {result.model.thresholds[0]:.3f}"
    )
    started = time.perf_counter()
    predict(result.model, val_set[0])
    elapsed = time.perf_counter() - started
    print(f"predict: {len(val_set[0]) / elapsed:.0f} images/s")


if __name__ == "__main__":
    main()
