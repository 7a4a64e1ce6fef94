"""Severity of drifting checks and alerts (issue 20, item 2): how far beyond the threshold, how
many detectors agree, missingness as data quality; and who acts on it (retraining)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from monitor.drift.alarms import AlarmConfig
from monitor.drift.base import DriftResult, FeatureAttribution
from monitor.drift.config import EngineConfig, OnlineSettings, WindowConfig
from monitor.drift.engine import DriftEngine
from monitor.drift.features import PIXEL_FIELD
from monitor.drift.online import OnlineConfig
from monitor.drift.severity import Severity, SeverityConfig, at_least, highest, of_check
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from retrain.policy import AlertFacts, LabelCounts, RetrainPolicy, decide

CONFIG = SeverityConfig()


def result(effect: float, *, drift: bool = True, learned: float | None = None) -> DriftResult:
    return DriftResult(
        detector="ks",
        is_drift=drift,
        statistic=0.5,
        effect_size=effect,
        effect_size_name="wasserstein_norm",
        n_reference=1000,
        n_window=250,
        config_fingerprint="f",
        p_value=0.001,
        threshold=0.01,
        effect_threshold=learned,
    )


@pytest.mark.parametrize(
    ("effect", "agreeing", "expected"),
    [
        (0.12, 1, Severity.INFO),  # 1.2x the 0.1 floor
        (0.2, 1, Severity.WARNING),  # 2x
        (0.35, 1, Severity.CRITICAL),  # 3.5x
        (0.12, 2, Severity.WARNING),  # two detectors agree: one level up
        (0.2, 3, Severity.CRITICAL),
        (0.35, 4, Severity.CRITICAL),  # critical stays critical
    ],
)
def test_severity_grows_with_the_effect_beyond_its_threshold_and_with_agreement(
    effect: float, agreeing: int, expected: Severity
) -> None:
    assert of_check("ks", result(effect), 0.1, agreeing, CONFIG) is expected


def test_the_learned_threshold_is_the_yardstick_when_there_is_one() -> None:
    # 0.9 is 9x the floor but only 1.2x a learned threshold of 0.75.
    assert of_check("ks", result(0.9, learned=0.75), 0.1, 1, CONFIG) is Severity.INFO
    assert of_check("ks", result(0.9), 0.1, 1, CONFIG) is Severity.CRITICAL


def test_a_quiet_check_has_no_severity() -> None:
    assert of_check("ks", result(5.0, drift=False), 0.1, 3, CONFIG) is None


def missing(field: str, share: float) -> DriftResult:
    attribution = FeatureAttribution(field, statistic=share, effect_size=share, p_value=0.0001)
    return dataclasses.replace(result(share), detector="missingness", attributions=(attribution,))


def test_missingness_is_data_quality_unless_a_field_the_model_needs_goes_missing() -> None:
    assert of_check("missingness", missing("ExposureTime", 0.9), 0.1, 3, CONFIG) is Severity.INFO
    assert of_check("missingness", missing(PIXEL_FIELD, 0.3), 0.1, 1, CONFIG) is Severity.INFO
    assert of_check("missingness", missing(PIXEL_FIELD, 0.8), 0.1, 1, CONFIG) is Severity.WARNING


def test_the_online_detector_measures_its_statistic_against_its_calibrated_threshold() -> None:
    online = dataclasses.replace(result(0.0), detector="online_hotelling", statistic=40.0)
    online = dataclasses.replace(online, threshold=20.0)
    assert of_check("online_hotelling", online, 0.0, 1, CONFIG) is Severity.WARNING


def test_severity_helpers_order_and_select() -> None:
    assert highest(Severity.INFO, None, Severity.CRITICAL, Severity.WARNING) is Severity.CRITICAL
    assert highest(None) is None
    assert at_least(Severity.WARNING) == ("warning", "critical")
    assert Severity.INFO.raised() is Severity.WARNING


FAST = EngineConfig(
    reference_size=400,
    window=WindowConfig(size=200, min_size=100),
    detectors={"online": OnlineSettings(detector=OnlineConfig(ert=10_000, n_bootstraps=500))},
)


def test_a_scanner_change_that_every_detector_sees_opens_critical_alerts() -> None:
    engine = DriftEngine(FAST)
    events = feature_stream(
        FeatureStreamConfig(n_events=1200, change_at=600, degraded_scanner=True)
    )
    outcomes = [engine.process(event) for event in events]
    alerts = [alert for outcome in outcomes for alert in outcome.alerts]
    window_alerts = [a for a in alerts if a.detector in ("ks", "chi2")]
    assert window_alerts and all(a.severity is Severity.CRITICAL for a in window_alerts)
    assert all(alert.to_json()["severity"] == alert.severity.value for alert in alerts)
    drifting = [c for o in outcomes for c in o.checks if c.result and c.result.is_drift]
    assert all(c.severity is not None for c in drifting)
    quiet = [c for o in outcomes for c in o.checks if c.result and not c.result.is_drift]
    assert all(c.severity is None for c in quiet)


def test_info_alerts_never_start_a_retraining_job() -> None:
    policy = RetrainPolicy(min_new_labels=0, min_new_labels_site=0)
    now = datetime(2026, 12, 6, tzinfo=UTC)
    labels = LabelCounts(overall=1000, site=500)
    info = AlertFacts("mmd", 0.5, "site-02", "cxr-lesion", Severity.INFO)
    refused = decide(info, policy, labels, None, now)
    assert not refused.trigger and "info alerts do not trigger retraining" in refused.reason
    warning = dataclasses.replace(info, severity=Severity.WARNING)
    assert decide(warning, policy, labels, None, now).trigger
    strict = policy.model_copy(update={"min_severity": Severity.CRITICAL})
    assert not decide(warning, strict, labels, None, now).trigger


def test_an_episode_open_two_weeks_asks_once_for_a_decision() -> None:
    """A scanner change that stays: its episodes are open from the second changed window on;
    once 14 days of event time have passed since their drift began, each asks, once."""
    engine = DriftEngine(FAST)
    events = feature_stream(  # one study an hour: 200-study windows are about 8 days
        FeatureStreamConfig(
            n_events=2400, change_at=600, degraded_scanner=True, interval=timedelta(hours=1)
        )
    )
    outcomes = [engine.process(event) for event in events]
    alerts = {a.alert_id: a for o in outcomes for a in o.alerts}
    asked = [u for o in outcomes for u in o.updates if u.kind == "sustained"]
    chi2 = next(a for a in alerts.values() if a.detector == "chi2")
    [chi2_asked] = [u for u in asked if u.alert_id == chi2.alert_id]  # once, not per check
    assert (chi2_asked.at - chi2.since).days >= 14
    assert chi2_asked.reason is not None and chi2_asked.reason.startswith("sustained for ")
    assert "acknowledge and re-baseline" in chi2_asked.reason


def test_a_short_episode_or_no_decision_span_never_asks() -> None:
    events = list(
        feature_stream(
            FeatureStreamConfig(
                n_events=2400,
                change_at=600,
                degraded_scanner=True,
                interval=timedelta(hours=1),
            )
        )
    )
    never = FAST.model_copy(
        update={"alarms": AlarmConfig(decision_after_s=None)},
    )
    engine = DriftEngine(never)
    assert not [u for e in events for u in engine.process(e).updates if u.kind == "sustained"]
    brief = list(
        feature_stream(
            FeatureStreamConfig(
                n_events=2400,
                change_at=600,
                change_until=1100,  # about three weeks of change, then the old scanner
                degraded_scanner=True,
                interval=timedelta(minutes=10),
            )
        )
    )
    engine = DriftEngine(FAST)
    assert not [u for e in brief for u in engine.process(e).updates if u.kind == "sustained"]
