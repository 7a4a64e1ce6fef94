"""``radsentry backtest``: a file of events replayed through the drift engine, alerts out."""

from __future__ import annotations

import gc
import gzip
import heapq
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import yaml  # type: ignore[import-untyped]
from typer.testing import CliRunner

from monitor.drift.alerts import StreamKey
from monitor.drift.config import EngineConfig, OnlineSettings, WindowConfig
from monitor.drift.engine import DriftEngine
from monitor.drift.online import OnlineConfig
from monitor.drift.stream import reference_id_for
from monitor.events import InferenceEvent, LabelEvent, LabelSource, to_json
from monitor.service.backtest.replay import (
    BacktestError,
    BacktestSummary,
    event_time,
    load_config,
    run_backtest,
    summary_tables,
)
from monitor.service.cli import app
from monitor.simulate.features import FeatureStreamConfig, feature_stream

# Small enough for unit-test speed, large enough for the detectors' minimums (as in
# test_drift_engine.py).
FAST = EngineConfig(
    reference_size=400,
    window=WindowConfig(size=200, min_size=100),
    detectors={"online": OnlineSettings(detector=OnlineConfig(ert=10_000, n_bootstraps=500))},
)
START = datetime(2026, 3, 1, tzinfo=UTC)
CHANGE_AT = 600
ALERT_FIELDS = {
    "schema",
    "alert_id",
    "site_id",
    "model_name",
    "model_version",
    "detector",
    "features",
    "occurred_at",
    "since",
    "window_start",
    "window_end",
    "statistic",
    "p_value",
    "effect_size",
    "effect_size_name",
    "explanation",
    "config_fingerprint",
    "reference_id",
    "decision_asked_at",
    "ended_at",
    "severity",
}
PHI = "Doe^Jane"
runner = CliRunner()


def site_events(site_id: str, n_events: int = 1200, **change: object) -> list[InferenceEvent]:
    offset = timedelta(minutes=int(site_id[-2:]))  # the two sites' events interleave
    config = {"site_id": site_id, "n_events": n_events, "start": START + offset, **change}
    return list(feature_stream(FeatureStreamConfig.model_validate(config)))


@pytest.fixture(scope="module")
def events() -> list[InferenceEvent]:
    """site-01 unchanged; site-02 switches to the degraded scanner at event CHANGE_AT."""
    quiet = site_events("site-01")
    changed = site_events("site-02", change_at=CHANGE_AT, degraded_scanner=True)
    return list(heapq.merge(quiet, changed, key=lambda event: event.occurred_at))


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.writelines(line + b"\n" for line in lines)
    return path


@pytest.fixture(scope="module")
def events_file(events: list[InferenceEvent], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("bt") / "events.jsonl", [to_json(e) for e in events])


@pytest.fixture(scope="module")
def baseline(
    events_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BacktestSummary, bytes]:
    out = tmp_path_factory.mktemp("bt") / "alerts.jsonl"
    summary = run_backtest(events_file, out, config=FAST)
    return summary, out.read_bytes()


def alerts_in(output: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in output.splitlines()]


def test_alerts_only_for_the_changed_site_after_the_change(
    events: list[InferenceEvent], baseline: tuple[BacktestSummary, bytes]
) -> None:
    summary, output = baseline
    alerts = alerts_in(output)
    assert alerts, "the scanner change must be found"
    assert {a["site_id"] for a in alerts} == {"site-02"}
    assert {"chi2", "ks"} <= {a["detector"] for a in alerts}
    assert all(set(a) == ALERT_FIELDS for a in alerts)
    changed = [e for e in events if e.site_id == "site-02"][CHANGE_AT:]
    after_change = {e.occurred_at.isoformat() for e in changed}
    assert all(a["occurred_at"] in after_change for a in alerts)
    assert all(a["config_fingerprint"] for a in alerts)
    assert (summary.events.accepted, summary.events.invalid, summary.streams) == (2400, 0, 2)
    assert summary.sorted_chunks == 0
    assert summary.alerts == len(alerts)
    ks = summary.tallies[(StreamKey("site-01", "cxr-lesion", "1.0.0"), "ks")]
    assert (ks.checks, ks.alerts) == ((1200 - 400) // 200, 0)


def test_same_alerts_as_feeding_the_engine_directly(
    events: list[InferenceEvent], baseline: tuple[BacktestSummary, bytes]
) -> None:
    engine = DriftEngine(FAST)
    direct = [alert.to_json() for event in events for alert in engine.process(event).alerts]
    written = alerts_in(baseline[1])
    added = ("decision_asked_at", "ended_at")
    assert [{k: v for k, v in a.items() if k not in added} for a in written] == direct


def test_shuffled_file_is_external_sorted_to_the_same_alerts(
    events: list[InferenceEvent], baseline: tuple[BacktestSummary, bytes], tmp_path: Path
) -> None:
    lines = [to_json(e) for e in events]
    random.Random(7).shuffle(lines)
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", lines)
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest(shuffled, out, config=FAST, chunk_lines=500, temp_dir=tmp_path)
    assert summary.sorted_chunks == 5
    assert out.read_bytes() == baseline[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alerts.jsonl", "shuffled.jsonl"]


def test_gzip_file_gives_the_same_alerts(
    events: list[InferenceEvent], baseline: tuple[BacktestSummary, bytes], tmp_path: Path
) -> None:
    compressed = write_jsonl(tmp_path / "events.jsonl.gz", [to_json(e) for e in events])
    out = tmp_path / "alerts.jsonl"
    run_backtest(compressed, out, config=FAST)
    assert out.read_bytes() == baseline[1]


def bad_lines(event: InferenceEvent) -> list[bytes]:
    """An invalid record carrying a patient name, a non-JSON line and a label event."""
    record = orjson.loads(to_json(event))
    record["metadata"]["PatientName"] = PHI
    label = LabelEvent(
        event_id=uuid.uuid4(),
        site_id=event.site_id,
        model_name=event.model_name,
        study_key=event.study_key,
        occurred_at=event.occurred_at,
        labels={"lesion": 1},
        source=LabelSource.RADIOLOGIST,
    )
    return [orjson.dumps(record), f"{PHI} is not JSON".encode(), to_json(label)]


def test_invalid_lines_are_counted_and_reported_without_their_content(
    events: list[InferenceEvent], baseline: tuple[BacktestSummary, bytes], tmp_path: Path
) -> None:
    lines = [to_json(e) for e in events]
    lines[10:10] = bad_lines(events[10])  # lines 11-13
    lines.insert(2000, b"")  # a blank line is not an event and not an error
    path = write_jsonl(tmp_path / "events.jsonl", lines)
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest(path, out, config=FAST)
    assert (summary.events.accepted, summary.events.skipped, summary.invalid) == (2400, 1, 2)
    assert [(i.line, i.reason[:40]) for i in summary.invalid_lines] == [
        (11, "metadata.PatientName: not an allowed met"),
        (12, "not valid UTF-8 JSON (unexpected charact"),
    ]
    assert out.read_bytes() == baseline[1]


def test_cli_reports_invalid_lines_by_number_and_fails_on_them_only_when_strict(
    events: list[InferenceEvent], tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "events.jsonl", [*map(to_json, events[:10]), *bad_lines(events[10])]
    )
    out = tmp_path / "alerts.jsonl"
    result = runner.invoke(app, ["backtest", "--events", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "invalid: events line 11: metadata.PatientName: not an allowed" in result.output
    assert "invalid: events line 12: not valid UTF-8 JSON" in result.output
    assert PHI not in result.output
    assert out.read_bytes() == b""
    strict = runner.invoke(app, ["backtest", "--events", str(path), "--out", str(out), "--strict"])
    assert strict.exit_code == 1
    assert "error: events line 11: metadata.PatientName" in strict.output
    assert PHI not in strict.output


def test_strict_run_leaves_no_alerts_file(events: list[InferenceEvent], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [*map(to_json, events[:500]), b"{}"])
    out = tmp_path / "alerts.jsonl"
    with pytest.raises(BacktestError, match="events line 501: unknown schema"):
        run_backtest(path, out, config=FAST, strict=True)
    assert list(tmp_path.iterdir()) == [path]


def test_uploaded_reference_replaces_the_first_events(
    events_file: Path, events: list[InferenceEvent], tmp_path: Path
) -> None:
    # site-02's reference comes from the degraded scanner: its events *before* the change now
    # differ from the reference, and site-01 is monitored from its first event.
    reference = [
        *site_events("site-01", n_events=400, seed=11),
        *site_events("site-02", n_events=400, seed=11, change_at=0, degraded_scanner=True),
    ]
    reference_file = write_jsonl(tmp_path / "reference.jsonl", [to_json(e) for e in reference])
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest(events_file, out, config=FAST, reference_path=reference_file)
    assert summary.reference is not None and summary.reference.accepted == 800
    ks = summary.tallies[(StreamKey("site-01", "cxr-lesion", "1.0.0"), "ks")]
    assert ks.checks == 1200 // 200
    alerts = alerts_in(out.read_bytes())
    site_02 = [a for a in alerts if a["site_id"] == "site-02"]
    change_time = [e for e in events if e.site_id == "site-02"][CHANGE_AT].occurred_at
    assert any(datetime.fromisoformat(str(a["occurred_at"])) < change_time for a in site_02)
    expected_reference = reference_id_for(StreamKey("site-02", "cxr-lesion", "1.0.0"), 1)
    assert {a["reference_id"] for a in site_02} == {str(expected_reference)}


def test_too_small_reference_is_refused(events_file: Path, tmp_path: Path) -> None:
    reference = write_jsonl(
        tmp_path / "reference.jsonl", [to_json(e) for e in site_events("site-01", n_events=20)]
    )
    with pytest.raises(BacktestError, match="at least 50 events"):
        run_backtest(events_file, tmp_path / "alerts.jsonl", config=FAST, reference_path=reference)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_config_is_read_from_json_or_yaml(suffix: str, tmp_path: Path) -> None:
    document = FAST.model_dump(mode="json")
    config = tmp_path / f"engine{suffix}"
    text = orjson.dumps(document) if suffix == ".json" else yaml.safe_dump(document).encode()
    config.write_bytes(text)
    assert load_config(config) == FAST
    assert load_config(None) == EngineConfig()


def test_cli_runs_with_a_config_and_prints_its_fingerprint_and_summary(
    events_file: Path, baseline: tuple[BacktestSummary, bytes], tmp_path: Path
) -> None:
    config = tmp_path / "engine.json"
    config.write_bytes(orjson.dumps(FAST.model_dump(mode="json")))
    out = tmp_path / "alerts.jsonl"
    args = ["backtest", "--events", str(events_file), "--config", str(config), "--out", str(out)]
    result = runner.invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert f"config fingerprint {FAST.fingerprint()}" in result.output
    assert out.read_bytes() == baseline[1]
    for text in ("Totals", "2,400", "site-02", "chi2", f"wrote 2 alerts to {out}"):
        assert text in result.output


def test_invalid_config_is_refused_by_field(events_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "engine.yaml"
    config.write_text("reference_size: 10\nwindow: {size: 200}\n")
    args = ["backtest", "--events", str(events_file), "--config", str(config), "--out", "x.jsonl"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "reference_size" in result.output
    assert not Path("x.jsonl").exists()


def test_event_time_reads_inference_and_label_events_only() -> None:
    event = site_events("site-01", n_events=1)[0]
    assert event_time(to_json(event)) == event.occurred_at.timestamp()
    record = orjson.loads(to_json(event))
    record["occurred_at"] = event.occurred_at.timestamp()  # a number: the contract decides
    assert event_time(orjson.dumps(record)) == event.occurred_at.timestamp()
    assert event_time(bad_lines(event)[2]) == event.occurred_at.timestamp()  # a label event
    assert event_time(bad_lines(event)[1]) is None  # not JSON
    assert event_time(b"[1, 2]") is None


def test_an_episode_that_ends_records_when_and_the_summary_gives_time_in_alarm(
    tmp_path: Path,
) -> None:
    """site-02's scanner changes for 600 events, then the old one is back: its episodes end,
    the alerts file says when, and the summary says how much of the time it was in alarm."""
    changed = site_events(
        "site-02", n_events=2400, change_at=800, change_until=1400, degraded_scanner=True
    )
    source = write_jsonl(tmp_path / "events.jsonl", [to_json(e) for e in changed])
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest(source, out, config=FAST)
    alerts = {a["detector"]: a for a in alerts_in(out.read_bytes())}
    assert "chi2" in alerts
    ended = alerts["chi2"]["ended_at"]
    assert isinstance(ended, str)
    back = changed[1400].occurred_at
    assert back <= datetime.fromisoformat(ended) <= back + timedelta(minutes=10 * 4 * 200)
    chi2 = summary.tallies[(StreamKey("site-02", "cxr-lesion", "1.0.0"), "chi2")]
    # 10 checks of 200; in alarm from the second changed window until 3 quiet ones end it.
    assert chi2.checks == 10 and chi2.time_in_alarm is not None
    assert 0.2 <= chi2.time_in_alarm <= 0.6
    per_month = chi2.alerts_per_month
    span_days = (chi2.last_at - chi2.first_at) / 86_400  # type: ignore[operator]
    assert per_month == pytest.approx(chi2.alerts / (span_days / (365.25 / 12)))
    detail, _ = summary_tables(summary)
    assert [column.header for column in detail.columns][-2:] == ["alerts/month", "in alarm"]


def test_an_episode_still_open_at_the_end_has_no_end(
    baseline: tuple[BacktestSummary, bytes],
) -> None:
    alerts = alerts_in(baseline[1])
    assert alerts and all(a["ended_at"] is None for a in alerts)  # the change never reverts


def test_a_history_shorter_than_the_default_reference_says_so_instead_of_staying_silent(
    events_file: Path, tmp_path: Path
) -> None:
    """The default reference spans 13 weeks; the file holds 1,200 events per site over about
    8 days: no check at all, and the summary says why and what to do."""
    out = tmp_path / "alerts.jsonl"
    result = runner.invoke(
        app, ["backtest", "--events", str(events_file), "--out", str(out)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b""
    for site in ("site-01", "site-02"):
        assert f"{site} cxr-lesion 1.0.0: still collecting its reference (1,200 events" in (
            result.output
        )
    assert "it needs 1,000 events spanning 91 days" in result.output
    assert "--reference" in result.output
    summary = run_backtest(events_file, tmp_path / "again.jsonl", config=FAST)
    assert summary.collecting == []  # references of 400 events: complete


def test_the_start_up_objects_are_frozen_out_of_full_collections() -> None:
    from monitor.service.backtest.replay import freeze_start_up_objects

    gc.unfreeze()  # what an earlier test's backtest command froze
    try:
        freeze_start_up_objects()
        assert gc.get_freeze_count() > 10_000  # the imported modules' objects at least
        assert gc.isenabled()
    finally:
        gc.unfreeze()  # this test process runs on
