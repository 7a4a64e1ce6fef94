"""Waiting for a server the tests started in a subprocess (mlflow server, Prometheus)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_serving(
    url: str, process: subprocess.Popen[bytes], log_path: Path, *, name: str, timeout_s: float
) -> None:
    """Return once ``url`` answers 200; RuntimeError with the log's tail if the process exits
    or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}):\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{name} not ready in {timeout_s} s:\n{tail(log_path)}")
