"""The main job on embedded defaults: no configured servers; RadSentry's own PostgreSQL server
(cluster in the data dir) and the bundled broker, both stopped when the command ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from monitor.service.audit.store import entries, verify
from monitor.service.broker import free_port
from monitor.service.db import make_engine
from monitor.service.embedded_pg import (
    CLUSTER_DIR,
    close_embedded_database,
    database_url,
    migration_database_url,
    open_embedded_database,
)
from monitor.service.models import InferenceEventRow, LabelEventRow
from monitor.service.pccp import store as candidates_store
from monitor.service.settings import Settings
from tests.integration.demo_fixtures import in_a_new_shell, pasteable_lines

pytestmark = pytest.mark.integration

RADSENTRY = str(Path(sys.executable).with_name("radsentry"))


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env["RADSENTRY_DATA_DIR"] = str(data_dir)
    env["RADSENTRY_KAFKA__SESSION_TIMEOUT_MS"] = "6000"
    return env


@contextmanager
def embedded_engine(data_dir: Path) -> Iterator[Engine]:
    """An engine on ``data_dir``'s embedded database, its server started again for the block."""
    engine = make_engine(open_embedded_database(data_dir).url())
    try:
        yield engine
    finally:
        engine.dispose()
        close_embedded_database(data_dir)


def server_stopped(data_dir: Path) -> bool:
    """No embedded server runs in ``data_dir`` (PostgreSQL removes postmaster.pid on a clean
    stop)."""
    return not (data_dir / CLUSTER_DIR / "postmaster.pid").exists()


def _counts(data_dir: Path) -> tuple[int, int]:
    with embedded_engine(data_dir) as engine, engine.connect() as connection:
        inference = connection.scalar(select(func.count()).select_from(InferenceEventRow))
        labels = connection.scalar(select(func.count()).select_from(LabelEventRow))
    return inference or 0, labels or 0


def test_with_no_database_configured_the_services_get_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    for name in [name for name in os.environ if name.startswith("RADSENTRY_")]:
        monkeypatch.delenv(name)
    settings = Settings(data_dir=data_dir)
    try:
        url = database_url(settings)
        assert migration_database_url(settings) == url
        engine = make_engine(url)
        with engine.connect() as connection:
            assert engine.dialect.name == "postgresql"
            assert connection.exec_driver_sql("SELECT current_database()").scalar() == "radsentry"
        engine.dispose()
        assert (data_dir / CLUSTER_DIR / "PG_VERSION").exists()
    finally:
        close_embedded_database(data_dir)
    assert server_stopped(data_dir)


def test_demo_runs_headless_and_stores_the_stream(data_dir: Path) -> None:
    result = subprocess.run(
        [
            RADSENTRY,
            "demo",
            "--sites",
            "2",
            "--studies",
            "15",
            "--seed",
            "3",
            "--rate",
            "0",
            "--change-at",
            "8",
            "--port",
            str(free_port()),
            "--exit-when-done",
        ],
        env=_embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stream done" in result.stderr
    inference, labels = _counts(data_dir)
    assert inference == 30
    assert 0 < labels <= 30
    assert not (data_dir / "broker.json").exists(), "the bundled broker must be stopped"
    assert server_stopped(data_dir), "the embedded PostgreSQL server must be stopped"


def _stream_demo(data_dir: Path, *extra: str, seed: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            RADSENTRY,
            "demo",
            *("--sites", "2", "--studies", "15", "--seed", str(seed), "--change-at", "8"),
            *("--rate", "0", "--port", str(free_port()), "--exit-when-done", *extra),
        ],
        env=_embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_second_demo_resumes_and_fresh_starts_over(data_dir: Path) -> None:
    """Issue 22: a second `make run` on the same clone failed. Now it resumes what the first
    stored (the stream is not published again), --fresh deletes it and starts over, and a run
    asking for another stream says what to do. The periodic jobs' INFO lines (the refresh
    every 15 s) stay out of the demo's console."""
    first = _stream_demo(data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "✓ stream (" in first.stderr and "since the demo started" in first.stderr
    assert "performance refreshed" not in first.stderr

    second = _stream_demo(data_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming the demo run of" in second.stderr
    assert "✓ stream (previous run): stream done: 54 events published" in second.stderr
    assert _counts(data_dir) == (30, 24)

    other = _stream_demo(data_dir, seed=4)
    assert other.returncode == 2
    assert "seed 3 then, 4 now" in other.stderr and "ARGS=--fresh" in other.stderr

    fresh = _stream_demo(data_dir, "--fresh", seed=4)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "starting over" in fresh.stderr and "resuming" not in fresh.stderr
    assert "since the demo started): stream done" in fresh.stderr
    inference, _labels = _counts(data_dir)
    assert inference == 30  # seed 4's stream alone: seed 3's was deleted


LOOP = (
    "initial-model",
    "stream",
    "drift-alert",
    "performance-alert",
    "retrain-request",
    "candidate",
    "gate",
    "decision",
)


@pytest.mark.slow  # about 3 minutes: trains the initial model and a candidate
def test_demo_runs_the_whole_loop_headless_to_a_decision(data_dir: Path, tmp_path: Path) -> None:
    """`make run`'s loop on a fresh data dir, headless: v1 trained and made champion, the
    stream, both kinds of alert at the changed site, the request, a challenger in the local
    MLflow store with its threshold set by the plan's policy, the PCCP gate on the locked test
    set, and the decision left to a person; each stage printed and recorded. Then `make run`
    again on the same data dir (issue 22's "twice in a row"): it resumes, nothing trained
    again, serves, and the lines it prints work pasted into a new shell.

    The locked test set holds the AP studies that site-02's new portable reader sends (plan
    1.3.0), so the content-coverage guard (PE-16) passes. Whether the candidate passes the
    metric criteria depends on its trained weights, and those on the CPU's arithmetic: with
    rehearsal at lr 3e-4 the demo's recipe passes every criterion on a development set but
    only about half of its locked-sized draws (docs/pccp.md, "Why these margins").
    A passed candidate is approved and promoted by the pasted lines, and a third run says so;
    a failed one gets the decision's lines instead (each failed criterion named)."""
    port = free_port()
    result = subprocess.run(
        [RADSENTRY, "demo", "--until", "decision", "--rate", "0", "--port", str(port)],
        env=_embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for stage in LOOP:
        assert f"✓ {stage} (" in result.stderr, (stage, result.stderr[-3000:])
    assert "health score at site-02: " in result.stderr  # the performance-alert stage's line
    assert "health score at site-02: not computed yet" not in result.stderr
    assert "[embedding_mmd] " in result.stderr  # v2 events: the model's embedding drifted too
    assert "/sites/site-02/health" in result.stderr
    assert server_stopped(data_dir), "the embedded PostgreSQL server must be stopped"
    with embedded_engine(data_dir) as engine:
        assert verify(engine).ok
        logged = {entry.action for entry in entries(engine)}
        [candidate] = candidates_store.list_candidates(engine).items
    assert {
        "champion.initial",
        "retrain.requested",
        "candidate.proposed",
        "training.run",
        "plan.loaded",
        "gate.result",
    } <= logged
    assert candidate.report is not None
    report = candidate.report
    assert f"http://127.0.0.1:{port}/candidates/{candidate.candidate_id}/evidence" in (
        result.stderr
    )
    assert [c["id"] for c in report["criteria"]] == [f"PE-{n}" for n in range(1, 17)]
    failed = {c["id"]: c["detail"] for c in report["criteria"] if not c["passed"]}
    # The locked test set covers what site-02 sends now: AP views from its portable reader.
    assert "PE-16" not in failed, failed["PE-16"]
    [coverage] = [c for c in report["criteria"] if c["id"] == "PE-16"]
    shown = {(row["value"], row["covered"]) for row in coverage["coverage"]}
    assert ("AP", True) in shown, coverage["coverage"]
    assert report["scope_violations"] == []  # the plan's threshold policy set the threshold
    assert report["threshold"]["rule"] == "hold_champion_sensitivity"
    assert report["threshold"]["source"] == "tuning_split"
    if candidate.status == "passed":
        assert failed == {} and "Waiting for approval." in result.stderr
    else:
        assert candidate.status == "failed" and failed, result.stderr[-3000:]
        assert "Not promotable" in result.stderr
        for criterion in failed:
            assert f"  {criterion}: " in result.stderr, criterion
    assert (data_dir / "locked-test" / "cxr-lesion-pccp.jsonl").exists()
    assert not (data_dir / "broker.json").exists(), "the bundled broker must be stopped"

    second = _second_run_pastes_its_lines(data_dir, tmp_path, candidate.model_version)
    assert "✓ candidate (previous run)" in second  # nothing trained again
    assert "training cxr-lesion v1" not in second and "training the candidate" not in second
    if candidate.status != "passed":
        return
    with embedded_engine(data_dir) as engine:
        assert candidates_store.get(engine, candidate.candidate_id).status == "promoted"
        assert verify(engine).ok
    third = subprocess.run(
        [RADSENTRY, "demo", "--until", "decision", "--port", str(free_port())],
        env=_embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"version {candidate.model_version} was promoted after the previous run" in (
        third.stderr
    )


def _second_run_pastes_its_lines(data_dir: Path, home: Path, version: str) -> str:
    """`make run` again (it serves until Ctrl-C): once it prints its instructions, paste them
    into a new shell (a passed candidate's up to the rollback: tokens, signed links, two
    approvals and the promotion; a failed one's token, link and the alert's acknowledgement);
    then Ctrl-C. What the demo printed."""
    port = free_port()
    demo = subprocess.Popen(
        [RADSENTRY, "demo", "--rate", "0", "--port", str(port)],
        env=_embedded_env(data_dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job
    )
    assert demo.stderr is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 300
        for line in demo.stderr:
            seen.append(line)
            if "serving on" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)[-3000:]
        printed = "".join(seen)
        assert "resuming the demo run of" in printed, printed[-3000:]
        model = (
            f'curl -s -H "Authorization: Bearer $ALICE" http://127.0.0.1:{port}/models/cxr-lesion'
        )
        if "Waiting for approval." in printed:
            block = printed[printed.rindex("Waiting for approval.") :]
            lines = pasteable_lines(block, until="# and to undo it")
            # two tokens, links to the drift page and the evidence, two approvals, promote
            assert len(lines) == 7, block
        else:
            block = printed[printed.rindex("Not promotable.") :]
            token = re.search(r"(ALICE=\$\(.+ --role mlops\))\):", block)
            assert token is not None, block
            lines = [token.group(1), *pasteable_lines(block, until="or ask for another retrain")]
            # the token, the evidence's link, the alert's acknowledgement
            assert len(lines) == 3, block
        ran = in_a_new_shell("\n".join([*lines, model]), home)
        assert ran.returncode == 0, ran.stderr
        answers = ran.stdout.splitlines()
        assert "bearer token is required" not in ran.stdout, answers
        link = next(json.loads(answer) for answer in answers if '"url"' in answer)
        assert httpx.get(link["url"], timeout=30).status_code == 200  # a browser opens it
        champion = json.loads(answers[-1])["champion"]
        if "Waiting for approval." in printed:
            assert '"status":"promoted"' in answers[-2].replace(" ", ""), answers
            assert champion == version, answers[-1]
        else:
            assert '"acknowledged' in answers[-2], answers
            assert champion == "1", answers[-1]
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        rest = demo.communicate(timeout=120)[1]
    assert demo.returncode == 0, rest[-3000:]
    return printed + rest


def test_serve_then_simulate_in_another_process(data_dir: Path) -> None:
    port = free_port()
    env = _embedded_env(data_dir)
    serve = subprocess.Popen(
        [RADSENTRY, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.3)
        simulate = subprocess.run(
            [RADSENTRY, "simulate", "--sites", "2", "--studies", "5", "--seed", "11"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert simulate.returncode == 0, simulate.stderr[-2000:]
        # A local-mode token from the same data dir (the secret serve created there).
        token = subprocess.run(
            [RADSENTRY, "token", "--subject", "tester", "--role", "auditor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/sites").status_code == 401
        deadline = time.monotonic() + 60
        while (
            sum(s["inference_events"] for s in httpx.get(f"{base}/sites", headers=auth).json()) < 10
        ):
            assert time.monotonic() < deadline, "events did not arrive"
            time.sleep(0.3)
        sites = httpx.get(f"{base}/sites", headers=auth).json()
        assert [s["site_id"] for s in sites] == ["site-01", "site-02"]
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
    assert serve.returncode == 0
    assert not (data_dir / "broker.json").exists()
    assert server_stopped(data_dir), "the embedded PostgreSQL server must be stopped"
