"""The command line without servers: simulate into a file, refuse bad options clearly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from monitor.service.auth import Principal, Role, TokenVerifier
from monitor.service.cli import app
from monitor.service.runtime import EXIT_SETTINGS, SettingsInvalid, load_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path / "data"))


def test_help_explains_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = ("serve", "consume", "simulate", "extract", "demo", "migrate", "schemas", "backtest")
    for command in (*commands, "report", "retrain", "scheduler", "token"):
        assert command in result.output


def test_simulate_to_jsonl_with_a_scanner_change_at_a_time(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--sites",
            "2",
            "--studies",
            "6",
            "--seed",
            "5",
            "--start",
            "2026-03-01T00:00:00",
            "--change-site",
            "site-02",
            "--change-from",
            "2026-03-01T01:30:00",
            "--jsonl",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    site_02 = [
        e for e in events if e["schema"] == "inference-event/v1" and e["site_id"] == "site-02"
    ]
    assert len(site_02) == 6
    # 30-minute interval, site-02 at +15 min: studies from 01:45 on use the degraded scanner.
    before = {
        e["metadata"]["Manufacturer"] for e in site_02 if e["occurred_at"] < "2026-03-01T01:30"
    }
    after = {
        e["metadata"]["Manufacturer"] for e in site_02 if e["occurred_at"] > "2026-03-01T01:30"
    }
    assert len(before) == len(after) == 1 and before != after


def test_bad_simulation_options_are_refused_with_a_reason(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["simulate", "--change-site", "site-09", "--change-at", "3", "--jsonl", "x"]
    )
    assert result.exit_code == 2
    assert "change_site" in result.output


def test_consume_without_a_broker_says_what_to_do() -> None:
    result = runner.invoke(app, ["consume"], env={"RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": "[]"})
    assert result.exit_code == 2
    assert "no Kafka bootstrap servers configured" in result.output


def test_token_prints_a_local_token_the_api_accepts() -> None:
    result = runner.invoke(
        app, ["token", "--subject", "mo", "--role", "site_manager", "--site", "site-01"]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert TokenVerifier(load_settings()).verify(token) == Principal(
        "mo", frozenset({Role.SITE_MANAGER}), frozenset({"site-01"})
    )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--subject", "mo", "--role", "site_manager"], "needs at least one --site"),
        (["--subject", "mo", "--role", "admin"], "Invalid value"),
        (["--subject", "mo", "--role", "mlops", "--ttl", "5"], "Invalid value"),
    ],
)
def test_token_refuses_what_it_cannot_issue(args: list[str], reason: str) -> None:
    result = runner.invoke(app, ["token", *args])
    assert result.exit_code == 2 and reason in result.output


TOKEN = ["token", "--subject", "mo", "--role", "auditor"]


def test_a_variable_that_names_no_setting_stops_the_command_in_one_line() -> None:
    result = runner.invoke(app, TOKEN, env={"RADSENTRY_AUTH_MODE": "oidc"})
    assert result.exit_code == EXIT_SETTINGS
    assert result.output.strip().splitlines() == [
        "error: RADSENTRY_AUTH_MODE: no such setting; did you mean RADSENTRY_AUTH__MODE? "
        "(README, Settings)"
    ]


def test_debug_raises_the_settings_error_with_its_traceback() -> None:
    result = runner.invoke(app, ["--debug", *TOKEN], env={"RADSENTRY_AUTH_MODE": "oidc"})
    assert isinstance(result.exception, SettingsInvalid)
    assert result.exception.problems[0].variable == "RADSENTRY_AUTH_MODE"


def test_simulate_without_a_start_ends_now_never_in_the_future(tmp_path: Path) -> None:
    """Issue 22: a "live" simulation was dated from now on, its labels days ahead of the
    clock. Without --start the last event (a late label, usually) happens at the latest now."""
    out = tmp_path / "events.jsonl"
    before = datetime.now(UTC).replace(microsecond=0)
    result = runner.invoke(
        app, ["simulate", "--sites", "2", "--studies", "4", "--seed", "9", "--jsonl", str(out)]
    )
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output
    times = [
        datetime.fromisoformat(orjson.loads(line)["occurred_at"])
        for line in out.read_bytes().splitlines()
    ]
    assert len(times) > 8  # the studies and some labels
    assert before <= max(times) <= after
    assert min(times) < before - timedelta(hours=1)  # the stream lies in the past
