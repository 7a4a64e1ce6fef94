"""`radsentry train-initial` then `radsentry simulate` on embedded defaults (the MLflow SQLite
store under the data dir): the simulated events carry the champion's real scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.service.cli import app
from monitor.service.registry import registry_for
from monitor.service.settings import Settings

pytestmark = pytest.mark.integration


def test_train_initial_makes_a_champion_that_simulate_scores_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path / "data"))
    # The embedded defaults: the audit key is created in the data dir (not the tests' key).
    monkeypatch.delenv("RADSENTRY_AUDIT__SIGNING_KEY_FILE")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    runner = CliRunner()
    small = ["--sites", "1", "--studies", "40", "--test-studies", "10", "--epochs", "1"]

    trained = runner.invoke(app, ["train-initial", *small])
    assert trained.exit_code == 0, trained.output
    assert "version 1 is the champion" in trained.output

    settings = Settings()
    champion = registry_for(settings).version_by_alias("cxr-lesion", "champion")
    assert champion is not None and champion.version == "1"
    assert set(champion.aliases) == {"champion", "initial"}

    signed = runner.invoke(app, ["audit", "checkpoint"])
    assert signed.exit_code == 0, signed.output
    assert json.loads(signed.stdout)["seq"] == 1
    assert (tmp_path / "data" / "audit-signing.pub").exists()
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0 and "1 entries" in verified.output, verified.output
    exported = tmp_path / "data" / "audit.jsonl"
    assert runner.invoke(app, ["audit", "export", "--out", str(exported)]).exit_code == 0
    [logged] = [json.loads(line) for line in exported.read_text().splitlines()]
    assert (logged["action"], logged["subject"]) == ("champion.initial", "cxr-lesion/version/1")

    again = runner.invoke(app, ["train-initial", *small])
    assert again.exit_code == 1 and "already has a champion" in again.output

    out = tmp_path / "events.jsonl"
    simulate = ["simulate", "--sites", "1", "--studies", "5", "--seed", "3", "--jsonl", str(out)]
    simulated = runner.invoke(app, simulate)
    assert simulated.exit_code == 0, simulated.output
    events = [json.loads(line) for line in out.read_text().splitlines()]
    inference = [e for e in events if e["schema"].startswith("inference-event")]
    assert len(inference) == 5
    assert {e["model_version"] for e in inference} == {"1"}
    model = registry_for(settings).load_model("cxr-lesion", "1")
    assert {e["prediction"]["threshold"] for e in inference} == {model.thresholds[0]}

    plain = runner.invoke(app, [*simulate, "--scores", "score-model"])
    assert plain.exit_code == 0, plain.output
    versions = {json.loads(line).get("model_version") for line in out.read_text().splitlines()}
    assert "1" not in versions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "events.jsonl"]
    assert (tmp_path / "data" / "audit-signing.key").stat().st_mode & 0o077 == 0
