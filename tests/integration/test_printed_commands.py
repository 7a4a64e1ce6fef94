"""The commands the demo prints work pasted into a new shell (issue 22): one whose PATH lacks
the virtual environment (``radsentry`` alone is "command not found" there, and the token came
out empty), in another directory than the repository root. The lines are taken from the
functions that format the demo's instructions and run with ``bash -c`` against a live API on
PostgreSQL; the token lines run the real console script."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from monitor.service.api import create_app
from monitor.service.broker import free_port
from monitor.service.demo.loop import approval_instructions, decision_instructions
from monitor.service.lifecycle import api_server
from monitor.service.models import CandidateRow
from monitor.service.pccp import store as candidates_store
from monitor.service.retrain import store as retrain_store
from monitor.service.runtime import pasteable_cli
from monitor.service.settings import Settings
from monitor.simulate import SimulationConfig
from tests.factories import record_gate_outcome
from tests.integration.demo_fixtures import in_a_new_shell, pasteable_lines

pytestmark = pytest.mark.integration

MODEL = "cxr-lesion"
SIMULATION = SimulationConfig(
    seed=1,
    sites=3,
    studies_per_site=10,
    start=datetime(2026, 3, 1, tzinfo=UTC),
    change_site="site-02",
    change_at_index=5,
)


class Registry:
    """Our registry port: versions 1 and 2 exist, 1 is champion."""

    def __init__(self) -> None:
        self.champion = "1"

    def champion_version(self, model_name: str) -> str | None:
        return self.champion

    def move_champion(self, model_name: str, version: str) -> str | None:
        previous, self.champion = self.champion, version
        return previous

    def has_version(self, model_name: str, version: str) -> bool:
        return version in {"1", "2"}


@pytest.fixture
def live_api(pg_engine: Engine, tmp_path: Path) -> Iterator[tuple[str, Settings, Registry]]:
    """The API on a free port (local auth: the secret is created under the data dir)."""
    settings = Settings(data_dir=tmp_path / "data")
    app = create_app(settings, engine=pg_engine)
    registry = Registry()
    app.state.registry_factory = lambda: registry
    port = free_port()
    server = api_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield url, settings, registry
    finally:
        server.request_exit()
        thread.join(timeout=30)


def _passed_candidate(engine: Engine) -> CandidateRow:
    row = candidates_store.propose(
        engine, model_name=MODEL, model_version="2", proposed_by="carol", reason="retrained"
    )
    return record_gate_outcome(engine, row.candidate_id)


def test_the_printed_approval_commands_approve_promote_and_roll_back(
    live_api: tuple[str, Settings, Registry], pg_engine: Engine, tmp_path: Path
) -> None:
    url, settings, registry = live_api
    row = _passed_candidate(pg_engine)
    printed = approval_instructions(url, row, SIMULATION, pasteable_cli(settings.data_dir))
    commands = pasteable_lines(printed)
    assert [c.split("=")[0] for c in commands[:2]] == ["ALICE", "BOB"]
    # two tokens, links to the drift page and the evidence, two approvals, promote, roll back
    assert len(commands) == 8
    # Each curl answer on a line of its own, then the tokens' lengths.
    script = "\n".join(commands)
    elsewhere = tmp_path / "another-directory"
    elsewhere.mkdir()
    ran = in_a_new_shell(script + '\necho "${#ALICE} ${#BOB}"', elsewhere)
    assert ran.returncode == 0, ran.stderr
    answers = ran.stdout.splitlines()
    assert all(int(length) > 100 for length in answers[-1].split())  # JWTs, not empty
    assert "bearer token is required" not in ran.stdout
    # The link commands answer urls that a browser (no bearer header) opens.
    links = [json.loads(answer) for answer in answers if '"url"' in answer]
    assert [link["path"] for link in links] == [
        "/sites/site-02/drift-report",
        f"/candidates/{row.candidate_id}/evidence",
    ]
    evidence = httpx.get(links[1]["url"], timeout=30)
    assert evidence.status_code == 200 and "Decision record" in evidence.text
    assert httpx.get(f"{url}/candidates/{row.candidate_id}/evidence").status_code == 401
    assert registry.champion == "1"  # promoted to 2, then rolled back to 1
    promoted = candidates_store.get(pg_engine, row.candidate_id)
    assert promoted.promoted_at is not None and promoted.rolled_back_at is not None
    assert not (elsewhere / ".radsentry").exists()  # the token used the demo's data dir


def test_the_printed_decision_commands_work_too(
    live_api: tuple[str, Settings, Registry], pg_engine: Engine, tmp_path: Path
) -> None:
    url, settings, _registry = live_api
    row = _passed_candidate(pg_engine)
    printed = decision_instructions(url, row, SIMULATION, None, pasteable_cli(settings.data_dir))
    token = re.search(r"(ALICE=\$\(.+ --role mlops\))\):", printed)
    assert token is not None, printed
    commands = [line[line.index("curl ") :] for line in printed.splitlines() if "curl " in line]
    # No alert: the evidence's link and "ask for another retrain".
    assert len(commands) == 2 and commands[0].endswith("/links")
    ran = in_a_new_shell(f"{token.group(1)}\n{commands[0]}; echo\n{commands[1]}", tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "bearer token is required" not in ran.stdout
    link = json.loads(ran.stdout.splitlines()[0])
    assert httpx.get(link["url"], timeout=30).status_code == 200
    requests = retrain_store.list_requests(pg_engine).items
    assert [(r.model_name, r.requested_by) for r in requests] == [(MODEL, "alice")]


def test_the_printed_cli_is_an_absolute_path_that_needs_no_path() -> None:
    cli = pasteable_cli(Path(".radsentry"))
    data_dir, program = cli.split(" ", 1)
    assert data_dir == f"RADSENTRY_DATA_DIR={Path('.radsentry').resolve()}"
    assert Path(program.split()[0]).is_absolute()
