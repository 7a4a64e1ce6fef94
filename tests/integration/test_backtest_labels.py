"""``radsentry backtest --labels``: performance alerts from history, and the same drift alerts."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.events import InferenceEvent, LabelEvent, to_json
from monitor.performance.rules import RulesConfig
from monitor.service.backtest.labels import run_backtest_with_labels
from monitor.service.backtest.replay import run_backtest
from monitor.service.cli import app
from monitor.service.settings import PerformanceSettings
from monitor.simulate import SimulationConfig, simulate

DRIFT = EngineConfig(
    reference_size=100,
    window=WindowConfig(size=100, min_size=50),
    detectors=DetectorSet(online=None),
)
# The simulator's scores are not calibrated probabilities: the calibration rule is off.
PERFORMANCE = PerformanceSettings(
    rolling_window=200, estimate_reference=200, rules=RulesConfig(calibration_limit=None)
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Events and labels of 3 sites x 700 studies (site-02 degraded from study 300), the
    labels file shuffled (the backtest sorts it)."""
    root = tmp_path_factory.mktemp("history")
    config = SimulationConfig(
        seed=5,
        start=datetime(2026, 5, 1, tzinfo=UTC),
        sites=3,
        studies_per_site=700,
        image_size=64,
        change_site="site-02",
        change_at_index=300,
    )
    stream = list(simulate(config, root / "studies"))
    events = [to_json(e) for e in stream if isinstance(e, InferenceEvent)]
    labels = [to_json(e) for e in stream if isinstance(e, LabelEvent)]
    random.Random(1).shuffle(labels)
    (root / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    (root / "labels.jsonl").write_bytes(b"\n".join([*labels, b"not json"]) + b"\n")
    return root / "events.jsonl", root / "labels.jsonl"


def test_performance_alerts_for_the_degraded_site_and_the_plain_backtests_drift_alerts(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    events, labels = files
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest_with_labels(
        events, labels, out, config=DRIFT, performance=PERFORMANCE, refresh_every=200
    )
    assert summary.events.accepted == 2100 and summary.labels.invalid == 1
    assert summary.refreshes >= 5
    alerts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    performance = [a for a in alerts if a["detector"].startswith("performance.")]
    assert performance and {a["site_id"] for a in performance} == {"site-02"}
    assert all(a["features"] == ["lesion"] for a in performance)

    plain = tmp_path / "drift-only.jsonl"
    run_backtest(events, plain, config=DRIFT)
    drift_only = {orjson.loads(line)["alert_id"] for line in plain.read_bytes().splitlines()}
    assert drift_only == {
        a["alert_id"] for a in alerts if not a["detector"].startswith("performance.")
    }


def test_cli_backtest_with_labels(files: tuple[Path, Path], tmp_path: Path) -> None:
    events, labels = files
    config = tmp_path / "engine.json"
    config.write_bytes(orjson.dumps(DRIFT.model_dump(mode="json")))
    out = tmp_path / "alerts.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            "--events",
            str(events),
            "--labels",
            str(labels),
            "--config",
            str(config),
            "--out",
            str(out),
        ],
        env={  # the settings of PERFORMANCE, the way a deployment sets them
            "RADSENTRY_PERFORMANCE__ROLLING_WINDOW": "200",
            "RADSENTRY_PERFORMANCE__ESTIMATE_REFERENCE": "200",
            "RADSENTRY_PERFORMANCE__RULES__CALIBRATION_LIMIT": "null",
        },
    )
    assert result.exit_code == 0, result.output
    assert "(invalid 1), performance refreshed" in result.output
    assert "performance." in result.output
    assert out.exists()
