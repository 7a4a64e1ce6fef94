"""A command that cannot start says why in one line, on real processes (docs/security.md,
"Edge: secrets and settings" and "Edge: process lifecycle").

Each case starts the real ``radsentry`` command: a variable that names no setting, a short
secret, a list that is not JSON, an invalid value, and a database that does not answer (for
``serve``, ``serve --no-migrate``, ``consume``, ``scheduler`` and ``migrate``). Each ends with
one line, ``error: ...`` naming the variable or the database's host, a non-zero status and no
traceback, and never prints a secret; ``--debug`` shows the traceback. The commands start
side by side: each spends most of its ~10 s importing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.service.broker import free_port
from monitor.service.runtime import EXIT_SETTINGS, EXIT_UNREACHABLE

pytestmark = pytest.mark.integration

RADSENTRY = str(Path(sys.executable).with_name("radsentry"))
SECRET = "hunter2-is-not-long-enough"
PASSWORD = "pa55word-of-the-database"
UNREACHABLE = f"postgresql+psycopg://radsentry:{PASSWORD}@127.0.0.1:{free_port()}/radsentry"


def _run_all(
    cases: dict[str, tuple[list[str], dict[str, str]]], data_dir: Path
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Start every case's command at once; their results by case."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    base["RADSENTRY_DATA_DIR"] = str(data_dir)
    started = {
        case: subprocess.Popen(
            [RADSENTRY, *args],
            env=base | settings,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (args, settings) in cases.items()
    }
    results = {}
    for case, process in started.items():
        out, err = process.communicate(timeout=300)
        results[case] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


SETTINGS_CASES = {
    "typo": (["serve"], {"RADSENTRY_AUTH_MODE": "oidc"}),
    "short secret": (["serve"], {"RADSENTRY_AUTH__LOCAL_SECRET": SECRET}),
    "blank hmac key": (["extract", "."], {"RADSENTRY_EDGE__HMAC_KEY": " " * 32}),
    "not json": (["consume"], {"RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": "kafka-1:9092"}),
    "invalid value": (["scheduler"], {"RADSENTRY_API__PORT": "eighty"}),
}
EXPECTED_LINES = {
    "typo": "error: RADSENTRY_AUTH_MODE: no such setting; did you mean RADSENTRY_AUTH__MODE?",
    "short secret": "error: RADSENTRY_AUTH__LOCAL_SECRET: a secret needs at least 32 bytes",
    "blank hmac key": "error: RADSENTRY_EDGE__HMAC_KEY: a secret needs at least 32 bytes",
    "not json": "error: RADSENTRY_KAFKA__BOOTSTRAP_SERVERS: not valid JSON",
    "invalid value": "error: RADSENTRY_API__PORT: Input should be a valid integer",
}


def test_a_settings_error_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    results = _run_all(SETTINGS_CASES, tmp_path)
    for case, result in results.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == EXIT_SETTINGS, (case, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(EXPECTED_LINES[case]), (case, lines)
        assert SECRET not in result.stderr + result.stdout
    assert not (tmp_path / "broker.json").exists(), "nothing started"


DATABASE_CASES = {
    "serve": (["serve", "--port", str(free_port())], {}),
    "serve --no-migrate": (["serve", "--no-migrate", "--port", str(free_port())], {}),
    "consume": (
        ["consume", "--metrics-port", "0"],
        {"RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": json.dumps([f"127.0.0.1:{free_port()}"])},
    ),
    "scheduler": (["scheduler", "--metrics-port", "0"], {}),
    "migrate": (["migrate"], {}),
    "debug": (["--debug", "serve", "--no-migrate", "--port", str(free_port())], {}),
}


def test_an_unreachable_database_is_one_line_naming_its_host(tmp_path: Path) -> None:
    cases = {
        case: (args, {"RADSENTRY_DATABASE__URL": UNREACHABLE, **settings})
        for case, (args, settings) in DATABASE_CASES.items()
    }
    results = _run_all(cases, tmp_path)
    debug = results.pop("debug")
    for case, result in results.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == EXIT_UNREACHABLE, (case, result.stderr[-2000:])
        assert len(lines) == 1, (case, lines)
        assert lines[0].startswith("error: cannot reach the database, postgresql at 127.0.0.1:")
        assert "as radsentry" in lines[0] and "RADSENTRY_DATABASE__URL" in lines[0], lines
        assert PASSWORD not in result.stderr + result.stdout
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "DatabaseUnreachable" in debug.stderr
    assert PASSWORD not in debug.stderr


def test_a_taken_api_port_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    """Seen on a real `make run`: with a previous demo still on port 8000, the new one started
    its database, broker and consumer, printed uvicorn's "address already in use" among their
    lines, then "stopped during the initial-model stage; the next run takes it up again",
    which no rerun could make true. Now `serve` and `demo` say which address is taken and
    what to do, and start nothing."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        results = _run_all(
            {
                "serve": (["serve", "--port", str(port)], {}),
                "demo": (["demo", "--port", str(port), "--until", "stream"], {}),
            },
            tmp_path,
        )
    serve, demo = results["serve"], results["demo"]
    assert serve.returncode == EXIT_SETTINGS, serve.stderr[-2000:]
    assert serve.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is in use (another `radsentry serve` or demo still running?): "
        "stop it, or serve on another port (--port, RADSENTRY_API__PORT)"
    ]
    assert demo.returncode == 2, demo.stderr[-2000:]
    said = " ".join((demo.stdout + demo.stderr).split())
    assert f"cannot start: 127.0.0.1:{port} is in use" in said, said
    assert f"make run ARGS='--port {port + 1}'" in said
    assert "Traceback" not in demo.stderr + demo.stdout
    assert not (tmp_path / "pg").exists() and not (tmp_path / "broker.json").exists()
