"""Performance tracking on the simulator's delayed labels, against a real PostgreSQL database."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import Connection, Engine, select

from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.performance.config import AurocCusum
from monitor.performance.rules import RulesConfig
from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.drift.alerts import list_alerts
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import AlertRow, PerformanceAlarmRow
from monitor.service.performance import store
from monitor.service.performance.alerts import RuleOutcome, WindowFacts, _drift_links, evaluate
from monitor.service.performance.store import FLEET, latest_snapshots, refresh
from monitor.service.settings import PerformanceSettings, Settings
from monitor.simulate import SimulationConfig, simulate
from tests.auth_helpers import TEST_AUTH, bearer
from tests.conftest import empty_tables

pytestmark = pytest.mark.integration

DRIFT = EngineConfig(
    reference_size=100,
    window=WindowConfig(size=100, min_size=50),
    detectors=DetectorSet(online=None),
)
# The label-free estimate is calibrated on the earliest 300 labelled studies: all from before
# site-02's scanner change (study 400, 80% labelled).
# The simulator's scores are not calibrated probabilities (ECE ~0.19 at every site), so the
# calibration-limit rule is off here; the other rules run with their defaults.
PERFORMANCE = PerformanceSettings(
    rolling_window=300, estimate_reference=300, rules=RulesConfig(calibration_limit=None)
)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> list[object]:
    """Three sites x 900 studies; site-02 moves to the degraded reader at study 400 (AUROC
    0.90 -> 0.70 in the score model)."""
    config = SimulationConfig(
        seed=11,
        start=datetime(2026, 3, 1, tzinfo=UTC),
        sites=3,
        studies_per_site=900,
        image_size=64,
        change_site="site-02",
        change_at_index=400,
    )
    return list(simulate(config, Path(tmp_path_factory.mktemp("studies"))))


def ingest(engine: Engine, events: list[object], first_offset: int = 0) -> None:
    monitor = DriftMonitor(DRIFT)
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        offset = first_offset + start
        delivered = [Delivered(e, "t", 0, offset + i) for i, e in enumerate(chunk)]  # type: ignore[arg-type]
        store_batch(engine, delivered, [], monitor.process)


@pytest.fixture
def tracked(pg_engine: Engine, simulated: list[object]) -> Iterator[Engine]:
    ingest(pg_engine, simulated)
    yield pg_engine


def test_the_degraded_site_shows_lower_auroc_with_intervals_and_subgroups(tracked: Engine) -> None:
    snapshots = refresh(tracked, PERFORMANCE)
    assert {(s.site_id, s.window) for s in snapshots} == {
        (site, window)
        for site in ("site-01", "site-02", "site-03", FLEET)
        for window in ("rolling", "cumulative")
    }
    rolling = {s.site_id: s for s in snapshots if s.window == "rolling"}
    cumulative = {s.site_id: s for s in snapshots if s.window == "cumulative"}
    for pooled in ("labelled", "predicted"):  # fleet-wide: every site's cases merged
        assert getattr(cumulative[FLEET], pooled) == sum(
            getattr(cumulative[site], pooled) for site in ("site-01", "site-02", "site-03")
        )
    for snapshot in (rolling[site] for site in ("site-01", "site-02", "site-03")):
        auroc = snapshot.metrics.auroc
        assert auroc is not None and auroc.lower < auroc.estimate < auroc.upper
        # The fewest latest days holding 300 labelled cases: at most a day's more.
        assert 300 <= snapshot.metrics.counts.n < 300 + 100
        assert 0.6 < snapshot.labelled / snapshot.predicted < 0.95  # label_rate 0.8
        assert snapshot.label_delay_hours is not None and snapshot.label_delay_hours["p50"] > 0
        assert {g["field"] for g in snapshot.subgroups} >= {"PatientSex", "Manufacturer"}
    for snapshot in snapshots:  # Prometheus: the intervals as their own series
        for name in ("auroc", "sensitivity", "specificity"):
            interval = getattr(snapshot.metrics, name)
            labels = {
                "site_id": snapshot.site_id,
                "model_name": snapshot.model_name,
                "model_version": snapshot.model_version,
                "finding": snapshot.finding,
                "window": snapshot.window,
                "metric": name,
            }
            assert interval is not None, (snapshot.site_id, name)
            assert REGISTRY.get_sample_value("radsentry_performance_lower", labels) == (
                interval.lower
            )
            assert REGISTRY.get_sample_value("radsentry_performance_upper", labels) == (
                interval.upper
            )
    degraded, healthy = rolling["site-02"].metrics.auroc, rolling["site-01"].metrics.auroc
    assert degraded is not None and healthy is not None
    assert degraded.upper < healthy.lower  # the intervals separate the sites
    assert (
        rolling["site-02"].metrics.auroc.estimate < 0.8 < rolling["site-03"].metrics.auroc.estimate
    )


def test_api_serves_the_latest_snapshots_per_site_and_per_model(tracked: Engine) -> None:
    settings = Settings(drift=DRIFT, performance=PERFORMANCE, auth=TEST_AUTH)
    headers = bearer(settings, "auditor-amy", Role.AUDITOR)
    with TestClient(create_app(settings, engine=tracked), headers=headers) as client:
        assert client.get("/sites/site-01/performance").status_code == 404
        refresh(tracked, PERFORMANCE)
        refresh(tracked, PERFORMANCE)  # history grows; the API shows the newest only
        site = client.get("/sites/site-01/performance").json()
        assert [(s["finding"], s["window"]) for s in site] == [
            ("lesion", "cumulative"),
            ("lesion", "rolling"),
        ]
        assert site[0]["metrics"]["auroc"]["method"] == "delong"
        model = client.get("/models/cxr-lesion/performance").json()
        assert len(model) == 8  # three sites and the fleet, two windows each
        assert {s["site_id"] for s in model} == {"site-01", "site-02", "site-03", FLEET}
        metrics = client.get("/metrics").text
        assert 'radsentry_performance{finding="lesion",metric="auroc"' in metrics
    assert len(latest_snapshots(tracked, site_id="site-02")) == 2


def test_label_free_estimate_tracks_healthy_sites_and_is_distrusted_after_the_change(
    tracked: Engine,
) -> None:
    rolling = {s.site_id: s for s in refresh(tracked, PERFORMANCE) if s.window == "rolling"}
    for site in ("site-01", "site-03"):
        estimate = rolling[site].estimate
        assert estimate is not None and estimate["trusted"], (
            estimate["reasons"],
            estimate["support"],
        )
        difference = estimate["comparison"]["auroc"]["difference"]
        assert abs(difference) < 0.08  # realised minus estimated, 300 cases
    degraded = rolling["site-02"].estimate
    assert degraded is not None and not degraded["trusted"]
    assert any("calibration drift detected" in reason for reason in degraded["reasons"])
    # What the estimate gets wrong is exactly what the trust check warns about.
    assert degraded["auroc"] > rolling["site-02"].metrics.auroc.estimate + 0.1


def test_performance_alerts_the_degraded_site_only_once_and_links_its_drift(
    pg_engine: Engine, simulated: list[object]
) -> None:
    half = len(simulated) * 2 // 5  # up to about study 360: before site-02's change at 400
    ingest(pg_engine, simulated[:half])
    refresh(pg_engine, PERFORMANCE)
    assert _performance_alerts(pg_engine) == []

    ingest(pg_engine, simulated[half:], first_offset=half)
    refresh(pg_engine, PERFORMANCE)
    alerts = _performance_alerts(pg_engine)
    assert alerts and {a.site_id for a in alerts} == {"site-02"}, [
        (a.detector, a.explanation) for a in alerts if a.site_id != "site-02"
    ]
    assert {a.detector for a in alerts} <= {
        "performance.sensitivity_floor",
        "performance.auroc_drop",
        "performance.error_rate_cusum",
    }
    auroc = [a for a in alerts if a.detector == "performance.auroc_drop"]
    assert auroc and "AUROC" in auroc[0].explanation and auroc[0].features == ["lesion"]
    assert "Drift at this site in the same period" in auroc[0].explanation
    refresh(pg_engine, PERFORMANCE)  # no new labels: no new check, no duplicate alert
    assert len(_performance_alerts(pg_engine)) == len(alerts)


def test_auroc_cusum_alerts_the_degraded_site_once_through_the_tracker(
    pg_engine: Engine, simulated: list[object]
) -> None:
    """The AUROC CUSUM alone: its reference is the first 300 labels it reads at each site (all
    from before site-02's change, labels lag their studies), then each label once."""
    settings = _auroc_cusum_only(
        AurocCusum(reference_cases=300, drop=0.08, reference_confidence=0.9, arl0=20_000)
    )
    half = len(simulated) * 2 // 5
    ingest(pg_engine, simulated[:half])
    refresh(pg_engine, settings)
    assert _performance_alerts(pg_engine) == []

    ingest(pg_engine, simulated[half:], first_offset=half)
    refresh(pg_engine, settings)
    alerts = _performance_alerts(pg_engine)
    assert [(a.site_id, a.detector) for a in alerts] == [("site-02", "performance.auroc_cusum")]
    explanation = alerts[0].explanation
    assert explanation.startswith("AUROC CUSUM for lesion: evidence of a drop"), explanation
    assert re.search(
        r"rank like an AUROC of 0\.[67]\d against the reference's 0\.[89]\d "
        r"\(300 cases\)",
        explanation,
    ), explanation
    assert "Drift at this site in the same period" in explanation
    refresh(pg_engine, settings)  # no new labels: nothing read again, no duplicate
    assert len(_performance_alerts(pg_engine)) == 1


def test_auroc_cusum_by_scanner_model_alerts_the_new_unit_by_name(
    pg_engine: Engine, simulated: list[object]
) -> None:
    """With ``by_fields``, site-02's new reader (a new ManufacturerModelName after its change)
    gets a CUSUM of its own, against the site's reference, and an alert of its own that names
    it; the other scanners, each with its own CUSUM too, raise none. Every value gets one
    (``new_values_only`` off): labels lag their studies, so 26 of the 300 reference cases of
    site-02 are already the new reader's, over ``known_share``."""
    auroc_cusum = AurocCusum(
        reference_cases=300,
        drop=0.08,
        reference_confidence=0.9,
        arl0=20_000,
        by_fields=("ManufacturerModelName",),
        new_values_only=False,
    )
    settings = _auroc_cusum_only(auroc_cusum)
    ingest(pg_engine, simulated)
    refresh(pg_engine, settings)
    alerts = _performance_alerts(pg_engine)
    assert {(a.site_id, a.detector) for a in alerts} == {("site-02", "performance.auroc_cusum")}
    by_unit = [a for a in alerts if "on cases with" in a.explanation]
    assert len(by_unit) == 1 and len({a.alert_id for a in alerts}) == len(alerts)
    assert by_unit[0].explanation.startswith(
        "AUROC CUSUM for lesion on cases with ManufacturerModelName 'REGIUS MODEL 110': "
        "evidence of a drop"
    ), by_unit[0].explanation
    with pg_engine.connect() as connection:
        states = {
            row.site_id: row.state
            for row in connection.execute(
                select(PerformanceAlarmRow.site_id, PerformanceAlarmRow.state)
            )
        }
    assert "auroc_cusum[ManufacturerModelName=REGIUS MODEL 110]" in states["site-02"]["rules"]
    for site, state in states.items():  # every site's scanner got a CUSUM
        assert state["auroc_cusum"]["by_value"]["ManufacturerModelName"], site
    counts = states["site-02"]["auroc_cusum"]["reference_values"]["ManufacturerModelName"]
    assert counts == {"Definium 8000": 274, "REGIUS MODEL 110": 26}
    refresh(pg_engine, settings)  # no new labels: nothing read again, no duplicate
    assert len(_performance_alerts(pg_engine)) == len(alerts)


def test_the_rules_of_all_streams_checked_together_decide_as_each_stream_alone(
    pg_engine: Engine, simulated: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alerts.evaluate`` checks every stream of a refresh in a few statements (states read
    and locked together, the labels after every watermark in one read); the alerts, their
    updates and the saved states equal those of checking one stream per call. Both CUSUMs on,
    labels arriving over five refreshes."""
    settings = PerformanceSettings(
        rolling_window=300,
        estimate_reference=300,
        rules=RulesConfig(
            calibration_limit=None,
            auroc_cusum=AurocCusum(
                reference_cases=200,
                drop=0.08,
                reference_confidence=0.9,
                by_fields=("ManufacturerModelName",),
            ),
        ),
    )

    def replay() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        step = len(simulated) // 5
        for start in range(0, len(simulated), step):
            ingest(pg_engine, simulated[start : start + step], first_offset=start)
            refresh(pg_engine, settings, now=datetime(2027, 1, 1, tzinfo=UTC))
        with pg_engine.connect() as connection:
            alerts = connection.execute(
                select(*(c for c in AlertRow.__table__.c if c.name not in ("created_at",)))
                .where(AlertRow.detector.startswith("performance."))
                .order_by(AlertRow.alert_id)
            ).all()
            states = connection.execute(
                select(PerformanceAlarmRow.__table__.c).order_by(PerformanceAlarmRow.site_id)
            ).all()
        return (
            [dict(a._mapping) for a in alerts],
            [{k: v for k, v in s._mapping.items() if k != "updated_at"} for s in states],
        )

    together = replay()
    empty_tables(pg_engine)

    def one_at_a_time(
        connection: Connection, settings: PerformanceSettings, facts: list[WindowFacts]
    ) -> list[RuleOutcome]:
        return [outcome for one in facts for outcome in evaluate(connection, settings, [one])]

    monkeypatch.setattr(store, "evaluate", one_at_a_time)
    alone = replay()
    assert together[0], "the degraded site raises alerts"
    assert len(together[1]) == 3
    assert together == alone, _first_difference(together, alone)


def test_a_performance_alert_links_the_sites_drift_alerts_oldest_first(
    pg_engine: Engine,
) -> None:
    """The drift alerts a performance alert names come in one order (oldest first), whatever
    order the rows lie in: the together-versus-alone test above once failed on the same links
    listed in two orders, after an alert's update had moved its row."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        _drift_alert(detector, start + timedelta(days=day))
        for detector, day in (("score_ks", 3), ("ks", 1), ("mmd", 1), ("chi2", 2))
    ]
    with pg_engine.begin() as connection:
        connection.execute(AlertRow.__table__.insert(), rows)
        connection.execute(  # an update moves the oldest row to the heap's end
            AlertRow.__table__.update()
            .where(AlertRow.detector == "ks")
            .values(drifting_checks=AlertRow.drifting_checks + 1)
        )
        facts = SimpleNamespace(
            key=SimpleNamespace(site_id="site-02", model_name="cxr-lesion"),
            window_start=start,
            window_end=start + timedelta(days=10),
        )
        links = _drift_links(connection, facts)  # type: ignore[arg-type]
    named = re.findall(r"(\w+) since", links)
    assert named == ["ks", "mmd", "chi2", "score_ks"], links


def _drift_alert(detector: str, since: datetime) -> dict[str, object]:
    return {
        "alert_id": uuid.uuid5(uuid.NAMESPACE_URL, detector),
        "site_id": "site-02",
        "model_name": "cxr-lesion",
        "model_version": "1.0.0",
        "detector": detector,
        "features": ["x"],
        # Raised (or last updated) in the reverse order of their episodes' starts, so that
        # neither the rows' nor an index's order is the one asked for.
        "occurred_at": datetime(2026, 3, 20, tzinfo=UTC)
        - (since - datetime(2026, 3, 1, tzinfo=UTC)),
        "since": since,
        "window_start": since,
        "window_end": since,
        "statistic": 1.0,
        "p_value": 0.001,
        "effect_size": 0.5,
        "effect_size_name": "d",
        "explanation": "machine-written",
        "config_fingerprint": "f" * 16,
        "reference_id": uuid.uuid4(),
        "status": "open",
        "severity": "warning",
        "drift_active": True,
        "drifting_checks": 1,
        "last_drift_at": since,
        "created_at": since,
    }


def _auroc_cusum_only(auroc_cusum: AurocCusum) -> PerformanceSettings:
    """The tracker with the AUROC CUSUM as its only rule (windows of 300 cases)."""
    return PerformanceSettings(
        rolling_window=300,
        estimate_reference=300,
        rules=RulesConfig(
            sensitivity_floor=None,
            auroc_drop=None,
            calibration_limit=None,
            error_rate_cusum=None,
            auroc_cusum=auroc_cusum,
        ),
    )


def _first_difference(
    left: tuple[list[dict[str, object]], list[dict[str, object]]],
    right: tuple[list[dict[str, object]], list[dict[str, object]]],
) -> str:
    """Where two replays first differ: the table, the row and the columns with both values."""
    for table, rows_left, rows_right in zip(("alerts", "states"), left, right, strict=True):
        if len(rows_left) != len(rows_right):
            return f"{table}: {len(rows_left)} rows against {len(rows_right)}"
        for index, (a, b) in enumerate(zip(rows_left, rows_right, strict=True)):
            columns = {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
            if columns:
                return f"{table} row {index}: {columns}"
    return "no difference found"


def _performance_alerts(engine: Engine) -> list[object]:
    return [
        a for a in list_alerts(engine, limit=500).items if a.detector.startswith("performance.")
    ]
