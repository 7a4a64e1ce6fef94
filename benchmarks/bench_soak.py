"""Bounded soak: a real `radsentry consume` process under a steady stream for minutes.

Starts the production consumer (``radsentry consume --metrics-port``, default ``EngineConfig``
but for references of the first 1,000 events,
on a throw-away PostgreSQL database and the bundled broker), then publishes ``--rate`` events/s
from ``--sites`` simulated sites (feature-level events, interleaved round-robin) for
``--minutes``. Every ``--sample-s`` seconds it records the consumer's resident memory
(``/proc/<pid>/status``) and, from its own ``/metrics``, the events stored and the consumer lag.
The verdict compares the second half of the run with the first: memory must stay flat once the
references are full, and lag must not grow.

    .venv/bin/python -m benchmarks.bench_soak --minutes 10 --sites 100 --rate 1000
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from monitor.events import InferenceEvent
from monitor.service.broker import EmbeddedBroker, free_port
from monitor.service.kafka import all_topics, ensure_topics, make_producer
from monitor.service.publish import publish
from monitor.service.settings import KafkaSettings
from monitor.simulate.features import FeatureStreamConfig, feature_stream

RADSENTRY = str(Path(sys.executable).with_name("radsentry"))


@dataclass(frozen=True)
class Sample:
    elapsed_s: float
    published: int
    stored: float
    lag: float
    rss_mb: float


def interleaved(sites: int) -> Iterator[InferenceEvent]:
    """Every site's endless stream, one event of each in turn."""
    streams = [
        feature_stream(FeatureStreamConfig(site_id=f"site-{n + 1:03d}", n_events=10**7))
        for n in range(sites)
    ]
    while True:
        for stream in streams:
            yield next(stream)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def scrape(port: int) -> tuple[float, float]:
    """(events stored, lag summed over topics) from the consumer's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    stored = sum(
        float(m.group(1))
        for m in re.finditer(r"^radsentry_events_consumed_total\{[^}]*\} (\S+)$", body, re.M)
    )
    lag = sum(
        float(m.group(1))
        for m in re.finditer(r"^radsentry_consumer_lag\{[^}]*\} (\S+)$", body, re.M)
    )
    return stored, lag


def slope(samples: list[Sample], value: str) -> float:
    """Least-squares slope of ``value`` per minute."""
    xs = [s.elapsed_s / 60 for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs) or 1.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000, help="events per second")
    parser.add_argument("--sample-s", type=float, default=15)
    parser.add_argument(
        "--database", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    name = f"radsentry_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.database, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.database).set(database=name).render_as_string(hide_password=False)
    samples: list[Sample] = []
    try:
        with EmbeddedBroker() as broker:
            settings = KafkaSettings(
                bootstrap_servers=[broker.bootstrap], group_id="soak", session_timeout_ms=6_000
            )
            ensure_topics([broker.bootstrap], all_topics(settings), partitions=6)
            subprocess.run([RADSENTRY, "migrate"], env=_env(url, broker.bootstrap), check=True)
            metrics_port = free_port()
            consumer = subprocess.Popen(
                [RADSENTRY, "consume", "--metrics-port", str(metrics_port)],
                env=_env(url, broker.bootstrap),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                samples = _soak(args, settings, broker.bootstrap, consumer.pid, metrics_port)
            finally:
                consumer.terminate()
                consumer.wait(60)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    _report(args, samples)


def _env(database_url: str, bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env |= {
        "RADSENTRY_DATABASE__URL": database_url,
        "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": f'["{bootstrap}"]',
        "RADSENTRY_KAFKA__GROUP_ID": "soak",
        # References by count (the default spans 13 weeks of event time, more than a soak's
        # simulated clock reaches), so that they fill within the run and memory can level off.
        "RADSENTRY_DRIFT__REFERENCE_SIZE": "1000",
        "RADSENTRY_LOGGING__LEVEL": "WARNING",
    }
    return env


def _soak(
    args: argparse.Namespace, settings: KafkaSettings, bootstrap: str, pid: int, port: int
) -> list[Sample]:
    producer = make_producer([bootstrap], settings)
    stop = threading.Event()
    published = [0]

    def produce() -> None:
        events = interleaved(args.sites)
        while not stop.is_set():  # in chunks, so the count is visible while it runs
            published[0] += publish(
                producer, itertools.islice(events, 1000), settings, rate=args.rate, stop=stop
            )

    thread = threading.Thread(target=produce, daemon=True)
    started = time.monotonic()
    thread.start()
    samples: list[Sample] = []
    deadline = started + args.minutes * 60
    while time.monotonic() < deadline:
        time.sleep(args.sample_s)
        try:
            stored, lag = scrape(port)
        except OSError:
            continue  # the consumer's metrics server is not up yet
        sample = Sample(time.monotonic() - started, published[0], stored, lag, rss_mb(pid))
        samples.append(sample)
        print(
            f"{sample.elapsed_s:6.0f} s  published {sample.published:>9,}  stored "
            f"{sample.stored:>11,.0f}  lag {sample.lag:>8,.0f}  RSS {sample.rss_mb:7.1f} MB",
            flush=True,
        )
    stop.set()
    thread.join(30)
    producer.close()
    return samples


def _report(args: argparse.Namespace, samples: list[Sample]) -> None:
    if len(samples) < 4:
        print("too few samples for a verdict")
        return
    half = samples[len(samples) // 2 :]
    last, first_half_end = samples[-1], samples[len(samples) // 2 - 1]
    rate = (last.stored - first_half_end.stored) / (last.elapsed_s - first_half_end.elapsed_s)
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"{args.sites} sites, {args.rate:,.0f} events/s offered for {args.minutes:g} min; "
        f"stored {last.stored:,.0f} of {last.published:,} published"
    )
    print(f"second half: stored {rate:,.0f} events/s")
    print(
        f"second half: RSS {half[0].rss_mb:.1f} -> {last.rss_mb:.1f} MB "
        f"(slope {slope(half, 'rss_mb'):+.2f} MB/min); lag slope {slope(half, 'lag'):+,.0f} "
        f"records/min (last {last.lag:,.0f})"
    )


if __name__ == "__main__":
    main()
