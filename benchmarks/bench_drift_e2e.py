"""End to end with drift detection: consume -> validate -> store -> detect, events/s and memory.

Publishes ``--reference`` events per site (the reference phase: collection, detector fits and
the online detector's calibration), ingests them with the real ``Ingestor`` + ``DriftMonitor``
(the code ``radsentry consume`` runs, default ``EngineConfig``), then publishes
``--monitored`` more events per site and times their ingestion: the steady state, with every
window detector and the online detector running and state saved with every batch.

    .venv/bin/python -m benchmarks.bench_drift_e2e --sites 100 \
        --database postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from monitor.drift.config import EngineConfig
from monitor.events import InferenceEvent
from monitor.service.broker import EmbeddedBroker
from monitor.service.db import make_engine, upgrade
from monitor.service.drift.store import DriftMonitor, limit_torch_threads
from monitor.service.ingest.consumer import Ingestor
from monitor.service.kafka import all_topics, ensure_topics, make_consumer, make_producer
from monitor.service.publish import publish
from monitor.service.settings import KafkaSettings
from monitor.simulate.features import FeatureStreamConfig, feature_stream


def site_events(sites: int, first: int, count: int) -> list[InferenceEvent]:
    """Events ``first .. first + count`` of every site, interleaved in time."""
    events: list[InferenceEvent] = []
    for site in range(sites):
        config = FeatureStreamConfig(site_id=f"site-{site + 1:03d}", n_events=first + count)
        events += list(feature_stream(config))[first:]
    return sorted(events, key=lambda e: (e.occurred_at, e.site_id))


def ingest(ingestor: Ingestor, target: int) -> float:
    """Run until ``target`` events are stored in total; seconds from the first batch."""
    stop = threading.Event()
    thread = threading.Thread(target=ingestor.run, args=(stop,))
    thread.start()
    start_batches = ingestor.stats.batches
    first = None
    while ingestor.stats.stored < target:
        if first is None and ingestor.stats.batches > start_batches:
            first = time.perf_counter()
        time.sleep(0.01)
    finished = time.perf_counter()
    stop.set()
    thread.join()
    return finished - (first or finished)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--monitored", type=int, default=1000, help="events per site, timed")
    parser.add_argument(
        "--database", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    limit_torch_threads()  # as `radsentry consume` does
    config = EngineConfig()
    n_reference = config.reference_events(FeatureStreamConfig().interval.total_seconds())
    name = f"radsentry_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.database, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(args.database).set(database=name).render_as_string(False))
    upgrade(engine)
    reference = site_events(args.sites, 0, n_reference)
    monitored = site_events(args.sites, n_reference, args.monitored)
    try:
        with EmbeddedBroker() as broker:
            settings = KafkaSettings(
                bootstrap_servers=[broker.bootstrap], group_id="bench", session_timeout_ms=6_000
            )
            ensure_topics([broker.bootstrap], all_topics(settings), partitions=6)
            producer = make_producer([broker.bootstrap], settings)
            publish(producer, reference, settings)
            consumer = make_consumer([broker.bootstrap], settings)
            drift = DriftMonitor(config)
            ingestor = Ingestor(engine, consumer, producer, settings, drift)
            before = rss_mb()
            reference_s = ingest(ingestor, len(reference))
            after_reference = rss_mb()
            publish(producer, monitored, settings)
            steady_s = ingest(ingestor, len(reference) + len(monitored))
            consumer.close(autocommit=False)
            producer.close()
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    streams = drift.engine.streams.values()
    buffers = sum(s.nbytes() for s in streams) / len(streams)
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; "
        f"config {config.fingerprint()[:12]}"
    )
    print(f"sites: {args.sites}; reference {n_reference}/site; monitored {args.monitored}/site")
    print(
        f"reference phase (collect, fit, calibrate): {len(reference) / reference_s:,.0f} events/s"
    )
    print(
        "steady state (store + windows + online + state): "
        f"{len(monitored) / steady_s:,.0f} events/s"
    )
    print(f"batches: {ingestor.stats.batches}; alerts published {ingestor.stats.alerts_published}")
    print(
        f"memory per site-model: buffers {buffers / 1e6:.2f} MB; peak RSS growth over the "
        f"reference phase {(after_reference - before) / args.sites:.2f} MB per stream "
        f"(peak RSS {rss_mb():,.0f} MB)"
    )


if __name__ == "__main__":
    main()
