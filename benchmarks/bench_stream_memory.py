"""Memory per monitored stream (site, model, version) with the default EngineConfig.

Feeds ``--streams`` streams their reference plus ``--monitored`` events each (events generated
per stream and dropped, so only the engine's state remains) and reports the growth of the
process's *current* resident memory (``/proc/self/statm``, after ``gc.collect()``) divided by
the number of streams: buffers, fitted detectors, torch tensors and Python objects together.

    .venv/bin/python -m benchmarks.bench_stream_memory --streams 50
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
from datetime import UTC, datetime

from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine
from monitor.service.drift.store import limit_torch_threads
from monitor.simulate.features import FeatureStreamConfig, feature_stream


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def feed(engine: DriftEngine, site: int, n_events: int) -> None:
    config = FeatureStreamConfig(site_id=f"site-{site:03d}", n_events=n_events, seed=site)
    for event in feature_stream(config):
        engine.process(event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--monitored", type=int, default=600)
    args = parser.parse_args()
    limit_torch_threads()
    config = EngineConfig()
    n_reference = config.reference_events(FeatureStreamConfig().interval.total_seconds())
    engine = DriftEngine(config)
    feed(engine, 1, n_reference + args.monitored)  # warm-up: imports, caches, pools
    gc.collect()
    before = resident_mb()
    for site in range(2, args.streams + 2):
        feed(engine, site, n_reference + args.monitored)
    gc.collect()
    per_stream = (resident_mb() - before) / args.streams
    buffers = sum(s.nbytes() for s in engine.streams.values()) / len(engine.streams) / 2**20
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; "
        f"config {config.fingerprint()[:12]}"
    )
    print(f"streams: {args.streams}, each {n_reference} + {args.monitored} events")
    print(f"resident memory per stream: {per_stream:.2f} MiB (row buffers alone {buffers:.2f} MiB)")


if __name__ == "__main__":
    main()
