"""The drift gauges the dashboards read follow the latest check: a learned effect threshold is
exported while there is one and removed when the stream no longer has one (learning turned off,
or a new reference too short to learn from), so no stale dashed line stays on the panel."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from prometheus_client import REGISTRY

from monitor.drift.alerts import Check, StreamKey
from monitor.drift.base import DriftResult
from monitor.service.drift.store import DriftBatch
from monitor.service.ingest.consumer import observe_drift
from tests.unit.test_drift_severity import result

KEY = StreamKey("site-metrics", "cxr-lesion", "1.0.0")
LABELS = {"site_id": KEY.site_id, "model_name": KEY.model_name, "detector": "ks"}
AT = datetime(2026, 3, 1, tzinfo=UTC)
RESULT = result(0.4, drift=False, learned=1.3)


def observe(result: DriftResult) -> None:
    observe_drift(DriftBatch(checks=[Check(KEY, "ks", AT, AT, 100, result)]))


def threshold() -> float | None:
    return REGISTRY.get_sample_value("radsentry_drift_effect_threshold", LABELS)


def test_the_learned_threshold_is_exported_then_removed_when_the_stream_has_none() -> None:
    observe(RESULT)
    assert threshold() == 1.3
    assert REGISTRY.get_sample_value("radsentry_drift_effect_size", LABELS) == 0.4
    observe(dataclasses.replace(RESULT, effect_threshold=None))
    assert threshold() is None
    observe(dataclasses.replace(RESULT, effect_threshold=None))  # nothing to remove: no error
    assert threshold() is None
    observe(dataclasses.replace(RESULT, effect_threshold=2.0))
    assert threshold() == 2.0
