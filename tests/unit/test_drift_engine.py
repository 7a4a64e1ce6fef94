"""The drift engine: references, windows, detectors and alarms over whole event streams."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import timedelta

import pytest

from monitor.drift.alerts import StreamKey
from monitor.drift.base import InsufficientDataError
from monitor.drift.config import EngineConfig, OnlineSettings, WindowConfig
from monitor.drift.engine import DriftEngine, Outcome
from monitor.drift.online import OnlineConfig
from monitor.drift.state import StateFormatError
from monitor.events import InferenceEvent
from monitor.simulate.features import FeatureStreamConfig, feature_stream

# Small enough for unit-test speed, large enough for the detectors' minimums.
FAST = EngineConfig(
    reference_size=400,
    window=WindowConfig(size=200, min_size=100),
    detectors={"online": OnlineSettings(detector=OnlineConfig(ert=10_000, n_bootstraps=500))},
)
KEY = StreamKey("site-01", "cxr-lesion", "1.0.0")


def stream(**overrides: object) -> list[InferenceEvent]:
    return list(feature_stream(FeatureStreamConfig.model_validate(overrides)))


def run(engine: DriftEngine, events: Iterable[InferenceEvent]) -> list[tuple[int, Outcome]]:
    return [(i, engine.process(event)) for i, event in enumerate(events)]


def alerts_of(outcomes: list[tuple[int, Outcome]]) -> list[tuple[int, str]]:
    return [(i, alert.detector) for i, outcome in outcomes for alert in outcome.alerts]


def test_reference_is_the_first_events_then_windows_are_checked() -> None:
    outcomes = run(DriftEngine(FAST), stream(n_events=1000))
    frozen = [i for i, o in outcomes if o.reference_frozen is not None]
    assert frozen == [399]
    window_checks = [(i, c.detector) for i, o in outcomes for c in o.checks if c.detector == "ks"]
    assert [i for i, _ in window_checks] == [599, 799, 999]
    online = [c for _, o in outcomes for c in o.checks if c.detector == "online_hotelling"]
    assert len(online) == 600 // 50
    assert all(c.n_window == 50 for c in online)


def test_no_alert_on_unchanged_streams_and_check_false_alarms_at_nominal_rate() -> None:
    engine = DriftEngine(FAST)
    outcomes = []
    for seed in range(4):
        outcomes += run(engine, stream(site_id=f"site-{seed + 1:02d}", seed=seed, n_events=2400))
    alerts = alerts_of(outcomes)
    assert [a for a in alerts if a[1] != "online_hotelling"] == []
    # The online detector is calibrated to one false alarm per ERT (10,000 here) events: 4 streams
    # x 2000 monitored events allow about 1 (its run-length accuracy is tested on its own).
    assert len(alerts) <= 2
    window_checks = [
        c for _, o in outcomes for c in o.checks if c.result and c.detector != "online_hotelling"
    ]
    assert len(window_checks) == 4 * 10 * 5
    false_alarms = sum(c.result.is_drift for c in window_checks if c.result)
    # Per window, all five detectors together alarm with probability <= family_alpha (0.05).
    assert false_alarms / 40 <= 0.05 + 0.07  # 40 windows: about two standard errors of slack


def test_pixel_shift_raises_online_then_mmd_alert_naming_pixel_features() -> None:
    events = stream(n_events=1400, change_at=800, pixel_shift_sd=0.5)
    outcomes = run(DriftEngine(FAST), events)
    alerts = [(i, a) for i, o in outcomes for a in o.alerts]
    detectors = {a.detector: i for i, a in reversed(alerts)}
    assert set(detectors) == {"online_hotelling", "mmd"}
    assert 800 < detectors["online_hotelling"] < 800 + 150
    assert 800 < detectors["mmd"] <= 800 + 3 * 200
    mmd = next(a for _, a in alerts if a.detector == "mmd")
    assert mmd.key == KEY
    assert len(mmd.features) == 3
    assert "pixel statistics (MMD) changed at site-01" in mmd.explanation
    assert mmd.since <= mmd.window_start <= mmd.window_end <= mmd.occurred_at
    assert mmd.since >= events[600].occurred_at  # the streak began in a window after the change


def test_scanner_change_is_named_by_chi_square_and_ks() -> None:
    outcomes = run(DriftEngine(FAST), stream(n_events=1200, change_at=800, degraded_scanner=True))
    alerts = {a.detector: a for _, o in outcomes for a in o.alerts}
    assert {"chi2", "ks"} <= set(alerts)
    assert {"Manufacturer", "Modality"} <= set(alerts["chi2"].features)
    assert "absent from the reference" in alerts["chi2"].explanation
    assert "KVP" in alerts["ks"].features


def test_score_shift_is_found_by_the_model_output_detector() -> None:
    outcomes = run(DriftEngine(FAST), stream(n_events=1200, change_at=800, score_shift=1.0))
    alerts = {a.detector: a for _, o in outcomes for a in o.alerts}
    assert "score_ks" in alerts
    assert set(alerts["score_ks"].features) == {"lesion", "effusion"}


def test_episode_deduplicates_and_ends_after_quiet_checks() -> None:
    # Shifted for 5 windows, then back to the reference distribution for 4 windows.
    events = stream(n_events=2200, change_at=400, change_until=1400, pixel_shift_sd=1.0)
    config = FAST.model_copy(
        update={"detectors": FAST.detectors.model_copy(update={"online": None})}
    )
    outcomes = run(DriftEngine(config), events)
    mmd_alerts = [a for _, o in outcomes for a in o.alerts if a.detector == "mmd"]
    assert len(mmd_alerts) == 1
    updates = [u for _, o in outcomes for u in o.updates if u.alert_id == mmd_alerts[0].alert_id]
    assert [u.kind for u in updates].count("continued") >= 2
    assert updates[-1].kind == "ended"


def test_time_window_closes_on_event_time() -> None:
    config = FAST.model_copy(
        update={"window": WindowConfig(size=None, duration_s=86_400, min_size=100)}
    )
    # One event every 10 minutes: 144 per day.
    outcomes = run(DriftEngine(config), stream(n_events=400 + 144 * 3 + 1))
    checks = [c for _, o in outcomes for c in o.checks if c.detector == "ks"]
    assert [c.n_window for c in checks] == [144, 144, 144]
    assert all(c.window_end - c.window_start < timedelta(days=1) for c in checks)


def test_kill_and_restore_anywhere_gives_the_same_checks_and_alerts() -> None:
    events = stream(n_events=1400, change_at=900, pixel_shift_sd=0.4, degraded_scanner=True)
    uninterrupted = run(DriftEngine(FAST), events)
    split_points = [*sorted(random.Random(3).sample(range(1, len(events)), 6)), 399, 400, 599]
    engine = DriftEngine(FAST)
    interrupted = []
    for i, event in enumerate(events):
        if i in split_points:  # a crash: only what was saved survives
            blobs = engine.export(KEY), engine.export_reference(KEY)
            engine = DriftEngine(FAST)
            assert engine.restore(*blobs) == KEY
        interrupted.append((i, engine.process(event)))
    assert _summary(interrupted) == _summary(uninterrupted)
    assert alerts_of(uninterrupted)  # the comparison covers alerts, not only quiet checks


def _summary(outcomes: list[tuple[int, Outcome]]) -> list[object]:
    summary: list[object] = []
    for i, outcome in outcomes:
        for check in outcome.checks:
            result = check.result
            summary.append(
                (i, check.detector, check.n_window, check.skipped)
                + ((result.statistic, result.p_value, result.is_drift) if result else ())
            )
        summary += [(i, alert.to_json()) for alert in outcome.alerts]
        summary += [(i, update) for update in outcome.updates]
    return summary


def test_rebaseline_on_next_events_ends_the_episode_and_accepts_the_new_normal() -> None:
    engine = DriftEngine(FAST)
    events = stream(n_events=2600, change_at=600, degraded_scanner=True)
    before = run(engine, events[:1200])
    assert alerts_of(before)
    outcome = engine.rebaseline(
        KEY, requested_by="mlops@site", reason="new CR reader", requested_at=0.0
    )
    assert {u.kind for u in outcome.updates} == {"ended"}
    assert all(u.reason == "re-baselined: new CR reader" for u in outcome.updates)
    info = engine.streams[KEY].reference_info
    assert (info.generation, info.source, info.requested_by, info.frozen) == (
        1,
        "next_events",
        "mlops@site",
        False,
    )
    after = run(engine, events[1200:])
    assert alerts_of(after) == []
    assert engine.streams[KEY].reference_info.frozen


def test_uploaded_reference_is_used_at_once_and_must_be_large_enough() -> None:
    engine = DriftEngine(FAST)
    reference = stream(n_events=400, seed=5)
    with pytest.raises(InsufficientDataError):
        engine.rebaseline(
            KEY, requested_by="a", reason="b", requested_at=0.0, events=reference[:10]
        )
    outcome = engine.rebaseline(
        KEY, requested_by="validation", reason="validation set", requested_at=0.0, events=reference
    )
    assert outcome.reference_frozen is not None and outcome.reference_frozen.n_events == 400
    checks = [
        c for _, o in run(engine, stream(n_events=200)) for c in o.checks if c.detector == "ks"
    ]
    assert len(checks) == 1


def test_garbage_state_is_refused() -> None:
    engine = DriftEngine(FAST)
    run(engine, stream(n_events=500))
    state, reference = engine.export(KEY), engine.export_reference(KEY)
    with pytest.raises(StateFormatError):
        DriftEngine(FAST).restore(b"not a state", reference)
    other = DriftEngine(FAST)
    run(other, stream(n_events=450, seed=4))
    with pytest.raises(StateFormatError, match="do not belong"):
        DriftEngine(FAST).restore(state, other.export_reference(KEY))


def test_stream_memory_is_a_few_hundred_bytes_per_reference_event() -> None:
    """A stream's buffers grow with its reference only (the default 13-week reference at one
    study every 10 minutes, 13,105 events, is 5.5 MB; docs/drift.md)."""
    engine = DriftEngine(EngineConfig(reference_size=2000))
    run(engine, stream(n_events=2300))
    state = engine.streams[KEY]
    assert state.reference_info.frozen
    assert state.nbytes() < 500 * 2000


WEEK = 7 * 86_400.0


def test_the_default_reference_needs_a_quarter_and_a_thousand_events() -> None:
    config = EngineConfig()
    assert config.reference_duration_s == 13 * WEEK and config.reference_size == 1000
    assert not config.reference_complete(1000, 13 * WEEK - 1)  # a thousand events, 12.9 weeks
    assert not config.reference_complete(999, 20 * WEEK)  # a quiet site: too few events
    assert config.reference_complete(1000, 13 * WEEK)
    # One study every 30 minutes: 13 weeks hold 4,368 intervals, so 4,369 events.
    assert config.reference_events(1800.0) == 4369
    assert config.reference_events(13 * WEEK) == 1000  # at one a quarter, the count decides


def test_a_reference_size_alone_means_a_reference_by_count() -> None:
    for config in (
        EngineConfig(reference_size=2000),
        EngineConfig.model_validate({"reference_size": 2000}),
    ):
        assert config.reference_duration_s is None
        assert config.reference_complete(2000, 0.0) and not config.reference_complete(1999, 1e9)
    both = EngineConfig(reference_size=200, reference_duration_s=WEEK)
    assert not both.reference_complete(200, WEEK / 2) and both.reference_complete(200, WEEK)
    with pytest.raises(ValueError, match="a reference needs"):
        EngineConfig(reference_size=None, reference_duration_s=None)
