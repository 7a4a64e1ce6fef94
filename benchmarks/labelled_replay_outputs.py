"""What a labelled replay leaves in its database, written out so that two revisions compare.

Runs ``run_backtest_with_labels`` of the checkout on ``PYTHONPATH`` (with one torch thread and
the start-up objects frozen, as ``radsentry backtest`` runs it) and, before its scratch server
stops, writes one JSON line per row, sorted: every drift check, alert, performance snapshot,
performance alarm state, statistics row and label in force, leaving out the columns that differ
between identical runs (wall-clock times, surrogate and random ids).
Two revisions produced the same results when the files are equal (``cmp``):

    PYTHONPATH=. .venv/bin/python -m benchmarks.labelled_replay_outputs \\
        --events /tmp/bench-lr/events-40000.jsonl.gz --labels /tmp/bench-lr/labels-40000.jsonl.gz \\
        --out /tmp/outputs-this.jsonl
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from monitor.service.backtest import labels as backtest_labels
from monitor.service.backtest.replay import freeze_start_up_objects
from monitor.service.drift.store import limit_torch_threads

TABLES = (
    "drift_checks",
    "alerts",
    "performance_snapshots",
    "performance_alarms",
    "performance_buckets",
    "labels_current",
    "label_changes",
    "prediction_counts",
)
VOLATILE = {
    "id",
    "alert_id",
    "reference_id",
    "checked_at",
    "created_at",
    "updated_at",
    "recorded_at",
    "published_at",
}
"""Wall-clock times and ids drawn at random: they differ between two runs of one revision."""


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def dump(url: str, out: Path) -> dict[str, str]:
    """Write the tables' rows to ``out``; a digest per table."""
    engine = create_engine(url, poolclass=NullPool)
    digests = {}
    try:
        with engine.connect() as connection, out.open("wb") as sink:
            for table in TABLES:
                rows = []
                for row in connection.execute(text(f'SELECT * FROM "{table}"')).mappings():
                    kept = {k: _plain(v) for k, v in row.items() if k not in VOLATILE}
                    rows.append(orjson.dumps({"table": table, **kept}, option=orjson.OPT_SORT_KEYS))
                rows.sort()
                digests[table] = (
                    f"{len(rows)} rows {hashlib.sha256(b''.join(rows)).hexdigest()[:16]}"
                )
                sink.writelines(row + b"\n" for row in rows)
    finally:
        engine.dispose()
    return digests


def _server_cpu_s(cluster: Path) -> float:
    """CPU seconds of the scratch server so far: the postmaster's own and its exited
    backends' (``/proc/PID/stat`` utime, stime, cutime, cstime; Linux)."""
    pid = (cluster / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    digests: dict[str, str] = {}
    scratch = backtest_labels.scratch_database

    server_cpu: list[float] = []

    @contextlib.contextmanager
    def dumped(cluster: Path) -> Iterator[str]:  # the replay's own server, dumped before it stops
        with scratch(cluster) as url:
            yield url
            server_cpu.append(_server_cpu_s(cluster))
            digests.update(dump(url, args.out))

    backtest_labels.scratch_database = dumped  # type: ignore[assignment]
    limit_torch_threads()  # as `radsentry backtest` does: its CPU time is the CLI's
    freeze_start_up_objects()  # as it does too
    started, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as work:
        summary = backtest_labels.run_backtest_with_labels(
            args.events, args.labels, Path(work) / "alerts.jsonl"
        )
    print(
        f"replay {time.perf_counter() - started:.1f} s wall, {summary.refreshes} refreshes; CPU: "
        f"replay process {time.process_time() - cpu:.1f} s, its PostgreSQL server "
        f"{server_cpu[0]:.1f} s"
    )
    for table, digest in digests.items():
        print(f"{table:24} {digest}")


if __name__ == "__main__":
    main()
