"""The embedding detector inside the drift engine: nominal false alarms, detection explained by
a known direction, v1 streams untouched, missing embeddings, state restored exactly."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import orjson
import pytest
from scipy.stats import binomtest

from monitor.drift.alerts import Check, StreamKey
from monitor.drift.config import DetectorSet, EngineConfig, OnlineSettings, WindowConfig
from monitor.drift.directions import Direction, fit_direction
from monitor.drift.engine import DriftEngine, Outcome
from monitor.drift.online import OnlineConfig
from monitor.drift.stream import NO_EMBEDDINGS
from monitor.events import InferenceEvent
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.embedding_events import DIMENSIONS, EMBEDDING_ID, embeddings, with_embeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL = EngineConfig(
    reference_size=400,
    window=WindowConfig(size=200, min_size=100),
    detectors=DetectorSet(online=None),
)
KEY = StreamKey("site-01", "cxr-lesion", "1.0.0")
LATERAL = np.zeros(DIMENSIONS)
LATERAL[[1, 2]] = [0.8, -0.6]
DIRECTION = fit_direction(
    "lateral_views",
    "towards lateral views",
    embeddings(300, 100),
    embeddings(300, 101, shift=2.0 * LATERAL),
)


def v1_stream(**overrides: object) -> list[InferenceEvent]:
    return list(feature_stream(FeatureStreamConfig.model_validate(overrides)))


def directions(key: StreamKey, embedding_id: str) -> tuple[Direction, ...]:
    return (DIRECTION,) if embedding_id == EMBEDDING_ID else ()


def checks_of(engine: DriftEngine, events: Iterable[InferenceEvent]) -> list[Check]:
    return [check for event in events for check in engine.process(event).checks]


def outcomes_of(engine: DriftEngine, events: Iterable[InferenceEvent]) -> list[Outcome]:
    return [engine.process(event) for event in events]


def test_no_alarm_beyond_the_nominal_rate_on_an_unchanged_embedding_stream() -> None:
    config = EngineConfig(
        reference_size=500,
        window=WindowConfig(size=50, min_size=50),
        detectors=DetectorSet(
            mmd=None, ks=None, chi2=None, score_ks=None, missingness=None, online=None
        ),
        learned=None,
    )
    engine = DriftEngine(config, directions)
    checks = []
    for seed in range(4):
        events = v1_stream(site_id=f"site-{seed + 1:02d}", seed=seed, n_events=2500)
        checks += checks_of(engine, with_embeddings(events, seed))
    results = [check.result for check in checks if check.result is not None]
    assert len(results) == 160 and {check.detector for check in checks} == {"embedding_mmd"}
    assert all(result.threshold == 0.05 for result in results)  # k = 1: the only detector
    drifting = sum(result.is_drift for result in results)
    assert binomtest(drifting, len(results), 0.05).pvalue > 0.01


def test_a_shift_along_a_known_direction_alerts_and_is_explained_by_it() -> None:
    events = with_embeddings(v1_stream(n_events=1400), 0, change_at=800, shift=0.5 * LATERAL)
    outcomes = outcomes_of(DriftEngine(ALL, directions), events)
    alerts = [alert for outcome in outcomes for alert in outcome.alerts]
    assert [alert.detector for alert in alerts] == ["embedding_mmd"]
    alert = alerts[0]
    assert alert.features[0] == "direction:lateral_views"
    assert "image content in the model's embedding (MMD) changed" in alert.explanation
    assert "window mean moved towards lateral views" in alert.explanation
    quiet = [
        check
        for outcome in outcomes[:800]
        for check in outcome.checks
        if check.detector == "embedding_mmd"
    ]
    assert quiet and not any(check.result and check.result.is_drift for check in quiet)


def test_without_directions_the_explanation_names_the_components() -> None:
    events = with_embeddings(v1_stream(n_events=1400), 0, change_at=800, shift=0.5 * LATERAL)
    alerts = [a for outcome in outcomes_of(DriftEngine(ALL), events) for a in outcome.alerts]
    assert [alert.detector for alert in alerts] == ["embedding_mmd"]
    assert alerts[0].features[0] == "emb_01"
    assert all(feature.startswith("emb_") for feature in alerts[0].features)
    assert "direction" not in alerts[0].explanation


def test_a_v1_stream_checks_exactly_as_without_the_detector() -> None:
    config = ALL.model_copy(
        update={
            "detectors": DetectorSet(
                online=OnlineSettings(detector=OnlineConfig(ert=5000, n_bootstraps=300))
            )
        }
    )
    without = config.model_copy(
        update={"detectors": config.detectors.model_copy(update={"embedding_mmd": None})}
    )
    events = v1_stream(n_events=1400, change_at=800, pixel_shift_sd=0.5, degraded_scanner=True)
    with_engine, without_engine = DriftEngine(config), DriftEngine(without)
    with_outcomes = outcomes_of(with_engine, events)
    without_outcomes = outcomes_of(without_engine, events)
    assert [o.checks for o in with_outcomes] == [o.checks for o in without_outcomes]
    with_alerts = [a.to_json() for o in with_outcomes for a in o.alerts]
    assert with_alerts and with_alerts == [a.to_json() for o in without_outcomes for a in o.alerts]
    thresholds = {c.result.threshold for o in with_outcomes for c in o.checks if c.result}
    assert 0.05 / 5 in thresholds and 0.05 / 6 not in thresholds
    stream = with_engine.streams[KEY]
    assert stream.reference_info.not_run == {"embedding_mmd": NO_EMBEDDINGS}
    assert "embedding_mmd" not in stream.alarms
    assert without_engine.streams[KEY].reference_info.not_run == {}


def test_a_v2_stream_splits_the_family_budget_over_six_detectors() -> None:
    checks = checks_of(DriftEngine(ALL), with_embeddings(v1_stream(n_events=800), 0))
    by_detector = {check.detector: check for check in checks}
    assert set(by_detector) == {"mmd", "ks", "chi2", "score_ks", "missingness", "embedding_mmd"}
    assert all(c.result is not None and c.result.threshold == 0.05 / 6 for c in checks)


def test_missing_or_foreign_embeddings_count_as_missing_for_this_detector_only() -> None:
    base = v1_stream(n_events=800)
    events = with_embeddings(base, 0, missing_every=4)
    foreign = with_embeddings(base, 1, embedding_id="cxr-lesion@1.0.0/pca8-ffffffffffff")
    events = [foreign[i] if i % 10 == 9 and i >= 400 else event for i, event in enumerate(events)]
    checks = checks_of(DriftEngine(ALL), events)
    embedding = [c for c in checks if c.detector == "embedding_mmd"]
    pixels = [c for c in checks if c.detector == "mmd"]
    assert [c.n_window for c in embedding] == [200, 200]
    # Of 200 events, 40 carry no embedding and 20 another projection's.
    assert [c.result.n_window for c in embedding if c.result] == [140, 140]
    assert [c.result.n_window for c in pixels if c.result] == [200, 200]


def test_state_restored_mid_window_continues_exactly() -> None:
    events = with_embeddings(v1_stream(n_events=1400), 0, change_at=800, shift=0.5 * LATERAL)
    expected = [o.checks for o in outcomes_of(DriftEngine(ALL, directions), events)]
    first = DriftEngine(ALL, directions)
    before = [o.checks for o in outcomes_of(first, events[:900])]
    restored = DriftEngine(ALL, directions)
    restored.restore(first.export(KEY), first.export_reference(KEY))
    assert restored.streams[KEY].schema == first.streams[KEY].schema
    assert restored.streams[KEY].schema.embedding_id == EMBEDDING_ID
    after = [o.checks for o in outcomes_of(restored, events[900:])]
    assert before + after == expected


def test_a_reference_uploaded_with_embeddings_enables_the_detector() -> None:
    engine = DriftEngine(ALL)
    outcomes_of(engine, v1_stream(n_events=500))
    assert "embedding_mmd" in engine.streams[KEY].disabled
    upload = with_embeddings(v1_stream(n_events=400, seed=5), 5)
    engine.rebaseline(KEY, requested_by="tester", reason="v2 edge", requested_at=0.0, events=upload)
    stream = engine.streams[KEY]
    assert stream.schema.embedding_id == EMBEDDING_ID and "embedding_mmd" in stream.detectors


def test_with_learned_thresholds_multivariate_alerts_still_name_their_features() -> None:
    # Regression: the learned-threshold filter kept only per-feature drifting features, so an
    # MMD alert (pixel or embedding) past its learned MMD^2 threshold named none.
    config = EngineConfig(
        reference_size=1000, window=WindowConfig(size=100, min_size=50), detectors=ALL.detectors
    )
    base = v1_stream(n_events=1800, change_at=1300, pixel_shift_sd=0.5)
    events = with_embeddings(base, 0, change_at=1300, shift=0.8 * LATERAL)
    engine = DriftEngine(config, directions)
    alerts = {a.detector: a for outcome in outcomes_of(engine, events) for a in outcome.alerts}
    assert {"mmd", "embedding_mmd"} <= set(alerts)
    assert set(engine.streams[KEY].learned) >= {"mmd", "embedding_mmd"}
    assert len(alerts["mmd"].features) == 3
    assert alerts["embedding_mmd"].features[0] == "direction:lateral_views"


def test_a_state_saved_before_embeddings_existed_still_loads() -> None:
    engine = DriftEngine(ALL)
    outcomes_of(engine, v1_stream(n_events=450))
    blob = engine.export(KEY)
    archive = np.load(io.BytesIO(blob), allow_pickle=False)
    meta = orjson.loads(archive["meta"].tobytes())
    for name in ("embedding", "embedding_id"):
        del meta["schema"][name]
    del meta["reference_info"]["not_run"]
    arrays = {name: archive[name] for name in archive.files if name != "meta"}
    old = io.BytesIO()
    np.savez(old, meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8), **arrays)

    restored = DriftEngine(ALL)
    restored.restore(old.getvalue(), engine.export_reference(KEY))
    stream = restored.streams[KEY]
    assert stream.schema == engine.streams[KEY].schema and stream.schema.embedding == ()
    later = v1_stream(n_events=700)[450:]
    assert checks_of(restored, later) == checks_of(engine, later)
