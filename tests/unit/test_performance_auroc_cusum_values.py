"""The AUROC CUSUMs per value of a metadata field (``AurocCusum.by_fields``), seeded, both ways.

The world is ``monitor/simulate/scores.py`` at prevalence 0.2: units A, B, C score like a
catalogue scanner (AUROC 0.90), unit E like the degraded one (0.70 on its own; its cases rank
like about 0.82 against the catalogue reference). The family's false-alarm rate is checked
where the computation is exact (new cases drawn from the reference itself) and in the true
world with several units; detection on a new degraded unit at a small share.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from monitor.performance._auroc_cusum import _placed, case_steps, placements
from monitor.performance.auroc_cusum import (
    AurocCusumState,
    start_auroc_cusum,
    update_auroc_cusum,
    update_auroc_cusums,
)
from monitor.performance.config import AurocCusum
from monitor.performance.rules import RuleResult
from monitor.simulate.profiles import DEGRADED, default_profile
from monitor.simulate.scores import lesion_scores

SITE = default_profile("site-01")
PREVALENCE = 0.2
UNITS = np.array(["A", "B", "C"])
SHARES = (0.5, 0.3, 0.2)
FIELD = "ManufacturerModelName"

Cases = tuple[NDArray[np.bool_], NDArray[np.float64], list[str]]


def cases(rng: np.random.Generator, n: int, new_unit_share: float = 0.0) -> Cases:
    """Labelled cases from units A, B, C, and from the degraded unit E at ``new_unit_share``."""
    labels = rng.random(n) < PREVALENCE
    degraded = rng.random(n) < new_unit_share
    units = np.where(degraded, "E", UNITS[rng.choice(3, n, p=SHARES)])
    scores = np.where(
        degraded, lesion_scores(DEGRADED, labels, rng), lesion_scores(SITE, labels, rng)
    )
    return labels, scores, units.tolist()


def started(config: AurocCusum, seed: int) -> AurocCusumState:
    labels, scores, _ = cases(np.random.default_rng(seed), config.reference_cases)
    state, _ = update_auroc_cusum(start_auroc_cusum(config), labels, scores, config)
    assert state.design is not None, state.not_ready
    return state


def feed(
    state: AurocCusumState, config: AurocCusum, batch: Cases
) -> tuple[AurocCusumState, list[RuleResult]]:
    labels, scores, units = batch
    return update_auroc_cusums(state, labels, scores, config, groups={FIELD: units})


def first_signal(results: list[RuleResult]) -> tuple[int, tuple[str, str] | None] | None:
    found = [
        (int(r.numbers["first_signal_at"]), r.subgroup)
        for r in results
        if "first_signal_at" in r.numbers
    ]
    return min(found, key=lambda one: one[0]) if found else None


def test_each_cusum_is_designed_for_the_family_share_of_the_arl0() -> None:
    pooled, family = AurocCusum(), AurocCusum(by_fields=(FIELD, "SoftwareVersions"))
    assert pooled.cusum_arl0 == 10_000 and family.cusum_arl0 == 30_000
    assert started(family, seed=1).design.arl0 >= 30_000  # type: ignore[union-attr]


def test_family_false_alarm_rate_is_the_configured_one_where_it_is_exact() -> None:
    """New cases drawn from the reference itself, three units: the first signal of the pooled
    CUSUM or of any unit's comes after ``arl0`` monitored cases on average, not three times as
    often as one CUSUM designed for ``arl0``."""
    config = AurocCusum(
        arl0=500, reference_cases=500, reference_confidence=0.5, drop=0.05, by_fields=(FIELD,)
    )
    state = started(config, seed=2)
    labels, scores, _ = cases(np.random.default_rng(2), 500)
    rng = np.random.default_rng(3)
    lengths = []
    for _ in range(200):
        run, found = state, None
        while found is None:
            pick = rng.integers(0, 500, 200)
            units = UNITS[rng.choice(3, 200, p=SHARES)].tolist()
            run, results = feed(run, config, (labels[pick], scores[pick], units))
            found = first_signal(results)
        lengths.append(found[0])
    mean = float(np.mean(lengths))
    # Measured: 718 (standard error 49) against the nominal 500: conservative, as the pooled
    # CUSUM and the units' read the same cases (each is designed for 1,000 in its own cases;
    # designed for 500 each, the family would signal about twice as often).
    assert 0.8 * config.arl0 < mean < 2 * config.arl0


def test_no_alarm_at_the_nominal_rate_on_stable_streams_with_several_units() -> None:
    """The true world (a fresh reference each time, the default allowance for its error):
    units A, B, C and, from the start of monitoring, a new healthy unit D at 20%. Counted: the
    CUSUMs that signalled at all (an alarm episode each in the service)."""
    config = AurocCusum(arl0=2000, reference_cases=1000, by_fields=(FIELD,))
    alarmed, monitored = 0, 0
    for seed in range(10):
        state = started(config, seed=100 + seed)
        rng = np.random.default_rng(200 + seed)
        for _ in range(20):
            labels, scores, units = cases(rng, 200)
            units = ["D" if rng.random() < 0.2 else unit for unit in units]
            state, _ = feed(state, config, (labels, scores, units))
        assert set(state.by_value[FIELD]) == {"A", "B", "C", "D"}
        values = state.by_value[FIELD].values()
        alarmed += (state.signals > 0) + sum(cusum.signals > 0 for cusum in values)
        monitored += state.cases
    # Nominal: 40,000 monitored cases / ARL0 2,000 = 20 false alarms of the family. Measured:
    # 4 (the pooled CUSUM and one unit's in two of the ten streams; with their repeated rises
    # to h, 22 signals, where the pooled CUSUM alone at ARL0 2,000 gives 18 on these streams).
    assert alarmed <= monitored / config.arl0


def test_a_degraded_new_unit_at_a_small_share_signals_on_its_own_cases_first() -> None:
    """Unit E at 10% of the studies: its own cases rank 0.08 lower against the reference, the
    pooled CUSUM sees a tenth of that. The unit's CUSUM signals first, after some 120 of its
    cases; the pooled CUSUM alone takes about three times as long."""
    family = AurocCusum(arl0=10_000, by_fields=(FIELD,))
    pooled = AurocCusum(arl0=10_000)
    delays, pooled_delays = [], []
    for seed in range(10):
        state, alone = started(family, seed=300 + seed), started(pooled, seed=300 + seed)
        batch = cases(np.random.default_rng(400 + seed), 6000, new_unit_share=0.1)
        _, results = feed(state, family, batch)
        found = first_signal(results)
        assert found is not None and found[1] == (FIELD, "E")
        delays.append(found[0])
        _, result = update_auroc_cusum(alone, batch[0], batch[1], pooled)
        pooled_delays.append(result.numbers.get("first_signal_at", 6000))
    # Measured medians: 931 cases with the head start (1,117 without it; 62-166 of them from
    # unit E; at drop 0.03 the 1 % budget allows a head start of only 0.13 h) against 3,402 for
    # the pooled CUSUM alone (none within 6,000 cases for 3 of the 10 seeds, counted as 6,000).
    assert np.median(delays) < 1500 < np.median(pooled_delays)


def test_result_names_the_field_and_value_and_counts_in_pooled_cases() -> None:
    config = AurocCusum(
        arl0=2000, reference_cases=500, drop=0.05, reference_confidence=0.9, by_fields=(FIELD,)
    )
    state = started(config, seed=11)
    state, results = feed(state, config, cases(np.random.default_rng(12), 1200, 0.3))
    assert results[0].subgroup is None and results[0].rule == "auroc_cusum"
    by_value = {r.subgroup: r for r in results[1:]}
    assert set(by_value) == {(FIELD, unit) for unit in "ABCE"}
    worst = by_value[(FIELD, "E")]
    assert worst.breached is True and "first_signal_at" in worst.numbers
    assert worst.explanation.startswith(
        "AUROC CUSUM on cases with ManufacturerModelName 'E': evidence of a drop"
    )
    assert "together" in worst.explanation  # the false-alarm rate is the family's
    assert "for each new value" in worst.explanation  # and the head start's chance
    assert worst.n_cases == state.by_value[FIELD]["E"].cases < 1200
    assert worst.numbers["batch_auroc"] < worst.numbers["reference_auroc"] - 0.05
    assert sum(r.n_cases for r in results[1:]) == results[0].n_cases == 1200


def test_values_beyond_the_cap_are_counted_untracked_and_stay_in_the_pooled_cusum() -> None:
    config = AurocCusum(reference_cases=500, drop=0.05, max_values=2, by_fields=(FIELD,))
    state = started(config, seed=13)
    labels, scores, units = cases(np.random.default_rng(14), 300)
    units = ["X", "Y", *units[2:]]  # X and Y come first: A, B, C are beyond the cap
    state, results = feed(state, config, (labels, scores, units))
    assert set(state.by_value[FIELD]) == {"X", "Y"}
    assert state.untracked == {FIELD: 298}
    assert state.cases == 300 and len(results) == 3


def test_cases_without_a_value_and_fields_not_given_only_count_pooled() -> None:
    config = AurocCusum(reference_cases=500, drop=0.05, by_fields=(FIELD, "SoftwareVersions"))
    state = started(config, seed=15)
    labels, scores, units = cases(np.random.default_rng(16), 200)
    values: list[str | None] = [None, *units[1:]]
    state, results = update_auroc_cusums(state, labels, scores, config, groups={FIELD: values})
    assert results[0].n_cases == 200 and sum(r.n_cases for r in results[1:]) == 199
    assert sum(c.cases for c in state.by_value[FIELD].values()) == 199
    assert "SoftwareVersions" not in state.by_value
    with pytest.raises(ValueError, match="values for"):
        update_auroc_cusums(state, labels, scores, config, groups={FIELD: units[:10]})


def test_state_with_values_survives_a_json_round_trip() -> None:
    config = AurocCusum(reference_cases=500, drop=0.05, by_fields=(FIELD,))
    state = started(config, seed=17)
    labels, scores, units = cases(np.random.default_rng(18), 600, 0.3)
    whole, _ = feed(state, config, (labels, scores, units))
    half, _ = feed(state, config, (labels[:250], scores[:250], units[:250]))
    restored = AurocCusumState.model_validate_json(half.model_dump_json())
    assert restored == half
    continued, _ = feed(restored, config, (labels[250:], scores[250:], units[250:]))
    assert continued == whole


def test_new_values_only_leaves_the_reference_units_to_the_pooled_cusum() -> None:
    """Unit C scores like the degraded reader from the start, reference included: with a
    CUSUM per unit it signals on its own cases; with ``new_values_only`` it gets none (it is
    part of the reference), and the new unit E still does."""
    worse_c = AurocCusum(reference_cases=1000, drop=0.05, by_fields=(FIELD,), new_values_only=False)
    only_new = worse_c.model_copy(update={"new_values_only": True})
    found = {}
    for config in (worse_c, only_new):
        rng = np.random.default_rng(19)
        state = start_auroc_cusum(config)
        for _ in range(8):  # 1,000 reference cases, then 3,000 monitored
            labels, scores, units = cases(rng, 500)
            worse = np.array(units) == "C"
            scores = np.where(worse, lesion_scores(DEGRADED, labels, rng), scores)
            state, _ = feed(state, config, (labels, scores, units))
        _, results = feed(state, config, cases(rng, 2000, new_unit_share=0.2))
        found[config.new_values_only] = (state, {r.subgroup for r in results[1:]})
    state, subgroups = found[False]
    assert state.by_value[FIELD]["C"].signals > 0 and (FIELD, "C") in subgroups
    state, subgroups = found[True]
    assert start_auroc_cusum(worse_c, previous=state).reference_values == state.reference_values
    assert sorted(state.reference_values[FIELD]) == ["A", "B", "C"]
    assert sum(state.reference_values[FIELD].values()) == 1000
    assert state.by_value.get(FIELD, {}) == {} and subgroups == {(FIELD, "E")}


def test_a_new_value_starts_at_its_head_start_and_a_reference_value_at_zero() -> None:
    config = AurocCusum(reference_cases=1000, drop=0.08, by_fields=(FIELD,), new_values_only=False)
    rng = np.random.default_rng(21)
    labels, scores, units = cases(rng, 1000)
    state, _ = update_auroc_cusums(
        start_auroc_cusum(config), labels, scores, config, groups={FIELD: units}
    )
    design = state.design
    assert design is not None
    assert 0 < design.head_start <= design.limit // 2
    assert 0 < design.head_start_false_alarm <= config.new_value_false_alarm
    assert design.arl1_head_start < design.arl1
    labels, scores, _ = cases(rng, 2)
    state, _ = feed(state, config, (labels, scores, ["A", "Z"]))
    steps = case_steps(
        design,
        labels,
        placements(
            labels,
            scores,
            np.asarray(state.reference_positive),
            np.asarray(state.reference_negative),
        ),
    )
    assert state.by_value[FIELD]["A"].units == max(0, int(steps[0]))
    assert state.by_value[FIELD]["Z"].units == max(0, design.head_start + int(steps[1]))
    for update in ({"new_value_false_alarm": 0.0}, {"by_fields": ()}):
        quiet = config.model_copy(update=update)
        calm = start_auroc_cusum(quiet, previous=state).design
        assert calm is not None and calm.head_start == 0 and calm.head_start_false_alarm == 0.0


def test_a_healthy_new_value_signals_from_its_head_start_at_its_computed_chance() -> None:
    """Where the computation is exact (new cases drawn from the reference itself, no allowance
    for its error): of 20,000 healthy new values, the share whose CUSUM reaches h from its
    head start before it first falls to 0 is the design's ``head_start_false_alarm``, at most
    ``new_value_false_alarm``. Each value's CUSUM run on the design's own grid steps."""
    config = AurocCusum(
        reference_cases=1000, drop=0.08, reference_confidence=0.5, by_fields=(FIELD,)
    )
    state = started(config, seed=22)
    design = state.design
    assert design is not None
    placed = _placed(np.asarray(state.reference_positive), np.asarray(state.reference_negative))
    labels = np.repeat([True, False], [p.size for p in placed.by_class])
    steps = case_steps(design, labels, np.concatenate(placed.by_class))
    runs, rng = 20_000, np.random.default_rng(23)
    units = np.full(runs, design.head_start)
    signalled = np.zeros(runs, dtype=bool)
    open_ = np.ones(runs, dtype=bool)
    while open_.any():
        units[open_] = np.maximum(0, units[open_] + rng.choice(steps, int(open_.sum())))
        signalled |= open_ & (units >= design.limit)
        open_ &= (units > 0) & (units < design.limit)
    share, chance = float(signalled.mean()), design.head_start_false_alarm
    # Measured: 0.0092 against the computed 0.0100 (budget 0.01; head start 0.39 h).
    assert chance <= config.new_value_false_alarm
    assert abs(share - chance) < 4 * np.sqrt(chance * (1 - chance) / runs)


def test_the_head_start_finds_a_degraded_new_unit_sooner_and_healthy_streams_stay_quiet() -> None:
    """Both ways on the same streams, with and without the head start: unit E at 10 % of the
    studies is found after fewer of its own cases; on streams with a healthy new unit D at
    20 % instead, D's CUSUM (head start included) stays quiet."""
    with_head = AurocCusum(arl0=10_000, drop=0.08, by_fields=(FIELD,))
    without = with_head.model_copy(update={"new_value_false_alarm": 0.0})
    own_cases: dict[AurocCusum, list[int]] = {with_head: [], without: []}
    for seed in range(10):
        batch = cases(np.random.default_rng(500 + seed), 4000, new_unit_share=0.1)
        for config, found in own_cases.items():
            _, results = feed(started(config, seed=600 + seed), config, batch)
            first = {r.subgroup: r.numbers.get("first_signal_at") for r in results}
            at = first[(FIELD, "E")]
            assert at is not None
            found.append(batch[2][: int(at)].count("E"))
    # Measured medians of unit E's own cases to its first signal: 32 with the head start,
    # 58 without.
    assert np.median(own_cases[with_head]) < 0.8 * np.median(own_cases[without])
    for seed in range(10):
        rng = np.random.default_rng(700 + seed)
        labels, scores, units = cases(rng, 4000)
        units = ["D" if rng.random() < 0.2 else unit for unit in units]
        state, _ = feed(started(with_head, seed=800 + seed), with_head, (labels, scores, units))
        assert state.by_value[FIELD]["D"].signals == 0
