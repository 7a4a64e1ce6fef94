"""Sequential detection across windows (issue 20, item 3): the CUSUM's decision interval is
computed from the reference's own chunk effects to meet an in-control run length, and it finds a
sustained moderate shift that the window rule misses, while a one-window blip raises nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.drift.sequential import SequentialConfig, decision_interval, standardised
from monitor.events import InferenceEvent
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.unit.test_drift_calibration import KEY, LEARNED, WINDOW

SEQUENTIAL = LEARNED.model_copy(update={"sequential": SequentialConfig()})


def siegmund_arl0(h: float, k: float) -> float:
    """Siegmund's approximation of a CUSUM's in-control run length on N(0, 1) increments."""
    b = h + 1.166
    return (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)


def test_the_decision_interval_meets_siegmunds_run_length_on_normal_effects() -> None:
    z = np.random.default_rng(1).standard_normal(20_000)
    h = decision_interval({"a": z}, SequentialConfig(arl0_checks=500))
    assert h is not None
    # Siegmund's approximation is good to a few percent at these sizes.
    assert siegmund_arl0(h, 0.5) == pytest.approx(500, rel=0.15)


def test_a_fresh_in_control_cusum_runs_at_least_its_target_on_average() -> None:
    """The run length is estimated from censored runs (underestimated): new draws from the
    same standardised chunk values must not alarm sooner than the target on average."""
    rng = np.random.default_rng(2)
    chunks = {f"f{i}": rng.gamma(2.0, 1.0, 20) for i in range(6)}  # skewed, like distances
    chunk_z = {name: standardised(v, v.mean(), v.std(ddof=1)) for name, v in chunks.items()}
    config = SequentialConfig(arl0_checks=200, seed=3)
    h = decision_interval(chunk_z, config)
    assert h is not None
    values = np.stack(list(chunk_z.values()))
    lengths = []
    for run in range(300):
        draws = np.random.default_rng(100 + run)
        sums, step = np.zeros(len(values)), 0
        while step < 20_000:
            step += 1
            picks = draws.integers(0, values.shape[1], len(values))
            sums = np.maximum(0.0, sums + values[np.arange(len(values)), picks] - config.k)
            if sums.max() >= h:
                break
        lengths.append(step)
    mean, error = float(np.mean(lengths)), float(np.std(lengths) / np.sqrt(len(lengths)))
    assert mean + 3 * error >= 200, (mean, error)


def shifted(seed: int, shift: float, until: int | None = None) -> list[InferenceEvent]:
    """The calibration tests' wandering site (exposure wanders 0.6 within-week spreads a week);
    from study 3000 on (to ``until``) exposure falls by ``shift`` within-week spreads."""
    rng = np.random.default_rng(seed)
    events = list(feature_stream(FeatureStreamConfig(n_events=5000, seed=seed)))
    exposure = np.array([e.metadata.Exposure or 0.0 for e in events])
    spread = float(exposure.std())
    levels = rng.normal(0.0, 0.6 * spread, size=len(events) // WINDOW + 1)
    changed = []
    for i, event in enumerate(events):
        value = exposure[i] + levels[i // WINDOW]
        if i >= 3000 and (until is None or i < until):
            value -= shift * spread
        metadata = event.metadata.model_copy(update={"Exposure": max(value, 0.01)})
        changed.append(event.model_copy(update={"metadata": metadata}))
    return changed


def first_alert(config: EngineConfig, events: list[InferenceEvent]) -> int | None:
    engine = DriftEngine(config)
    found = None
    for index, event in enumerate(events):
        if engine.process(event).alerts and found is None:
            found = index
    return found


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_sustained_moderate_shift_is_found_by_the_cusum_and_missed_window_by_window(
    seed: int,
) -> None:
    events = shifted(seed, shift=1.0)
    with_cusum = first_alert(SEQUENTIAL, events)
    assert with_cusum is not None and 3000 <= with_cusum < 3000 + 15 * WINDOW
    window_rule = first_alert(LEARNED, events)
    assert window_rule is None or window_rule > with_cusum


def test_a_one_window_blip_raises_nothing() -> None:
    events = shifted(11, shift=1.5, until=3000 + WINDOW)
    assert first_alert(SEQUENTIAL, events) is None


def test_the_sums_and_the_interval_survive_a_restart() -> None:
    events = shifted(12, shift=1.0)
    engine = DriftEngine(SEQUENTIAL)
    for event in events[:3500]:
        engine.process(event)
    sums = dict(engine.streams[KEY].alarms["ks"].cusum)
    assert sums and max(sums.values()) > 0
    restored = DriftEngine(SEQUENTIAL)
    restored.restore(engine.export(KEY), engine.export_reference(KEY))
    assert restored.streams[KEY].alarms["ks"].cusum == sums
    h = engine.streams[KEY].learned["ks"].cusum_h
    assert h is not None and restored.streams[KEY].learned["ks"].cusum_h == h
    rest = events[3500:]
    assert [restored.process(e).alerts for e in rest] == [engine.process(e).alerts for e in rest]


def test_the_sequential_rule_needs_learned_thresholds() -> None:
    with pytest.raises(ValueError, match="sequential needs learned"):
        EngineConfig.model_validate({**LEARNED.model_dump(), "learned": None, "sequential": {}})


def test_a_new_reference_starts_the_sums_afresh() -> None:
    engine = DriftEngine(SEQUENTIAL)
    for event in shifted(12, shift=1.0)[:3500]:
        engine.process(event)
    assert engine.streams[KEY].alarms["ks"].cusum
    engine.rebaseline(KEY, requested_by="ml-ops", reason="new scanner", requested_at=0.0)
    assert engine.streams[KEY].alarms["ks"].cusum == {}
