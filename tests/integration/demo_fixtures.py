"""What the demo-level tests share: the demo as a real process on embedded defaults, and the
new shell a newcomer pastes its printed commands into."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

RADSENTRY: Final = str(Path(sys.executable).with_name("radsentry"))
NEW_SHELL_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
"""A new shell's PATH: the virtual environment is not on it, so `radsentry` alone is "command
not found" there (issue 22: the token came out empty)."""


def embedded_env(data_dir: Path) -> dict[str, str]:
    """The demo's environment on embedded defaults: no configured servers, ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env["RADSENTRY_DATA_DIR"] = str(data_dir)
    env["RADSENTRY_KAFKA__SESSION_TIMEOUT_MS"] = "6000"
    return env


def in_a_new_shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` run by bash as a newcomer's new terminal would: PATH without the virtual
    environment, no RADSENTRY_* or PYTHONPATH, in ``cwd`` (not the repository); stops at the
    first failing line."""
    assert shutil.which("radsentry", path=NEW_SHELL_PATH) is None  # as in a fresh shell
    return subprocess.run(
        ["bash", "-c", f"set -eu\n{script}"],
        cwd=cwd,
        env={"PATH": NEW_SHELL_PATH, "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def pasteable_lines(printed: str, *, until: str | None = None) -> list[str]:
    """The commands of an instructions block that a person pastes (token lines, and each curl
    call from its ``curl``), in order; with ``until``, only those before the first line that
    contains it. Each curl call is followed by ``echo``, so each answer is a line of its own."""
    lines = []
    for line in printed.splitlines():
        if until is not None and until in line:
            break
        command = line.strip()
        if command.startswith(("ALICE=", "BOB=")):
            lines.append(command)
        elif "curl " in command:  # alone, or after what it does ("keep the champion: curl")
            lines.append(f"{command[command.index('curl ') :]}; echo")
    return lines
