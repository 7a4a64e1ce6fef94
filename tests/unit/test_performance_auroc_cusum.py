"""The AUROC CUSUM on placement values, on seeded streams of the simulator's score model.

The world is ``monitor/simulate/scores.py`` at prevalence 0.2: AUROC 0.90 on a catalogue
scanner, 0.70 on the degraded one. The exactness of the computed ARL is checked where it is
exact (new cases drawn from the reference itself); the false-alarm rate in the true world,
where the reference is only an estimate, with the default allowance for that error.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from monitor.performance._auroc_cusum import (
    case_steps,
    design_auroc_cusum,
    placements,
    tilt_to_mean,
    tilted_weights,
)
from monitor.performance._grid_cusum import run_length, signal_before_zero
from monitor.performance.auroc_cusum import (
    AurocCusumState,
    start_auroc_cusum,
    update_auroc_cusum,
)
from monitor.performance.config import AurocCusum
from monitor.performance.rules import CusumConfigError
from monitor.simulate.profiles import DEGRADED, default_profile
from monitor.simulate.scores import lesion_scores

SITE = default_profile("site-01")
PREVALENCE = 0.2
SMALL = AurocCusum(arl0=500, reference_cases=500, reference_confidence=0.5, drop=0.05)


def cases(
    rng: np.random.Generator, n: int, degraded_share: float = 0.0, prevalence: float = PREVALENCE
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    labels = rng.random(n) < prevalence
    degraded = rng.random(n) < degraded_share
    scores = np.where(
        degraded, lesion_scores(DEGRADED, labels, rng), lesion_scores(SITE, labels, rng)
    )
    return labels, scores


def started(config: AurocCusum, seed: int) -> AurocCusumState:
    labels, scores = cases(np.random.default_rng(seed), config.reference_cases)
    state, result = update_auroc_cusum(start_auroc_cusum(config), labels, scores, config)
    assert state.design is not None and state.cases == 0, state.not_ready
    assert result.breached is False and result.n_cases == 0
    return state


def first_signal(
    state: AurocCusumState, config: AurocCusum, draw: object, limit: int
) -> int | None:
    """Monitored cases until the first signal (None within ``limit``), in refresh-sized batches."""
    start = state.cases
    while state.cases - start < limit:
        labels, scores = draw()  # type: ignore[operator]
        state, result = update_auroc_cusum(state, labels, scores, config)
        if "first_signal_at" in result.numbers:
            return int(result.numbers["first_signal_at"]) - start
    return None


def test_placements_are_shares_of_the_other_reference_class_with_ties_half() -> None:
    reference_positive = np.array([0.4, 0.6, 0.8])
    reference_negative = np.array([0.1, 0.4, 0.5, 0.9])
    got = placements([1, 1, 0, 0], [0.4, 1.0, 0.6, 0.0], reference_positive, reference_negative)
    # 0.4 positive: above 0.1, ties 0.4 -> 1.5 / 4; 1.0 above all 4; negative 0.6: positives
    # above it 0.8 and tied 0.6 -> 1.5 / 3; negative 0.0: all 3 above.
    assert got.tolist() == [1.5 / 4, 1.0, 1.5 / 3, 1.0]


def test_mean_reference_placement_of_each_class_is_the_reference_auroc() -> None:
    labels, scores = cases(np.random.default_rng(1), 600)
    scores = np.round(scores, 2)  # ties
    positive, negative = np.sort(scores[labels]), np.sort(scores[~labels])
    auroc = roc_auc_score(labels, scores)
    for which in (True, False):
        chosen = scores[labels == which]
        got = placements(np.full(chosen.size, which), chosen, positive, negative)
        assert got.mean() == pytest.approx(auroc, abs=1e-12)


def test_the_alternative_is_the_tilt_with_the_configured_drop() -> None:
    values = np.random.default_rng(2).beta(6, 1, 300)
    theta = tilt_to_mean(values, values.mean() - 0.05)
    assert theta > 0
    assert tilted_weights(values, theta) @ values == pytest.approx(values.mean() - 0.05, abs=1e-9)


def test_computed_arl_matches_a_simulation_where_it_is_exact() -> None:
    """New cases drawn from the reference itself: their placements follow its distribution."""
    state = started(SMALL, seed=3)
    design = state.design
    assert design is not None
    assert 500 <= design.arl0 == design.arl0_reference < 560  # no allowance at confidence 0.5
    labels, scores = cases(np.random.default_rng(3), SMALL.reference_cases)
    rng = np.random.default_rng(4)

    def draw() -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        pick = rng.integers(0, labels.size, 100)
        return labels[pick], scores[pick]

    lengths = [first_signal(state, SMALL, draw, 100_000) for _ in range(300)]
    mean = float(np.mean([length for length in lengths if length is not None]))
    # Measured: 485 over 300 runs (standard error 25) against the exact 511.
    assert abs(mean - design.arl0) < 0.15 * design.arl0


def test_grid_steps_of_the_design_are_those_the_cases_take() -> None:
    state = started(SMALL, seed=5)
    assert state.design is not None
    labels, scores = cases(np.random.default_rng(6), 400)
    placement = placements(
        labels, scores, np.asarray(state.reference_positive), np.asarray(state.reference_negative)
    )
    steps = case_steps(state.design, labels, placement)
    assert steps.dtype == np.int64 and np.abs(steps).max() <= SMALL.resolution
    assert steps[labels].mean() < 0 and steps[~labels].mean() < 0  # both classes drift down


def test_no_alarm_on_the_same_distribution_at_the_nominal_rate() -> None:
    """The true world with a fresh reference each time: the allowance for the reference's own
    error keeps the false-alarm rate at or below the nominal one."""
    config = AurocCusum(arl0=2000, reference_cases=1000)
    signals, monitored = 0, 0
    for seed in range(12):
        state = started(config, seed=100 + seed)
        rng = np.random.default_rng(200 + seed)
        for _ in range(20):
            state, _ = update_auroc_cusum(state, *cases(rng, 200), config)
        signals, monitored = signals + state.signals, monitored + state.cases
    # Nominal: 48,000 monitored cases / ARL0 2,000 = 24 signals. Measured: 19 (signals count
    # every rise to h, also the repeated ones of one unlucky reference).
    assert signals <= monitored / config.arl0


def test_a_change_of_prevalence_moves_the_in_control_arl_little() -> None:
    """Each class drifts down on its own, so prevalence only mixes two negative drifts: the
    exact ARL at prevalences 0.05-0.9 stays near the design's (computed at the reference's)."""
    state = started(SMALL, seed=7)
    design = state.design
    assert design is not None
    positive, negative = np.asarray(state.reference_positive), np.asarray(state.reference_negative)
    steps = [
        case_steps(
            design,
            np.full(values.size, which),
            placements(np.full(values.size, which), values, positive, negative),
        )
        for which, values in ((True, positive), (False, negative))
    ]
    assert steps[0].mean() < 0 and steps[1].mean() < 0
    for prevalence in (0.05, 0.2, 0.6, 0.9):
        weights = np.concatenate(
            [
                np.full(positive.size, prevalence / positive.size),
                np.full(negative.size, (1 - prevalence) / negative.size),
            ]
        )
        arl = run_length(np.concatenate(steps), weights, design.limit)
        # Measured: 529, 502, 442, 405 against the design's 502.
        assert design.arl0 / 1.5 < arl < design.arl0 * 1.5


def test_detects_the_degraded_scanner_quickly_and_a_partial_share_later() -> None:
    config = AurocCusum(arl0=20_000, reference_cases=2000, drop=0.05)
    state = started(config, seed=9)
    assert state.design is not None
    rng = np.random.default_rng(10)
    state, _ = update_auroc_cusum(state, *cases(rng, 2000), config)  # in control first
    full = [first_signal(state, config, lambda: cases(rng, 50, 1.0), 5000) for _ in range(20)]
    half = [first_signal(state, config, lambda: cases(rng, 50, 0.5), 5000) for _ in range(20)]
    # Measured medians: 87 (every study degraded) and 226 (half of them) cases.
    assert all(d is not None for d in full + half)
    assert np.median(full) < 150 and np.median(half) < 400  # type: ignore[arg-type]


def test_result_and_explanation_name_the_numbers() -> None:
    config = AurocCusum(arl0=2000, reference_cases=500, drop=0.05, reference_confidence=0.9)
    state = started(config, seed=11)
    state, result = update_auroc_cusum(
        state, *cases(np.random.default_rng(12), 600, 1.0), config, finding="lesion"
    )
    design = state.design
    assert design is not None and result.breached is True and result.rule == "auroc_cusum"
    assert result.threshold == pytest.approx(design.decision_interval)
    assert result.numbers["batch_auroc"] < result.numbers["reference_auroc"] - 0.05
    assert result.explanation.startswith("AUROC CUSUM for lesion: evidence of a drop")
    assert f"against the reference's {design.reference_auroc:.2f} (500 cases)" in result.explanation
    assert "Tuned to find a drop of 0.05" in result.explanation


def test_state_survives_a_json_round_trip() -> None:
    state = started(SMALL, seed=13)
    labels, scores = cases(np.random.default_rng(14), 600, 0.5)
    whole, whole_result = update_auroc_cusum(state, labels, scores, SMALL)
    half, _ = update_auroc_cusum(state, labels[:250], scores[:250], SMALL)
    restored = AurocCusumState.model_validate_json(half.model_dump_json())
    assert restored == half
    continued, _ = update_auroc_cusum(restored, labels[250:], scores[250:], SMALL)
    assert continued == whole and continued.cases == 600
    assert whole_result.statistic is not None


def test_reference_collected_across_batches_and_not_ready_until_complete() -> None:
    config = AurocCusum(reference_cases=300, min_positives=30)
    rng = np.random.default_rng(15)
    state = start_auroc_cusum(config)
    state, result = update_auroc_cusum(state, *cases(rng, 200), config, finding="lesion")
    assert result.breached is None and state.design is None
    assert result.explanation.startswith(
        "AUROC CUSUM for lesion not evaluated: collecting the reference: 200 of 300"
    )
    # Few positives: the reference grows past 300 cases until it has 30 of them.
    labels = np.zeros(200, dtype=bool)
    labels[-40:] = True
    scores = np.where(labels, 0.8, 0.2) + rng.uniform(-0.15, 0.15, 200)
    state, _ = update_auroc_cusum(state, labels, scores, config)
    assert len(state.reference_positive) >= 30
    assert len(state.reference_positive) + len(state.reference_negative) < 400


def test_too_uncertain_or_separated_references_are_not_ready_with_the_reason() -> None:
    rng = np.random.default_rng(16)
    tiny_drop = AurocCusum(reference_cases=100, drop=0.005, min_positives=10, min_negatives=10)
    state, _ = update_auroc_cusum(start_auroc_cusum(tiny_drop), *cases(rng, 100), tiny_drop)
    assert state.design is None and "too uncertain" in str(state.not_ready)
    separated = AurocCusum(reference_cases=100, min_positives=10, min_negatives=10)
    labels = np.arange(100) < 30
    state, _ = update_auroc_cusum(
        start_auroc_cusum(separated), labels, np.where(labels, 0.9, 0.1), separated
    )
    assert state.design is None and "cannot fall by 0.03" in str(state.not_ready)


def test_config_mismatch_raises_and_a_restart_keeps_the_reference() -> None:
    state = started(SMALL, seed=17)
    other = SMALL.model_copy(update={"drop": 0.08})
    with pytest.raises(CusumConfigError):
        update_auroc_cusum(state, [True], [0.5], other)
    restarted = start_auroc_cusum(other, previous=state)
    assert restarted.reference_positive == state.reference_positive
    assert restarted.design is not None and restarted.design.drop == 0.08


def test_grid_run_length_of_two_steps_is_the_error_rate_chain() -> None:
    """The shared chain against a direct simulation of a two-step CUSUM."""
    rng = np.random.default_rng(18)
    exact = run_length([7, -2], [0.2, 0.8], 30)
    lengths = []
    for _ in range(2000):
        units, n = 0, 0
        while units < 30:
            units = max(0, units + (7 if rng.random() < 0.2 else -2))
            n += 1
        lengths.append(n)
    assert abs(np.mean(lengths) - exact) < 4 * np.std(lengths) / np.sqrt(2000)


def test_grid_signal_before_zero_is_the_gamblers_ruin() -> None:
    """Steps of +1 and -1: from ``s``, the chance of reaching ``N`` before 0 is the gambler's
    ruin's ``(1 - r^s) / (1 - r^N)``, ``r = q / p``."""
    up, limit = 0.4, 12
    chances = signal_before_zero([1, -1], [up, 1 - up], limit)
    ratio = (1 - up) / up
    exact = [(1 - ratio**s) / (1 - ratio**limit) for s in range(limit)]
    assert chances == pytest.approx(exact, abs=1e-12)
    assert np.all(np.diff(chances) > 0)


def test_grid_run_length_from_a_head_start() -> None:
    """With steps of at most +1 the statistic passes every level on its way up, so the run
    length from 0 is the time to reach ``s`` plus the run length from ``s``."""
    steps, probabilities, limit = [1, -1, -3], [0.45, 0.45, 0.1], 25
    whole = run_length(steps, probabilities, limit)
    for start in (0, 5, 12, 24):
        to_start = run_length(steps, probabilities, start) if start else 0.0
        from_start = run_length(steps, probabilities, limit, start=start)
        assert from_start == pytest.approx(whole - to_start, rel=1e-9)


def test_design_is_deterministic_and_reports_both_arls() -> None:
    labels, scores = cases(np.random.default_rng(19), 2000)
    positive, negative = np.sort(scores[labels]), np.sort(scores[~labels])
    first = design_auroc_cusum(positive, negative, AurocCusum())
    second = design_auroc_cusum(positive, negative, AurocCusum())
    assert not isinstance(first, str) and first == second
    assert first.arl0 >= AurocCusum().arl0 and first.arl0_reference > first.arl0
    assert first.arl1 < first.arl0 / 10
