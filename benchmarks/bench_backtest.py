"""``radsentry backtest`` on a large file: wall time, events/s and peak memory (RSS).

Writes ``--sites`` x ``--events-per-site`` inference events (default 100 x 10,000 = 1,000,000)
from :mod:`monitor.simulate.features` as gzipped JSONL, streaming (site 50 switches to the
degraded scanner half-way, so there are alerts to write), then runs the real command in a child
process and reads its peak RSS from ``getrusage(RUSAGE_CHILDREN)``. ``--order site`` writes the
sites one after another instead of in event-time order, which sends the run through the
external sort. The file is kept in ``--workdir`` and reused by later runs with the same size.

    .venv/bin/python -m benchmarks.bench_backtest                        # 1M, default config
    .venv/bin/python -m benchmarks.bench_backtest --events-per-site 2000 # 200k
    .venv/bin/python -m benchmarks.bench_backtest --order site --without mmd online
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from monitor.events import InferenceEvent, to_json
from monitor.simulate.features import FeatureStreamConfig, feature_stream

START = datetime(2026, 1, 1, tzinfo=UTC)
CHANGED_SITE = 50
RUN_CLI = "import sys; from monitor.service.cli import app; sys.argv[0] = 'radsentry'; app()"
IMPORTS_ONLY = (
    "import resource, monitor.service.cli, monitor.service.backtest.replay; "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def site_stream(site: int, n_events: int) -> Iterator[InferenceEvent]:
    config = FeatureStreamConfig(
        site_id=f"site-{site:03d}",
        n_events=n_events,
        seed=site,
        start=START + timedelta(seconds=6 * site),  # sites interleave in event time
        change_at=n_events // 2 if site == CHANGED_SITE else None,
        degraded_scanner=site == CHANGED_SITE,
    )
    return feature_stream(config)


def write_events(path: Path, sites: int, per_site: int, order: str) -> float:
    """Write the events (gzip level 1) without holding them; returns the seconds it took."""
    started = time.perf_counter()
    streams = [site_stream(site, per_site) for site in range(1, sites + 1)]
    if order == "time":
        events: Iterator[InferenceEvent] = heapq.merge(*streams, key=lambda e: e.occurred_at)
    else:
        events = (event for stream in streams for event in stream)
    partial = path.with_name(path.name + ".partial")
    with gzip.open(partial, "wb", compresslevel=1) as out:
        for event in events:
            out.write(to_json(event) + b"\n")
    partial.replace(path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--events-per-site", type=int, default=10_000)
    parser.add_argument("--order", choices=("time", "site"), default="time")
    parser.add_argument("--config", type=Path, help="EngineConfig JSON/YAML (default: defaults)")
    parser.add_argument(
        "--without", nargs="+", default=[], help="detectors to turn off (writes a config)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-bt")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    total = args.sites * args.events_per_site
    events = args.workdir / f"events-{args.sites}x{args.events_per_site}-{args.order}.jsonl.gz"
    if not events.exists():
        seconds = write_events(events, args.sites, args.events_per_site, args.order)
        print(f"wrote {total:,} events to {events} in {seconds:.0f} s")
    size_mib = events.stat().st_size / 2**20
    baseline = subprocess.run(
        [sys.executable, "-c", IMPORTS_ONLY], check=True, capture_output=True, text=True
    )
    out = args.workdir / "alerts.jsonl"
    command = ["backtest", "--events", str(events), "--out", str(out)]
    if args.without:
        args.config = args.workdir / f"without-{'-'.join(args.without)}.json"
        args.config.write_bytes(orjson.dumps({"detectors": dict.fromkeys(args.without)}))
    if args.config is not None:
        command += ["--config", str(args.config)]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN_CLI, *command], check=True)
    wall = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    alerts = sum(1 for _ in out.open("rb"))
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} CPUs\nradsentry {' '.join(command)}\n"
        f"events {total:,} ({size_mib:,.0f} MiB gzipped, order: {args.order}), "
        f"alerts {alerts}, wall {wall:,.1f} s, {total / wall:,.0f} events/s end to end, "
        f"peak RSS {peak_mib:,.0f} MiB (imports alone {int(baseline.stdout) / 1024:,.0f} MiB)"
    )


if __name__ == "__main__":
    main()
