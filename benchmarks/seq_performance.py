"""Sequential AUROC alarm vs NannyML's realised-performance chunks (issue 21, item 3).

The world is the simulator's score model (``monitor/simulate/scores.py``): a catalogue scanner
(AUROC 0.90) at prevalence 0.2, labelled cases in label-arrival order at 44 a day (16,000 a
year: the ten-year hospital of issue 21 had about 160,000). Each seed draws one stable stream
of 28,000 labelled cases. A *degradation* starts at a random case ``onset`` in 11,000-11,999:
a new unit whose images score like the simulator's degraded scanner (separation 0.74, AUROC
0.70) takes a share of the studies that grows linearly from 0 at ``onset`` to ``final`` over
``ramp`` cases and then stays; before the onset the degraded stream is the stable one. Every
case has a unit: three existing units (A, B, C: half, 30% and 20% of the other studies), a
healthy new unit D that takes 20% of the studies over cases 5,000-7,000 (it scores like the
others: a new value that must not alarm), and the degraded new unit E.

Methods, all reading the same streams:

* ``auroc_cusum`` (ours; ``monitor.performance.auroc_cusum``): reference = the first 2,000
  labelled cases, every later case monitored; an alarm is a signal (the statistic rising to h);
* ``auroc_cusum by unit``: the same with ``by_fields=("unit",)``, a CUSUM per unit besides the
  pooled one, the family's ARL0 kept (``AurocCusum.cusum_arl0``); each CUSUM has its own
  ``AlarmState`` as in the service, and an alarm is the first signal of any of them;
* ``error_rate_cusum`` (the existing rule, defaults, reference = the first 500 cases);
* NannyML 0.13.1 ``PerformanceCalculator(metrics=["roc_auc"], chunk_size=c)`` with its default
  thresholds (reference chunks' mean -/+ 3 standard deviations), reference = the first 10
  chunks, run in ``.venv-nannyml`` (``seq_performance_nannyml.py``); an alarm is a chunk whose
  AUROC is below the lower threshold (drops only; the upper threshold's alerts are not
  counted), known when the chunk's last case is labelled; consecutive alarming chunks count
  as one false alarm.

Per method: detection delay in labelled cases after the onset (the first alarm whose case is
at or after the onset; none within 16,000 cases: not detected), median and range over seeds,
and false alarms per stable year from the stable streams (our CUSUMs over all their monitored
cases, NannyML over its analysis chunks). Also our in-control ARL: the design's computed ARL0
against (a) a simulation that draws new cases from the reference itself (where the computation
is exact) and (b) the exact ARL under the true score distributions given each reference.

    make bench-seq-performance    # builds .venv-nannyml, then runs this with --explore
    PYTHONPATH=. .venv/bin/python -m benchmarks.seq_performance [--seeds 100] [--explore]
    PYTHONPATH=. .venv/bin/python -m benchmarks.seq_performance --nannyml-by-unit
    PYTHONPATH=. .venv/bin/python -m benchmarks.seq_performance --no-nannyml --unit-c-auroc 0.87
    PYTHONPATH=. .venv/bin/python -m benchmarks.seq_performance --family-check
    PYTHONPATH=. .venv/bin/python -m benchmarks.seq_performance --no-nannyml --arl0 3000 5000

``--arl0`` adds the per-unit default (new values only, drop 0.08) at each ARL0 given, to set
its false alarms per stable year beside NannyML's chunk sizes (delays at matched false alarms).

Results: docs/benchmarks.md ("Sequential AUROC alarm vs NannyML").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from monitor.drift.alarms import AlarmState, Transition
from monitor.performance._auroc_cusum import case_steps, placements
from monitor.performance._grid_cusum import run_length
from monitor.performance.auroc_cusum import (
    AurocCusumState,
    start_auroc_cusum,
    update_auroc_cusum,
    update_auroc_cusums,
)
from monitor.performance.config import AurocCusum, ErrorRateCusum, PerformanceConfig
from monitor.performance.metrics import BinaryMetrics, binary_metrics
from monitor.performance.rules import (
    CusumState,
    RuleResult,
    RulesConfig,
    case_errors,
    evaluate_rules,
    observe_rule,
    start_cusum,
    update_cusum,
)
from monitor.service.settings import PerformanceSettings
from monitor.simulate.profiles import DEGRADED, ScannerProfile, default_profile
from monitor.simulate.scores import DEFAULT_MODEL, THRESHOLD, lesion_scores, separation

PREVALENCE = 0.2
PER_DAY = 44
YEAR = 16_000
LENGTH = 28_000
ONSET_FROM, HORIZON = 11_000, 16_000
CHUNK_SIZES = (250, 500, 1000)
REFRESH = 100
"""Labels between two checks: the tracker's ``min_new_labels``."""
REFERENCE_CASES = WINDOW = 500
"""The tracker's ``estimate_reference`` and ``rolling_window``."""
ALARMS = PerformanceSettings().alarms
SITE = default_profile("site-01")
NANNYML_PYTHON = Path(".venv-nannyml/bin/python")

Bools = NDArray[np.bool_]
Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Scenario:
    name: str
    final: float
    """Share of the studies from the new unit once the ramp is over."""
    ramp: int
    """Labelled cases over which the share grows linearly from 0."""


SCENARIOS = (
    Scenario("new unit at 50% at once", 0.5, 1),
    Scenario("new unit to 50% over 4,000 cases", 0.5, 4000),
    Scenario("new unit to 50% over 1,000 cases", 0.5, 1000),
    Scenario("new unit to 30% over 8,000 cases", 0.3, 8000),
)
UNIT_NAMES = np.array(["A", "B", "C", "D", "E"])
EXISTING_SHARES = (0.5, 0.3, 0.2)
"""Units A, B, C's shares of the studies that are not from a new unit."""
HEALTHY, DEGRADED_UNIT = 3, 4
HEALTHY_FROM, HEALTHY_RAMP, HEALTHY_SHARE = 5000, 2000, 0.2
"""Unit D, healthy and new: from case 5,000 its share grows to 20% over 2,000 cases."""
BY_UNIT = ("unit",)
VARIANTS = {
    "auroc_cusum (defaults)": AurocCusum(),
    "by unit, every value (by_fields unit, new_values_only off)": AurocCusum(
        by_fields=BY_UNIT, new_values_only=False
    ),
    "by unit, every value, drop 0.08": AurocCusum(
        by_fields=BY_UNIT, drop=0.08, new_values_only=False
    ),
    "by unit, new values only (by_fields unit), drop 0.08": AurocCusum(
        by_fields=BY_UNIT, drop=0.08
    ),
}
EXPLORE = {
    "ARL0 50,000": AurocCusum(arl0=50_000),
    "drop 0.05": AurocCusum(drop=0.05),
    "drop 0.05, ARL0 50,000": AurocCusum(drop=0.05, arl0=50_000),
    "allowance 0.9": AurocCusum(reference_confidence=0.9),
    "reference 500, drop 0.05": AurocCusum(reference_cases=500, drop=0.05),
    "by unit, every value, ARL0 50,000": AurocCusum(
        by_fields=BY_UNIT, arl0=50_000, new_values_only=False
    ),
    "by unit, every value, drop 0.05": AurocCusum(
        by_fields=BY_UNIT, drop=0.05, new_values_only=False
    ),
    "by unit, every value, drop 0.08, ARL0 50,000": AurocCusum(
        by_fields=BY_UNIT, drop=0.08, arl0=50_000, new_values_only=False
    ),
}


@dataclass
class Streams:
    labels: Bools
    """seeds x (1 stable + scenarios) x LENGTH."""
    scores: Floats
    units: NDArray[np.int8]
    """Index into UNIT_NAMES of each case's unit."""
    onsets: NDArray[np.int64]


def draw(
    rng: np.random.Generator,
    new_share: Floats,
    healthy_share: Floats,
    unit_c: ScannerProfile = SITE,
) -> tuple[Bools, Floats, NDArray[np.int8]]:
    """Labelled cases, each from the degraded new unit with probability ``new_share``, else
    from the healthy new unit with ``healthy_share``, else from an existing one (unit C
    scoring like ``unit_c``)."""
    labels = rng.random(new_share.size) < PREVALENCE
    new_unit = rng.random(new_share.size) < new_share
    healthy = rng.random(new_share.size) < healthy_share
    existing = rng.choice(len(EXISTING_SHARES), new_share.size, p=EXISTING_SHARES)
    units = np.where(new_unit, DEGRADED_UNIT, np.where(healthy, HEALTHY, existing))
    scores = np.where(
        new_unit, lesion_scores(DEGRADED, labels, rng), lesion_scores(SITE, labels, rng)
    )
    if unit_c is not SITE:  # drawn last: the default streams stay what they were
        scores = np.where(units == 2, lesion_scores(unit_c, labels, rng), scores)
    return labels, scores, units.astype(np.int8)


def scoring_like(auroc: float) -> ScannerProfile:
    """A catalogue unit whose lesion contrast gives the score model this AUROC."""
    wanted = float(np.sqrt(2.0) * norm.ppf(auroc))
    model = DEFAULT_MODEL
    cnr = model.reference_cnr * wanted / model.base_separation
    return dataclasses.replace(SITE, lesion_contrast=cnr * SITE.noise_sd)


def healthy_shares(start: int, stop: int) -> Floats:
    """Unit D's share of the studies at cases ``start`` to ``stop``."""
    position = np.arange(start, stop, dtype=np.float64)
    return HEALTHY_SHARE * np.clip((position - HEALTHY_FROM) / HEALTHY_RAMP, 0.0, 1.0)


def make_streams(seeds: int, unit_c: ScannerProfile = SITE, first_seed: int = 0) -> Streams:
    labels = np.zeros((seeds, 1 + len(SCENARIOS), LENGTH), dtype=bool)
    scores = np.zeros(labels.shape)
    units = np.zeros(labels.shape, dtype=np.int8)
    onsets = np.zeros(seeds, dtype=np.int64)
    for seed in range(seeds):
        rng = np.random.default_rng([21, 3, first_seed + seed])
        onsets[seed] = onset = ONSET_FROM + int(rng.integers(0, 1000))
        stable = draw(rng, np.zeros(LENGTH), healthy_shares(0, LENGTH), unit_c)
        labels[seed, :], scores[seed, :], units[seed, :] = stable
        after = np.arange(LENGTH - onset, dtype=np.float64)
        for k, scenario in enumerate(SCENARIOS, start=1):
            share = scenario.final * np.minimum(1.0, after / scenario.ramp)
            drawn = draw(rng, share, healthy_shares(onset, LENGTH), unit_c)
            labels[seed, k, onset:], scores[seed, k, onset:], units[seed, k, onset:] = drawn
    return Streams(labels, scores, units, onsets)


@dataclass
class Outcome:
    delays: list[list[int | None]]
    """Per scenario, per seed: labelled cases from the onset to the alarm (None: none)."""
    false_alarms: int
    """Stable streams: runs of breaching checks (every REFRESH labels for the CUSUMs and the
    window rule, every chunk for NannyML), per CUSUM of a family."""
    stable_cases: int
    alerts: int = 0
    """Stable streams: alert episodes the service's AlarmState opens on those checks (one
    AlarmState per CUSUM of a family, as the service keeps them)."""
    signals: int | None = None
    """CUSUMs only: rises of the statistic to h (several can fall in one breaching check)."""
    first_by: list[dict[str, int]] | None = None
    """Families only, per scenario: which CUSUM signalled first ("pooled" or the unit)."""


State = TypeVar("State")
Update = Callable[[State, Bools, Floats, NDArray[np.int8]], tuple[State, list[RuleResult]]]
Key = tuple[str, str] | None


def refreshes(
    update: Update[State],
    state: State,
    cases: tuple[Bools, Floats, NDArray[np.int8]],
    alarms: dict[Key, AlarmState],
    last: dict[Key, bool],
) -> tuple[State, int, int]:
    """Feed ``cases`` REFRESH at a time, each result to its CUSUM's alarm as the tracker
    does: the state, alerts opened, runs of breaching checks begun (``last``: whether each
    CUSUM's latest check breached, updated)."""
    labels, scores, units = cases
    opened, quiet_then_breach = 0, 0
    for start in range(0, labels.size, REFRESH):
        stop = start + REFRESH
        state, results = update(state, labels[start:stop], scores[start:stop], units[start:stop])
        for result in results:
            alarm = alarms.setdefault(result.subgroup, AlarmState())
            transition = observe_rule(alarm, result, float(start), ALARMS)
            opened += transition == Transition.OPENED
            quiet_then_breach += bool(result.breached) and not last.get(result.subgroup, False)
            last[result.subgroup] = bool(result.breached)
    return state, opened, quiet_then_breach


def sequential(
    streams: Streams,
    start: Callable[[Bools, Floats], State],
    update: Update[State],
    signals: Callable[[State], tuple[int, int]],
) -> tuple[Outcome, list[State]]:
    """A CUSUM or a family of them (``signals``: their signals and the monitored cases so far)
    over every seed: the stable stream refresh by refresh, each scenario from the onset in one
    batch (the family's alarm: its earliest signal)."""
    outcome, states = Outcome([[] for _ in SCENARIOS], 0, 0, 0, 0), []
    outcome.first_by = [{} for _ in SCENARIOS]
    for seed, onset in enumerate(streams.onsets.tolist()):
        labels, scores, units = streams.labels[seed], streams.scores[seed], streams.units[seed]
        alarms: dict[Key, AlarmState] = {}
        last: dict[Key, bool] = {}
        state = start(labels[0], scores[0])
        stable = (labels[0], scores[0], units[0])
        before, opened, runs = refreshes(
            update, state, tuple(column[:onset] for column in stable), alarms, last
        )
        states.append(before)
        after, more_opened, more_runs = refreshes(
            update, before, tuple(column[onset:] for column in stable), alarms, last
        )
        count, cases = signals(after)
        outcome.signals = (outcome.signals or 0) + count
        outcome.false_alarms += runs + more_runs
        outcome.stable_cases += cases
        outcome.alerts += opened + more_opened
        _, cases_before = signals(before)
        for k in range(len(SCENARIOS)):
            window = slice(onset, onset + HORIZON)
            _, results = update(
                before, labels[k + 1, window], scores[k + 1, window], units[k + 1, window]
            )
            firsts = [
                (int(r.numbers["first_signal_at"]), r.subgroup)
                for r in results
                if "first_signal_at" in r.numbers
            ]
            if not firsts:
                outcome.delays[k].append(None)
                continue
            first, subgroup = min(firsts, key=lambda found: found[0])
            outcome.delays[k].append(first - cases_before)
            by = "pooled" if subgroup is None else subgroup[1]
            outcome.first_by[k][by] = outcome.first_by[k].get(by, 0) + 1
    return outcome, states


def our_cusum(streams: Streams, config: AurocCusum) -> tuple[Outcome, list[AurocCusumState]]:
    def update(
        state: AurocCusumState, labels: Bools, scores: Floats, units: NDArray[np.int8]
    ) -> tuple[AurocCusumState, list[RuleResult]]:
        groups = {"unit": UNIT_NAMES[units].tolist()} if config.by_fields else None
        return update_auroc_cusums(state, labels, scores, config, groups=groups)

    def signals(state: AurocCusumState) -> tuple[int, int]:
        per_value = sum(c.signals for values in state.by_value.values() for c in values.values())
        return state.signals + per_value, state.cases

    return sequential(streams, lambda labels, scores: start_auroc_cusum(config), update, signals)


def error_rate_cusum(streams: Streams) -> Outcome:
    config = ErrorRateCusum()

    def start(labels: Bools, scores: Floats) -> CusumState:
        cases = slice(0, REFERENCE_CASES)
        return start_cusum(binary_metrics(labels[cases], scores[cases], THRESHOLD), config)

    def update(
        state: CusumState, labels: Bools, scores: Floats, units: NDArray[np.int8]
    ) -> tuple[CusumState, list[RuleResult]]:
        state, result = update_cusum(state, case_errors(labels, scores, THRESHOLD), config)
        return state, [result]

    outcome = sequential(streams, start, update, lambda state: (state.signals, state.cases))[0]
    outcome.first_by = None
    return outcome


def alerts_of(breaches: Bools) -> int:
    """Alert episodes the service's AlarmState opens on this sequence of checks."""
    alarm = AlarmState()
    return sum(
        alarm.observe(breached, float(index), ALARMS) == Transition.OPENED
        for index, breached in enumerate(breaches.tolist())
    )


def runs_of(breaches: Bools) -> int:
    """Runs of consecutive breaching checks."""
    return int(np.sum(breaches & ~np.pad(breaches[:-1], (1, 0))))


def window_rule(streams: Streams) -> Outcome:
    """The tracker's ``auroc_drop`` (defaults): the latest 500 labelled cases against the first
    500, checked every REFRESH new labels, alerts through the same AlarmState."""
    rules = RulesConfig(sensitivity_floor=None, calibration_limit=None, error_rate_cusum=None)
    metrics = PerformanceConfig(min_calibration_cases=10**9)  # the AUROC only: faster
    outcome = Outcome([[] for _ in SCENARIOS], 0, 0)

    def breaches(labels: Bools, scores: Floats, reference: BinaryMetrics, ends: range) -> Bools:
        found = []
        for end in ends:
            window = slice(end - WINDOW, end)
            current = binary_metrics(labels[window], scores[window], THRESHOLD, metrics)
            found.append(evaluate_rules(current, reference, rules)[0].breached is True)
        return np.array(found, dtype=bool)

    for seed, onset in enumerate(streams.onsets.tolist()):
        labels, scores = streams.labels[seed], streams.scores[seed]
        cases = slice(0, REFERENCE_CASES)
        reference = binary_metrics(labels[0, cases], scores[0, cases], THRESHOLD, metrics)
        ends = range(REFERENCE_CASES + REFRESH, LENGTH + 1, REFRESH)
        stable = breaches(labels[0], scores[0], reference, ends)
        outcome.alerts += alerts_of(stable)
        outcome.false_alarms += runs_of(stable)
        outcome.stable_cases += LENGTH - REFERENCE_CASES
        after = range(((onset + REFRESH - 1) // REFRESH) * REFRESH, onset + HORIZON + 1, REFRESH)
        for k in range(len(SCENARIOS)):
            hits = np.flatnonzero(breaches(labels[k + 1], scores[k + 1], reference, after))
            outcome.delays[k].append(after[hits[0]] - onset if hits.size else None)
    return outcome


def run_nannyml(**arrays: Any) -> dict[str, NDArray[Any]]:
    """The worker, in its own virtualenv, on these arrays (its docstring says which)."""
    if not NANNYML_PYTHON.exists():
        raise SystemExit(f"{NANNYML_PYTHON} missing: run `make .venv-nannyml/.installed` first")
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "streams.npz", Path(folder) / "chunks.npz"
        np.savez(source, chunk_sizes=np.array(CHUNK_SIZES), **arrays)
        worker = Path(__file__).with_name("seq_performance_nannyml.py")
        subprocess.run(  # NannyML's usage statistics off: nothing leaves the machine
            [str(NANNYML_PYTHON), str(worker), str(source), str(target)],
            check=True,
            env={**os.environ, "NML_DISABLE_USAGE_LOGGING": "1"},
        )
        return dict(np.load(target))


def nannyml(streams: Streams) -> dict[int, Outcome]:
    """NannyML's chunks per chunk size."""
    seeds, kinds, _ = streams.labels.shape
    chunks = run_nannyml(
        labels=streams.labels.reshape(seeds * kinds, -1),
        scores=streams.scores.reshape(seeds * kinds, -1),
    )
    outcomes = {}
    for size in CHUNK_SIZES:
        ends = chunks[f"end_{size}"].reshape(seeds, kinds, -1)
        low = chunks[f"auroc_{size}"] < chunks[f"lower_{size}"]
        low = low.reshape(seeds, kinds, -1)
        analysed = ends.shape[2] * size * seeds
        outcome = Outcome(
            [[] for _ in SCENARIOS],
            sum(runs_of(low[seed, 0]) for seed in range(seeds)),
            analysed,
            sum(alerts_of(low[seed, 0]) for seed in range(seeds)),
        )
        for seed, onset in enumerate(streams.onsets.tolist()):
            for k in range(len(SCENARIOS)):
                hits = ends[seed, k + 1][low[seed, k + 1] & (ends[seed, k + 1] >= onset)]
                delay = int(hits[0]) - onset + 1 if hits.size else None
                outcome.delays[k].append(delay if delay is not None and delay <= HORIZON else None)
        outcomes[size] = outcome
    return outcomes


def nannyml_by_unit(streams: Streams) -> dict[int, Outcome]:
    """NannyML's chunks on one unit's cases alone, against the stream's whole reference: unit
    E's in the degraded streams (the delays), each of A-D's in the stable ones (false alarms,
    per year of the stable stream's analysed cases)."""
    seeds, kinds, _ = streams.labels.shape
    pairs = [(seed, 0, unit) for seed in range(seeds) for unit in range(DEGRADED_UNIT)]
    pairs += [(seed, k, DEGRADED_UNIT) for seed in range(seeds) for k in range(1, kinds)]
    chunks = run_nannyml(
        labels=np.stack([streams.labels[seed, k] for seed, k, _ in pairs]),
        scores=np.stack([streams.scores[seed, k] for seed, k, _ in pairs]),
        units=np.stack([streams.units[seed, k] for seed, k, _ in pairs]),
        unit_of=np.array([unit for _, _, unit in pairs]),
    )
    outcomes = {}
    for size in CHUNK_SIZES:
        ends, which = chunks[f"end_{size}"], chunks[f"stream_{size}"]
        low = chunks[f"auroc_{size}"] < chunks[f"lower_{size}"]
        outcome = Outcome([[] for _ in SCENARIOS], 0, (LENGTH - 10 * size) * seeds)
        for index, (seed, k, _) in enumerate(pairs):
            mine = which == index
            if k == 0:
                outcome.false_alarms += runs_of(low[mine])
                outcome.alerts += alerts_of(low[mine])
                continue
            onset = int(streams.onsets[seed])
            hits = ends[mine][low[mine] & (ends[mine] >= onset)]
            delay = int(hits[0]) - onset + 1 if hits.size else None
            outcome.delays[k - 1].append(delay if delay is not None and delay <= HORIZON else None)
        outcomes[size] = outcome
    return outcomes


def either(first: Outcome, second: Outcome) -> Outcome:
    """Both methods together: the earlier alarm, the false alarms of both."""
    delays = [
        [min((d for d in pair if d is not None), default=None) for pair in zip(a, b, strict=True)]
        for a, b in zip(first.delays, second.delays, strict=True)
    ]
    return Outcome(
        delays,
        first.false_alarms + second.false_alarms,
        first.stable_cases,
        first.alerts + second.alerts,
    )


def true_arl0(state: AurocCusumState, grid: int = 20_000) -> float:
    """Exact in-control ARL given this reference, under the true score distributions: each
    class's scores on a fine quantile grid, their steps, mixed at the true prevalence."""
    design = state.design
    assert design is not None
    quantiles = norm.ppf((np.arange(grid) + 0.5) / grid)
    half = separation(SITE) / 2
    steps, weights = [], []
    for positive, share in ((True, PREVALENCE), (False, 1.0 - PREVALENCE)):
        logits = (half if positive else -half) + quantiles
        scores = 0.5 * (1.0 + np.tanh(0.5 * logits))
        labels = np.full(grid, positive)
        placement = placements(
            labels,
            scores,
            np.asarray(state.reference_positive),
            np.asarray(state.reference_negative),
        )
        steps.append(case_steps(design, labels, placement))
        weights.append(np.full(grid, share / grid))
    return run_length(np.concatenate(steps), np.concatenate(weights), design.limit)


def exactness_check(streams: Streams, runs: int = 300) -> tuple[float, float, float]:
    """Design ARL0 (reference distribution) vs the mean run length of the grid CUSUM fed with
    cases drawn from the reference itself (ARL0 2,000, no allowance): (exact, mean, SE)."""
    config = AurocCusum(arl0=2000, reference_confidence=0.5, reference_cases=500)
    labels, scores = streams.labels[0, 0, :500], streams.scores[0, 0, :500]
    start, _ = update_auroc_cusum(start_auroc_cusum(config), labels, scores, config)
    assert start.design is not None
    rng = np.random.default_rng(2103)
    lengths = []
    for _ in range(runs):
        state = start
        while True:  # first_signal_at counts monitored cases from the start
            pick = rng.integers(0, 500, 4000)
            state, result = update_auroc_cusum(state, labels[pick], scores[pick], config)
            if "first_signal_at" in result.numbers:
                lengths.append(int(result.numbers["first_signal_at"]))
                break
    mean, se = float(np.mean(lengths)), float(np.std(lengths) / np.sqrt(runs))
    return start.design.arl0_reference, mean, se


def family_check(streams: Streams, runs: int = 300) -> tuple[float, float, float, float]:
    """The family's false-alarm rate where the computation is exact: new cases drawn from a
    500-case reference itself, each given unit A, B or C at their shares, ARL0 2,000, no
    allowance, a CUSUM per unit and the pooled one. Returns the design's per-CUSUM ARL0 (in
    its own cases), the family's nominal ARL0 and the mean (SE) monitored cases to the
    family's first signal."""
    config = AurocCusum(arl0=2000, reference_confidence=0.5, reference_cases=500, by_fields=BY_UNIT)
    labels, scores = streams.labels[0, 0, :500], streams.scores[0, 0, :500]
    start, _ = update_auroc_cusum(start_auroc_cusum(config), labels, scores, config)
    assert start.design is not None
    rng = np.random.default_rng(2104)
    lengths = []
    for _ in range(runs):
        state = start
        while True:
            pick = rng.integers(0, 500, 1000)
            units = UNIT_NAMES[rng.choice(3, 1000, p=EXISTING_SHARES)].tolist()
            state, results = update_auroc_cusums(
                state, labels[pick], scores[pick], config, groups={"unit": units}
            )
            firsts = [
                r.numbers["first_signal_at"] for r in results if "first_signal_at" in r.numbers
            ]
            if firsts:
                lengths.append(int(min(firsts)))
                break
    mean, se = float(np.mean(lengths)), float(np.std(lengths) / np.sqrt(runs))
    return start.design.arl0, float(config.arl0), mean, se


def common_shift(seeds: int = 10) -> list[str]:
    """A monotone shift of every new score (logit + shift: AUROC unchanged, e.g. a recalibrated
    model): monitored cases to the first signal of the default rule, per seed (None: none in
    16,000). Placements against the reference are not invariant to it."""
    config, lines = AurocCusum(), []
    for shift in (-0.5, 0.5, 1.0):
        found = []
        for seed in range(seeds):
            rng = np.random.default_rng([21, 4, seed])
            start, _ = update_auroc_cusum(
                start_auroc_cusum(config), *draw(rng, np.zeros(2000), np.zeros(2000))[:2], config
            )
            labels, scores, _ = draw(rng, np.zeros(HORIZON), np.zeros(HORIZON))
            logits = np.log(scores / (1.0 - scores)) + shift
            shifted = 0.5 * (1.0 + np.tanh(0.5 * logits))
            _, result = update_auroc_cusum(start, labels, shifted, config)
            first = result.numbers.get("first_signal_at")
            found.append(None if first is None else int(first))
        lines.append(f"logit shift {shift:+.1f}: first signal after {found}")
    return lines


def summary(delays: list[int | None]) -> str:
    found = [d for d in delays if d is not None]
    if not found:
        return f"none of {len(delays)}"
    missed = len(delays) - len(found)
    text = f"{int(np.median(found)):,} ({min(found):,}-{max(found):,})"
    return text + (f", {missed} missed" if missed else "")


def per_year(outcome: Outcome) -> str:
    years = outcome.stable_cases / YEAR
    signals = "" if outcome.signals is None else f" / {outcome.signals / years:.2f}"
    counts = f"{outcome.false_alarms / years:.2f} / {outcome.alerts / years:.2f}{signals}"
    return f"{counts} ({years:,.0f} y)"


def medians(outcome: Outcome) -> list[float]:
    return [float(np.median([d if d is not None else HORIZON for d in k])) for k in outcome.delays]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="streams from seed N on (e.g. 100: a hundred streams no setting was chosen on)",
    )
    parser.add_argument("--explore", action="store_true", help="also the exploration variants")
    parser.add_argument("--no-nannyml", action="store_true")
    parser.add_argument(
        "--nannyml-by-unit", action="store_true", help="also NannyML on each unit's cases alone"
    )
    parser.add_argument("--common-shift", action="store_true", help="only the common-shift check")
    parser.add_argument("--family-check", action="store_true", help="only the family ARL0 check")
    parser.add_argument(
        "--unit-c-auroc",
        type=float,
        help="existing unit C (20%% of the older units' studies) scores with this AUROC, "
        "every stream (default: like the others, 0.90)",
    )
    parser.add_argument(
        "--arl0",
        type=int,
        nargs="+",
        default=[],
        help="also the per-unit CUSUM (new values only, drop 0.08) at each of these ARL0s",
    )
    parser.add_argument(
        "--no-head-start",
        action="store_true",
        help="also the per-unit CUSUM without a new value's head start, at the default ARL0 "
        "and each --arl0 (the comparison for AurocCusum.new_value_false_alarm)",
    )
    args = parser.parse_args()
    if args.common_shift:
        print("\n".join(common_shift()))
        return
    started = time.perf_counter()
    unit_c = SITE if args.unit_c_auroc is None else scoring_like(args.unit_c_auroc)
    streams = make_streams(args.seeds, unit_c, args.first_seed)
    if args.family_check:
        design, nominal, mean, se = family_check(streams)
        print(
            f"family: each CUSUM's ARL0 {design:,.0f} in its own cases; family ARL0 nominal "
            f"{nominal:,.0f}, simulated {mean:,.0f} (SE {se:.0f}, 300 runs)"
        )
        return
    rows: dict[str, Outcome] = {}
    variants = VARIANTS | (EXPLORE if args.explore else {})
    for arl0 in args.arl0:
        variants[f"by unit, new values only, drop 0.08, ARL0 {arl0:,}"] = AurocCusum(
            by_fields=BY_UNIT, drop=0.08, arl0=arl0
        )
    if args.no_head_start:
        for arl0 in [AurocCusum().arl0, *args.arl0]:
            variants[f"by unit, new values only, drop 0.08, ARL0 {arl0:,}, no head start"] = (
                AurocCusum(by_fields=BY_UNIT, drop=0.08, arl0=arl0, new_value_false_alarm=0.0)
            )
    arl_lines = []
    for name, config in variants.items():
        t = time.perf_counter()
        rows[name], states = our_cusum(streams, config)
        designs = [s.design for s in states if s.design is not None]
        truths = np.array([true_arl0(s) for s in states if s.design is not None])
        arl_lines.append(
            f"| {name} | {np.median([d.decision_interval for d in designs]):.2f} | "
            f"{np.median([d.arl0 for d in designs]):,.0f} | "
            f"{np.median([d.arl0_reference for d in designs]):,.0f} | "
            f"{np.median(truths):,.0f} | {np.quantile(truths, 0.1):,.0f} | "
            f"{np.mean(truths >= config.arl0):.0%} | {np.median([d.arl1 for d in designs]):,.0f} |"
            f" {np.median([d.head_start / d.limit for d in designs]):.2f} / "
            f"{np.median([d.head_start_false_alarm for d in designs]):.3f} / "
            f"{np.median([d.arl1_head_start for d in designs]):,.0f} |"
            f" {time.perf_counter() - t:.0f} s |"
        )
    rows["error_rate_cusum (defaults)"] = error_rate_cusum(streams)
    rows["auroc_drop window rule (defaults)"] = window_rule(streams)
    nanny = {} if args.no_nannyml else nannyml(streams)
    for size, outcome in nanny.items():
        rows[f"NannyML chunks of {size}"] = outcome
    if args.nannyml_by_unit:
        for size, outcome in nannyml_by_unit(streams).items():
            rows[f"NannyML per unit, chunks of {size} of one unit's cases"] = outcome
            if size in nanny:
                rows[f"NannyML pooled + per unit, chunks of {size}"] = either(nanny[size], outcome)
    print(f"{args.seeds} seeds, {LENGTH:,} labelled cases per stream, {PER_DAY}/day\n")
    header = " | ".join(s.name for s in SCENARIOS)
    print(f"| method | {header} | per stable year: breach runs / alerts / signals |")
    print("|---|" + "---|" * len(SCENARIOS) + "---|")
    for name, outcome in rows.items():
        cells = " | ".join(summary(d) for d in outcome.delays)
        print(f"| {name} | {cells} | {per_year(outcome)} |")
    for name, outcome in rows.items():
        if outcome.first_by and any(len(by) > 1 or "pooled" not in by for by in outcome.first_by):
            print(f"\nfirst signal by, {name}: " + "; ".join(str(by) for by in outcome.first_by))
    for name in variants:
        for size, outcome in nanny.items():
            ratios = [a / b for a, b in zip(medians(rows[name]), medians(outcome), strict=True)]
            print(
                f"\nmedian delay, {name} / NannyML chunks of {size}: "
                + ", ".join(f"{r:.2f}" for r in ratios)
            )
    print(
        "\n| variant | median h | ARL0 design | ARL0 at the reference | true ARL0 (median) "
        "| true ARL0 (10th pct) | true >= nominal | ARL1 at the drop "
        "| a new value's head start (of h) / its false-signal chance / ARL1 from it | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(arl_lines))
    exact, mean, se = exactness_check(streams)
    print(f"\nexactness: ARL0 computed {exact:,.0f}, simulated {mean:,.0f} (SE {se:.0f}, 300 runs)")
    print(f"elapsed {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
