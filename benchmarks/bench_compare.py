"""Side by side in one run: our MMD and KS against alibi-detect's MMDDrift and Evidently.

Needs alibi-detect and Evidently next to our package, so it runs in the alibi venv (ADR 0006):

    make .venv-alibi/.installed && .venv-alibi/bin/pip install 'evidently>=0.7.23,<0.8'
    .venv-alibi/bin/python -m benchmarks.bench_compare

1. Latency per window: reference 1000x16, window 500x16 (standard normal, window +0.03 sd),
   100 permutations, median of ``--repeat`` runs after one warm-up: ``MMDDetector.score``,
   alibi's ``MMDDrift.predict`` (PyTorch backend), Evidently's ``Report([DataDriftPreset()]).run``
   and ``KSDetector.score``. Fitting is not timed. Before timing, our MMD^2 and p-value are
   checked against alibi's (same permutations through ``torch.manual_seed``).
2. Power (+0.2 sd on all 16 features) and false alarms (no shift) at windows of 50/100/200/500
   rows against a reference of 1000, ``--power-repeats`` fresh reference/window pairs per cell,
   every method on the same pairs: our ``mmd`` and ``ks`` (Bonferroni, default effect floor 0.1),
   Evidently's default rule, and alibi's MMDDrift on the first ``--alibi-repeats`` pairs at n = 100.
   Evidently's DataDriftPreset with a reference of at most 1000 rows tests each numeric column
   with ``scipy.stats.ks_2samp`` (drifted when p <= 0.05, no correction) and declares dataset drift
   when at least half the columns drift; a full Report costs ~1 s, so that rule is applied to
   every pair directly and the real Report is run on the first ``--evidently-checks`` pairs of each
   cell, where its per-column p-values and dataset decision must match the rule exactly.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version

import numpy as np
import pandas as pd
import torch
from alibi_detect.cd import MMDDrift
from evidently import Report
from evidently.presets import DataDriftPreset
from numpy.typing import NDArray
from scipy.stats import ks_2samp

from benchmarks.bench_mmd import cpu_model
from monitor.drift.base import FeatureMatrix
from monitor.drift.ks import KSDetector
from monitor.drift.mmd import MMDConfig, MMDDetector

N_REFERENCE, N_FEATURES, N_PERMUTATIONS, SEED = 1000, 16, 100, 0
LATENCY_WINDOW, LATENCY_SHIFT = 500, 0.03
POWER_WINDOWS, POWER_SHIFT, ALIBI_WINDOW = (50, 100, 200, 500), 0.2, 100
EVIDENTLY_ALPHA, EVIDENTLY_DRIFT_SHARE = 0.05, 0.5  # DataDriftPreset defaults
NAMES = tuple(f"f{i}" for i in range(N_FEATURES))
Array = NDArray[np.float64]


def sample(seed: list[int], n_window: int, shift: float) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(N_REFERENCE, N_FEATURES))
    return reference, rng.normal(size=(n_window, N_FEATURES)) + shift


def standardised(reference: Array, window: Array) -> tuple[Array, Array]:
    """What our MMD feeds its kernel: both samples in reference sd units."""
    mean, sd = reference.mean(axis=0), reference.std(axis=0)
    return (reference - mean) / sd, (window - mean) / sd


def alibi_predict(detector: MMDDrift, window: Array) -> dict[str, float]:
    torch.manual_seed(SEED)  # alibi then draws the permutations our MMD draws (seed 0)
    data = detector.predict(window)["data"]
    return {key: float(data[key]) for key in ("distance", "p_val", "is_drift")}


def evidently_rule(reference: Array, window: Array) -> tuple[bool, Array]:
    """DataDriftPreset's default decision for numeric columns and a reference <= 1000 rows."""
    p_values = np.array([ks_2samp(reference[:, i], window[:, i])[1] for i in range(N_FEATURES)])
    share = float((p_values <= EVIDENTLY_ALPHA).mean())
    return share >= EVIDENTLY_DRIFT_SHARE, p_values


def evidently_report(reference: Array, window: Array) -> tuple[bool, Array]:
    """The real thing: dataset drift and per-column p-values from a DataDriftPreset report."""
    snapshot = Report([DataDriftPreset()]).run(
        current_data=pd.DataFrame(window, columns=NAMES),
        reference_data=pd.DataFrame(reference, columns=NAMES),
    )
    metrics = snapshot.dict()["metrics"]
    share = next(m for m in metrics if m["metric_name"].startswith("DriftedColumnsCount"))
    p_values = [m["value"] for m in metrics if m["metric_name"].startswith("ValueDrift")]
    return share["value"]["share"] >= EVIDENTLY_DRIFT_SHARE, np.array(p_values)


def median_ms(work: Callable[[], object], repeat: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def latency(repeat: int) -> None:
    reference, window = sample([SEED], LATENCY_WINDOW, LATENCY_SHIFT)
    ref_frame, window_frame = (pd.DataFrame(a, columns=NAMES) for a in (reference, window))
    mmd = MMDDetector(MMDConfig(n_permutations=N_PERMUTATIONS, seed=SEED))
    mmd.fit(FeatureMatrix(NAMES, reference))
    ks = KSDetector().fit(FeatureMatrix(NAMES, reference))
    alibi_ref, alibi_window = standardised(reference, window)
    alibi = MMDDrift(alibi_ref, backend="pytorch", n_permutations=N_PERMUTATIONS, device="cpu")
    report = Report([DataDriftPreset()])

    ours, theirs = mmd.score(FeatureMatrix(NAMES, window)), alibi_predict(alibi, alibi_window)
    assert abs(ours.statistic - theirs["distance"]) < 1e-5, (ours.statistic, theirs)
    assert ours.p_value is not None and abs(ours.p_value - theirs["p_val"]) <= 0.01, theirs
    timings = {
        "our `mmd` (`MMDDetector.score`)": median_ms(
            lambda: mmd.score(FeatureMatrix(NAMES, window)), repeat
        ),
        "alibi-detect `MMDDrift.predict` (PyTorch)": median_ms(
            lambda: alibi_predict(alibi, alibi_window), repeat
        ),
        "Evidently `Report([DataDriftPreset()]).run`": median_ms(
            lambda: report.run(current_data=window_frame, reference_data=ref_frame), repeat
        ),
        "our `ks` (`KSDetector.score`, 16 features)": median_ms(
            lambda: ks.score(FeatureMatrix(NAMES, window)), repeat
        ),
    }
    print(
        f"\n## Latency: reference {N_REFERENCE}x{N_FEATURES}, window {LATENCY_WINDOW}x"
        f"{N_FEATURES}, {N_PERMUTATIONS} permutations, median of {repeat}\n"
        f"(MMD^2 {ours.statistic:.6f} ours vs {theirs['distance']:.6f} alibi; "
        f"p {ours.p_value:.2f} vs {theirs['p_val']:.2f})\n"
    )
    print("| method | ms per window |\n|---|---:|")
    for label, ms in timings.items():
        print(f"| {label} | {ms:,.1f} |")
    ours_ms = timings["our `mmd` (`MMDDetector.score`)"]
    for label, ms in list(timings.items())[1:3]:
        print(f"\n{label.split(' `')[0]} / our mmd: {ms / ours_ms:.0f}x")


@dataclass
class Tally:
    """Windows flagged out of windows tested."""

    flagged: int = 0
    tested: int = 0

    def add(self, is_drift: bool) -> None:
        self.flagged += int(is_drift)
        self.tested += 1

    def __str__(self) -> str:
        if not self.tested:
            return "—"
        rate = self.flagged / self.tested
        return f"{rate:.2f} ± {math.sqrt(rate * (1 - rate) / self.tested):.2f}"


@dataclass
class Cell:
    """Every method's decisions on the windows of one (window size, shift)."""

    methods: dict[str, Tally] = field(
        default_factory=lambda: {name: Tally() for name in ("mmd", "ks", "evidently", "alibi")}
    )
    alibi_disagreements: int = 0
    evidently_checked: int = 0


def run_cell(n_window: int, shift: float, args: argparse.Namespace) -> Cell:
    cell = Cell()
    for repeat in range(args.power_repeats):
        reference, window = sample([SEED, n_window, round(shift * 100), repeat], n_window, shift)
        ref_matrix, window_matrix = FeatureMatrix(NAMES, reference), FeatureMatrix(NAMES, window)
        ours = MMDDetector().fit(ref_matrix).score(window_matrix)
        cell.methods["mmd"].add(ours.is_drift)
        cell.methods["ks"].add(KSDetector().fit(ref_matrix).score(window_matrix).is_drift)
        evidently_drift, p_values = evidently_rule(reference, window)
        cell.methods["evidently"].add(evidently_drift)
        if repeat < args.evidently_checks:
            report_drift, report_p = evidently_report(reference, window)
            assert report_drift == evidently_drift and np.allclose(report_p, p_values, rtol=1e-12)
            cell.evidently_checked += 1
        if n_window == ALIBI_WINDOW and repeat < args.alibi_repeats:
            alibi_ref, alibi_window = standardised(reference, window)
            alibi = MMDDrift(alibi_ref, backend="pytorch", n_permutations=100, device="cpu")
            alibi_drift = bool(alibi_predict(alibi, alibi_window)["is_drift"])
            cell.methods["alibi"].add(alibi_drift)
            cell.alibi_disagreements += int(alibi_drift != ours.is_drift)
    return cell


def power(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    cells = {
        (n, shift): run_cell(n, shift, args) for shift in (POWER_SHIFT, 0.0) for n in POWER_WINDOWS
    }
    print(
        f"\n## Power (+{POWER_SHIFT} sd on all {N_FEATURES} features) and false alarms (no "
        f"shift), reference {N_REFERENCE}, {args.power_repeats} pairs per cell (alibi: first "
        f"{args.alibi_repeats} at n = {ALIBI_WINDOW}); rate ± 1 standard error\n"
    )
    labels = {
        "mmd": "our `mmd` (MMD², 100 permutations)",
        "ks": "our `ks` (KS, Bonferroni)",
        "evidently": "Evidently DataDriftPreset default",
        "alibi": "alibi-detect `MMDDrift`",
    }
    sizes = " | ".join(f"n = {n}" for n in POWER_WINDOWS)
    print(f"| method | condition | {sizes} |\n|---|---|{'---:|' * len(POWER_WINDOWS)}")
    for key, label in labels.items():
        for shift, condition in ((POWER_SHIFT, "power"), (0.0, "false alarms")):
            rates = " | ".join(str(cells[n, shift].methods[key]) for n in POWER_WINDOWS)
            print(f"| {label} | {condition} | {rates} |")
    disagreements = sum(cell.alibi_disagreements for cell in cells.values())
    checked = sum(cell.evidently_checked for cell in cells.values())
    print(
        f"\nalibi vs our mmd: {disagreements} different decisions on the same windows; "
        f"Evidently reports run on {checked} pairs, all equal to the rule; "
        f"{time.perf_counter() - started:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="latency runs per method")
    parser.add_argument("--power-repeats", type=int, default=300)
    parser.add_argument("--alibi-repeats", type=int, default=200)
    parser.add_argument("--evidently-checks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Evidently and alibi deprecation chatter
    torch.set_num_threads(args.threads)
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.platform()}, {cpu_model()}")
    packages = ("numpy", "scipy", "torch", "alibi-detect", "evidently")
    print(
        f"python {platform.python_version()}, "
        + ", ".join(f"{name} {version(name)}" for name in packages)
        + f", {torch.get_num_threads()} torch thread(s)"
    )
    latency(args.repeat)
    power(args)


if __name__ == "__main__":
    main()
