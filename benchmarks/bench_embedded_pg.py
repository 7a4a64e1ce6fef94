"""What the embedded PostgreSQL server costs: its start and stop, and the demo's start.

``server``: in a fresh process each time, the first start of a cluster (``initdb``, start, the
``radsentry`` database), a start of the existing cluster, and the stop; then the tests' session
server (``tests.servers.pg_admin_url``: initdb and start in a temporary folder, deleted at exit).

``demo``: ``radsentry demo`` headless on a fresh data dir (``--until stream --scores
score-model``: the stream stage alone, no model training), from each checkout given: seconds
from the command's start to the banner (database, migrations, broker, consumer and API ready)
and to the first stage's tick. ``--checkout`` names the code to run (``PYTHONPATH``), so the
code before the change can run beside it from another worktree.

    .venv/bin/python -m benchmarks.bench_embedded_pg server --repeat 3
    .venv/bin/python -m benchmarks.bench_embedded_pg demo --checkout ../main --checkout . --repeat 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_CLI = "import sys; from monitor.service.cli import app; sys.argv[0] = 'radsentry'; app()"

SERVER_STEPS = """
import sys, time
from pathlib import Path
from monitor.service import embedded_pg
data_dir = Path(sys.argv[1])
started = time.perf_counter()
embedded_pg.open_embedded_database(data_dir)
opened = time.perf_counter()
embedded_pg.close_embedded_database(data_dir)
print(opened - started, time.perf_counter() - opened)
"""

TEST_SERVER = """
import time
started = time.perf_counter()
from tests.servers import pg_admin_url
from sqlalchemy import create_engine, text
with create_engine(pg_admin_url()).connect() as connection:
    connection.execute(text("SELECT 1"))
print(time.perf_counter() - started)
"""


def _python(code: str, *args: str, checkout: Path = REPO) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env["PYTHONPATH"] = str(checkout)
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=checkout,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip().splitlines()[-1]


def bench_server(repeat: int) -> None:
    rows: dict[str, list[float]] = {"first start": [], "start": [], "stop": [], "tests": []}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as folder:
            for label in ("first start", "start"):
                opened, stopped = map(float, _python(SERVER_STEPS, folder).split())
                rows[label].append(opened)
                rows["stop"].append(stopped)
        # A process that only starts the tests' server (and stops it at exit, timed with it).
        begun = time.perf_counter()
        inside = float(_python(TEST_SERVER))
        rows["tests"].append(time.perf_counter() - begun)
        print(f"  tests' session server: {inside:.2f} s to first query inside the process")
    for label, values in rows.items():
        print(f"{label:>12}: median {statistics.median(values):.2f} s  {_list(values)}")


def bench_demo(checkouts: list[Path], repeat: int) -> None:
    for _ in range(repeat):
        for checkout in checkouts:
            banner, first = _demo_once(checkout)
            print(f"{checkout}: banner {banner:.1f} s, first stage {first:.1f} s", flush=True)


def _demo_once(checkout: Path) -> tuple[float, float]:
    from monitor.service.broker import free_port

    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
        env |= {"PYTHONPATH": str(checkout), "RADSENTRY_DATA_DIR": data_dir, "COLUMNS": "200"}
        command = [
            *("demo", "--until", "stream", "--scores", "score-model", "--rate", "0"),
            *("--sites", "2", "--studies", "15", "--change-at", "8", "--seed", "3"),
            *("--port", str(free_port())),
        ]
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", RUN_CLI, *command],
            cwd=checkout,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        banner = first = float("nan")
        for line in process.stderr:
            if "RadSentry demo: API on" in line and banner != banner:
                banner = time.perf_counter() - started
            if "✓" in line:
                first = time.perf_counter() - started
        if process.wait(120) != 0:
            raise RuntimeError(f"the demo from {checkout} failed")
        return banner, first


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{value:.2f}" for value in values) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["server", "demo"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checkout", type=Path, action="append")
    args = parser.parse_args()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    if args.what == "server":
        bench_server(args.repeat)
    else:
        bench_demo([c.resolve() for c in args.checkout or [REPO]], args.repeat)


if __name__ == "__main__":
    main()
