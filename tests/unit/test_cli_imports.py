"""The command line starts without the heavy libraries (issue 22: `radsentry --help`, `token` and
`audit verify` took 4.6-4.9 s, nearly all of it imports). Each check runs in a fresh interpreter
and reads ``sys.modules``: what a command imports, not how long it took (docs/benchmarks.md,
"CLI start", has the timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "mlflow", "evidently", "scipy", "matplotlib", "pandas", "sklearn", "pydicom")
"""Never imported by these commands."""
SERVICE = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "kafka", "apscheduler")
"""The service's adapters: not imported by the CLI module itself nor by `token`."""


def _imported_by(code: str, cwd: Path) -> set[str]:
    """The top-level packages in ``sys.modules`` after ``code`` ran in a new interpreter."""
    script = (
        "import json, sys\n"
        f"{code}\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("RADSENTRY_")}
    env["RADSENTRY_DATA_DIR"] = str(cwd / "data")
    ran = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    return set(json.loads(ran.stdout.splitlines()[-1]))


def _command(*args: str) -> str:
    """Code that runs ``radsentry ARGS`` in-process and carries on after its exit."""
    return (
        "from monitor.service.cli import app\n"
        "try:\n"
        f"    app({list(args)!r}, prog_name='radsentry')\n"
        "except SystemExit:\n"
        "    pass\n"
    )


def test_importing_the_command_line_imports_no_heavy_library(tmp_path: Path) -> None:
    imported = _imported_by("import monitor.service.cli", tmp_path)
    assert imported.isdisjoint(HEAVY + SERVICE), imported & {*HEAVY, *SERVICE}


@pytest.mark.parametrize(
    "args",
    [("--help",), ("token", "--subject", "alice", "--role", "mlops")],
    ids=["help", "token"],
)
def test_help_and_token_import_no_heavy_library_nor_the_service(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    imported = _imported_by(_command(*args), tmp_path)
    assert imported.isdisjoint(HEAVY + SERVICE), imported & {*HEAVY, *SERVICE}


def test_audit_verify_imports_the_database_layer_only(tmp_path: Path) -> None:
    _imported_by(_command("migrate"), tmp_path)  # a database to verify
    imported = _imported_by(_command("audit", "verify", "--allow-unanchored"), tmp_path)
    assert "sqlalchemy" in imported  # it did verify
    left_out = (*HEAVY, "fastapi", "uvicorn", "kafka", "apscheduler")
    assert imported.isdisjoint(left_out), imported & set(left_out)
