"""Labels for feature-level streams (``monitor.simulate.features.feature_labels``)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from scipy.stats import mannwhitneyu

from monitor.events import InferenceEvent
from monitor.simulate.features import (
    FeatureLabelConfig,
    FeatureStreamConfig,
    feature_labels,
    feature_stream,
)


def _events(n: int = 4000) -> list[InferenceEvent]:
    return list(feature_stream(FeatureStreamConfig(site_id="site-07", n_events=n, seed=3)))


def test_a_share_of_studies_is_labelled_later_for_every_finding() -> None:
    events = _events()
    labels = list(feature_labels(events, FeatureLabelConfig(label_rate=0.3)))
    by_key = {e.study_key: e for e in events}
    assert abs(len(labels) / len(events) - 0.3) < 0.03
    for label in labels:
        study = by_key[label.study_key]
        assert (label.site_id, label.model_name) == (study.site_id, study.model_name)
        assert label.occurred_at >= study.occurred_at
        assert set(label.labels) == set(study.prediction.scores)
    delays_h = [(label.occurred_at - by_key[label.study_key].occurred_at) for label in labels]
    assert abs(np.mean([d / timedelta(hours=1) for d in delays_h]) - 72) < 6
    assert len({label.event_id for label in labels}) == len(labels)


def test_the_labels_follow_the_scores_of_a_calibrated_model() -> None:
    events = _events()
    labels = {label.study_key: label.labels for label in feature_labels(events)}
    for finding in ("lesion", "effusion"):
        labelled = [e for e in events if e.study_key in labels]
        scores = np.array([e.prediction.scores[finding] for e in labelled])
        truths = np.array([labels[e.study_key][finding] for e in labelled])
        assert abs(truths.mean() - scores.mean()) < 0.03  # calibrated on average
        auroc = mannwhitneyu(scores[truths == 1], scores[truths == 0]).statistic / (
            truths.sum() * (truths.size - truths.sum())
        )
        assert 0.6 < auroc < 0.9  # informative, not perfect


def test_a_studys_label_depends_on_the_study_alone() -> None:
    """Same config, any subset or order of the events: the same label for the same study."""
    events = _events(600)
    config = FeatureLabelConfig(seed=5)
    whole = {label.study_key: label for label in feature_labels(events, config)}
    part = list(feature_labels(reversed(events[::3]), config))
    assert part and all(whole[label.study_key] == label for label in part)
    other_seed = {label.study_key: label for label in feature_labels(events, FeatureLabelConfig())}
    assert whole != other_seed
