"""``radsentry backtest --labels``: performance alerts from history, and the same drift alerts."""

from __future__ import annotations

import logging
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import structlog
from structlog.testing import capture_logs
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
    progress: list[tuple[str, int, int | None]] = []
    summary = run_backtest_with_labels(
        events,
        labels,
        out,
        config=DRIFT,
        performance=PERFORMANCE,
        refresh_every=200,
        on_progress=lambda *report: progress.append(report),
    )
    lines = summary.events.accepted + summary.labels.accepted + summary.labels.invalid
    assert progress[-1] == ("replaying", lines, lines)
    assert {"events: checking order", "labels: sorting"} <= {phase for phase, _, _ in progress}
    assert summary.events.accepted == 2100 and summary.labels.invalid == 1
    assert summary.refreshes >= 5
    alerts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    performance = [a for a in alerts if a["detector"].startswith("performance.")]
    assert performance and {a["site_id"] for a in performance} == {"site-02"}
    assert all(a["features"] == ["lesion"] for a in performance)
    by_rule = Counter(
        (a["site_id"], a["features"][0], a["detector"].removeprefix("performance."))
        for a in performance
    )
    assert {
        (stream.site_id, finding, rule): tally.alerts
        for ((stream, finding), rule), tally in summary.performance_alerts.items()
    } == by_rule
    for ((stream, _), rule), tally in summary.performance_alerts.items():
        assert tally.first_at == min(
            datetime.fromisoformat(a["occurred_at"])
            for a in performance
            if a["site_id"] == stream.site_id and a["detector"] == f"performance.{rule}"
        )
    assert {stream.site_id for stream, _ in summary.coverage} == {"site-01", "site-02", "site-03"}
    assert all(0 < c.labelled <= c.predicted == 700 for c in summary.coverage.values())

    plain = tmp_path / "drift-only.jsonl"
    run_backtest(events, plain, config=DRIFT)
    drift_only = {orjson.loads(line)["alert_id"] for line in plain.read_bytes().splitlines()}
    assert drift_only == {
        a["alert_id"] for a in alerts if not a["detector"].startswith("performance.")
    }


def test_cli_backtest_with_labels_is_quiet_and_tabulates_the_performance_alerts(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    events, labels = files
    with capture_logs() as logs:  # the service's code, as the consumer and scheduler run it
        summary = run_backtest_with_labels(
            events, labels, tmp_path / "api.jsonl", config=DRIFT, performance=PERFORMANCE
        )
    raised = [entry for entry in logs if entry["event"] == "performance alerts raised"]
    assert {entry["site_id"] for entry in raised} == {"site-02"}

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
            "COLUMNS": "200",
        },
    )
    assert result.exit_code == 0, result.output
    assert "performance alerts raised" not in result.output
    assert "performance refreshed" not in result.output
    assert structlog.get_logger().get_effective_level() == logging.INFO  # restored after

    rows = _table_rows(result.output)
    performance_rows = {(row[0], row[2], row[3]): row for row in rows if len(row) == 8}
    assert summary.performance_alerts
    for ((stream, finding), rule), tally in summary.performance_alerts.items():
        row = performance_rows.pop((stream.site_id, finding, rule))
        assert tally.first_at is not None
        assert row[4:6] == [f"{tally.alerts:,}", f"{tally.first_at:%Y-%m-%d %H:%M}"]
        assert row[6] == f"{summary.coverage[stream, finding].labelled:,}"
    assert {site for site, _, _ in performance_rows} == {"site-01", "site-03"}
    assert all(row[3:6] == ["–", "0", "–"] for row in performance_rows.values())
    totals = {row[0]: row[1] for row in rows if len(row) == 2}
    assert totals["performance refreshes"] == f"{summary.refreshes:,}"
    assert totals["performance alerts"] == str(
        sum(tally.alerts for tally in summary.performance_alerts.values())
    )
    assert totals["drift alerts"] == str(sum(summary.drift_alerts_by_detector.values()))
    assert f"wrote {summary.alerts} alerts to" in result.output
    assert out.read_bytes().count(b"\n") == summary.alerts


def _table_rows(output: str) -> list[list[str]]:
    """The cells of each body row of the tables the command printed."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]
