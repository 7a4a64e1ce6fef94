"""The retraining policy: which alerts start a job, and when not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retrain.policy import AlertFacts, LabelCounts, RetrainPolicy, Trigger, decide

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ENOUGH = LabelCounts(overall=800, site=200)


def alert(detector: str, effect: float = 1.0) -> AlertFacts:
    return AlertFacts(detector=detector, effect_size=effect, site_id="site-02", model_name="cxr")


@pytest.mark.parametrize(
    ("detector", "effect", "expected"),
    [
        ("performance.auroc_drop", 0.01, True),
        ("performance.error_rate_cusum", 5.0, True),
        ("mmd", 0.02, True),
        ("embedding_mmd", 0.02, True),  # image content, as the pixel statistics
        ("chi2", 0.9, True),
        ("chi2", 0.2, False),  # a small change of acquisition categories alone
        ("ks", 3.0, False),  # metadata KS does not trigger by default
        ("missingness", 0.5, False),
    ],
)
def test_default_triggers(detector: str, effect: float, expected: bool) -> None:
    assert decide(alert(detector, effect), RetrainPolicy(), ENOUGH, None, NOW).trigger is expected


def test_cooldown_and_label_minimums_hold_a_trigger_back_and_say_why() -> None:
    policy = RetrainPolicy(cooldown_hours=24, min_new_labels=500, min_new_labels_site=100)
    recent = NOW - timedelta(hours=3)
    cooling = decide(alert("mmd"), policy, ENOUGH, recent, NOW)
    assert not cooling.trigger and "cooling down" in cooling.reason
    assert decide(alert("mmd"), policy, ENOUGH, NOW - timedelta(hours=25), NOW).trigger
    few = decide(alert("mmd"), policy, LabelCounts(overall=800, site=40), None, NOW)
    assert not few.trigger and "40 from site-02 (need 100)" in few.reason


def test_custom_triggers_use_globs_and_effect_floors() -> None:
    policy = RetrainPolicy(triggers=(Trigger(detector="ks", min_effect_size=0.5),))
    assert decide(alert("ks", 0.6), policy, ENOUGH, None, NOW).trigger
    assert not decide(alert("ks", 0.4), policy, ENOUGH, None, NOW).trigger
    assert not decide(alert("performance.auroc_drop"), policy, ENOUGH, None, NOW).trigger
    assert RetrainPolicy().fingerprint() != policy.fingerprint()
