"""CLI start time: wall time of `radsentry --help`, `radsentry token` and `radsentry audit
verify`, median of ``--runs`` fresh processes each, and the CPU time of one.

Each command runs as a person runs it, in a scratch directory on embedded defaults (its own data
dir; `audit verify` on a database that `radsentry migrate` created first, not timed). ``--cli``
names the command to time, e.g. an older checkout's console script, to compare before and after:

    .venv/bin/python -m benchmarks.cli_start --runs 5
    .venv/bin/python -m benchmarks.cli_start --runs 5 --cli /path/to/old/.venv/bin/radsentry

Prints one Markdown row per command (docs/benchmarks.md, "CLI start"). On a shared machine the
load average, printed first, says how much other work the wall times include.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "--help": ["--help"],
    "token": ["token", "--subject", "alice", "--role", "mlops"],
    "audit verify": ["audit", "verify", "--allow-unanchored"],
}


def _environment(scratch: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RADSENTRY_")}
    return env | {"HOME": str(scratch), "RADSENTRY_DATA_DIR": str(scratch / "data")}


def _run(cli: list[str], args: list[str], scratch: Path) -> tuple[float, float]:
    """Wall seconds of one run, and the CPU seconds (user + system) it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [*cli, *args], cwd=scratch, env=_environment(scratch), capture_output=True, check=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--cli",
        default=f"{shlex.quote(sys.executable)} -m monitor.service.cli",
        help="The command to time (default: this interpreter's monitor.service.cli).",
    )
    options = parser.parse_args()
    cli = shlex.split(options.cli)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; {options.cli}")
    print("| command | median wall s | runs (s) | CPU s (one run) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="radsentry-cli-start-") as directory:
        scratch = Path(directory)
        _run(cli, ["migrate"], scratch)  # the database audit verify reads
        for name, args in COMMANDS.items():
            timings = [_run(cli, args, scratch) for _ in range(options.runs)]
            walls = [wall for wall, _ in timings]
            runs = " / ".join(f"{wall:.2f}" for wall in walls)
            cpu = statistics.median(cpu for _, cpu in timings)
            print(f"| `radsentry {name}` | {statistics.median(walls):.2f} | {runs} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
