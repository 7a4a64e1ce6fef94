"""Scale-out: end-to-end throughput of one and of two `radsentry consume` processes.

The same events for every run: ``--sites`` simulated sites (feature-level streams; sites 1, 21,
41, ... change scanner half-way through their monitored events) and a label for half of the
studies, a few hours later, keyed by site on 12-partition topics. The bundled broker and
PostgreSQL run on this machine. Each run gets fresh topics, a fresh database and its own
consumer group, and goes in two phases:

1. **reference**: the first ``--reference`` studies of every site (and the labels before them)
   are published, then the consumers start and store them: each stream collects its reference,
   fits its detectors and calibrates the online detector (timed, for the record);
2. **timed**: the consumers stop (SIGTERM), the rest of the events is published, and the same
   number of consumers starts again on that backlog. Timed from the first stored batch to the
   last event stored: events/s end to end (poll, validate, store, labels, drift engine, commit).
   They start in a new consumer group whose committed offsets are copied from the first: when
   every member of a group has left, the bundled broker (Tansu 0.6) can name a departed member
   as the leader of the next generation, and two new members then wait for ever (ADR 0001).

Over the timed phase the script also reads, from /proc, the CPU seconds of the consumers, of
the broker and of PostgreSQL (this run's backends and the server's own processes), the whole
machine's busy CPU (other work included), and how many events each consumer stored. With
``--py-spy PATH`` it samples the first consumer over the timed phase and prints the share of
each stage of a batch (``benchmarks/consumer_profile.py``).

    .venv/bin/python -m benchmarks.bench_scale_out --sites 100 --reference 1000 --monitored 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaAdminClient
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from benchmarks.consumer_profile import recording, stages
from monitor.events import Event, InferenceEvent
from monitor.service.broker import EmbeddedBroker
from monitor.service.db import make_engine, upgrade
from monitor.service.kafka import all_topics, ensure_topics, make_producer
from monitor.service.models import ProcessedEvent
from monitor.service.publish import publish
from monitor.service.settings import KafkaSettings
from monitor.simulate.features import (
    FeatureLabelConfig,
    FeatureStreamConfig,
    feature_labels,
    feature_stream,
)

RADSENTRY = str(Path(sys.executable).with_name("radsentry"))
PARTITIONS = 12
CHANGED_EVERY = 20
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_CLIENT = re.compile(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]")
"""A PostgreSQL backend serving a client connection (not one of the server's own processes)."""


def site_id(number: int) -> str:
    return f"site-{number:03d}"


def workload(
    sites: int, per_site: int, change_at: int | None, *, label_rate: float = 0.5
) -> list[Event]:
    """Every site's studies (sites 1, 21, 41, ... on a degraded scanner from ``change_at``,
    their pixel statistics 1 sd off) and a label for ``label_rate`` of them a few hours later,
    all in event-time order."""
    inference: list[InferenceEvent] = []
    for number in range(1, sites + 1):
        changed = change_at is not None and number % CHANGED_EVERY == 1
        config = FeatureStreamConfig(
            site_id=site_id(number),
            n_events=per_site,
            seed=number,
            change_at=change_at if changed else None,
            degraded_scanner=changed,
            pixel_shift_sd=1.0 if changed else 0.0,
        )
        inference += feature_stream(config)
    labels = feature_labels(
        inference, FeatureLabelConfig(label_rate=label_rate, mean_delay=timedelta(hours=3))
    )
    events: list[Event] = [*inference, *labels]
    return sorted(events, key=lambda e: (e.occurred_at, e.site_id, str(e.event_id)))


def reference_end(events: list[Event], reference: int) -> int:
    """Index of the first event after every site's first ``reference`` studies."""
    seen: dict[str, int] = {}
    for index, event in enumerate(events):
        if isinstance(event, InferenceEvent):
            seen[event.site_id] = seen.get(event.site_id, 0) + 1
            if seen[event.site_id] > reference:
                return index
    return len(events)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, all processes)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS_PER_S


def processes(name: str) -> dict[int, str]:
    """Live processes called ``name``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
    return found


@dataclass
class Phase:
    events: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds over the phase: consumers, broker, postgres, and machine (everything)."""
    stored_by: list[int] = field(default_factory=list)
    """Events stored by each consumer process (from its closing line)."""
    profile: dict[str, float] = field(default_factory=dict)
    """Share of the first consumer's samples per stage (with ``--py-spy``)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds


class Run:
    """One database, one consumer group, ``consumers`` processes at a time."""

    def __init__(
        self,
        engine: Engine,
        topics: KafkaSettings,
        consumers: int,
        reference: int,
        broker_pid: int | None,
        logs: Path,
        py_spy: Path | None = None,
    ) -> None:
        self.engine = engine
        self.database = engine.url.database or ""
        self.topics = topics
        self.consumers = consumers
        self.reference = reference
        self.broker_pid = broker_pid
        self.logs = logs
        self.py_spy = py_spy
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.started = 0

    def env(self, group: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
        return env | {
            "RADSENTRY_DATABASE__URL": self.engine.url.render_as_string(False),
            "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": json.dumps(self.topics.bootstrap_servers),
            "RADSENTRY_KAFKA__INFERENCE_TOPIC": self.topics.inference_topic,
            "RADSENTRY_KAFKA__LABELS_TOPIC": self.topics.labels_topic,
            "RADSENTRY_KAFKA__ALERTS_TOPIC": self.topics.alerts_topic,
            "RADSENTRY_KAFKA__GROUP_ID": group,
            # References by count, as in the soak (the default spans 13 weeks of event time).
            "RADSENTRY_DRIFT__REFERENCE_SIZE": str(self.reference),
            "RADSENTRY_LOGGING__LEVEL": "WARNING",
        }

    def consume(self, group: str, total: int, profile: bool = False) -> Phase:
        """Start the consumers in ``group``, wait until ``total`` events are stored in all,
        stop them; the phase from the first batch stored on (the events of that first batch
        are not counted: they were polled before the clock started). ``profile``: sample the
        first consumer with py-spy meanwhile."""
        before = self.stored()
        self._start(group)
        while (first_batch := self.stored()) == before:
            self._check_alive()
            time.sleep(0.05)
        raw = self.logs / f"{self.database}-{self.started}.py-spy"
        with ExitStack() as sampling:
            if profile and self.py_spy is not None:
                sampling.enter_context(recording(self.py_spy, self.processes[0][0].pid, raw))
            started, first = time.perf_counter(), self._cpu()
            while self.stored() < total:
                self._check_alive()
                time.sleep(0.5)
            seconds, last = time.perf_counter() - started, self._cpu()
        cpu = {
            role: sum(used - first[role].get(pid, 0.0) for pid, used in pids.items())
            for role, pids in last.items()
        }
        shares = stages(raw) if raw.exists() else {}
        return Phase(total - first_batch, seconds, cpu, self._stop(), shares)

    def stored(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(ProcessedEvent)) or 0)

    def _start(self, group: str) -> None:
        for _ in range(self.consumers):
            self.started += 1
            log = self.logs / f"{self.database}-{self.started}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [RADSENTRY, "consume", "--metrics-port", "0"],
                    env=self.env(group),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            self.processes.append((process, log))

    def _stop(self) -> list[int]:
        """SIGTERM every consumer; the events each stored."""
        for process, _ in self.processes:
            process.terminate()
        stored = []
        for process, log in self.processes:
            if process.wait(60) != 0:
                raise RuntimeError(f"a consumer exited {process.returncode}: see {log}")
            found = re.search(r"stopped cleanly: (\d+) stored", log.read_text(errors="replace"))
            stored.append(int(found.group(1)) if found else 0)
        self.processes.clear()
        return stored

    def _check_alive(self) -> None:
        for process, log in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a consumer exited ({process.returncode}): see {log}")

    def _cpu(self) -> dict[str, dict[int, float]]:
        postgres = [
            pid
            for pid, command in processes("postgres").items()
            if self.database in command or not _CLIENT.search(command)
        ]
        roles = {
            "consumers": [process.pid for process, _ in self.processes],
            "broker": [self.broker_pid] if self.broker_pid else [],
            "postgres": postgres,
        }
        used = {role: {pid: cpu_seconds(pid) for pid in pids} for role, pids in roles.items()}
        return used | {"machine": {0: machine_busy_seconds()}}


@contextmanager
def fresh_database(admin_url: str) -> Iterator[Engine]:
    """A new, migrated database on ``admin_url``'s server; dropped at the end."""
    name = f"radsentry_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(admin_url).set(database=name).render_as_string(False))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(
    args: argparse.Namespace,
    broker: EmbeddedBroker,
    consumers: int,
    phases: list[list[Event]],
    logs: Path,
) -> list[Phase]:
    """One run with ``consumers`` processes on fresh topics, phase by phase."""
    name = f"scale-{uuid.uuid4().hex[:8]}"
    topics = KafkaSettings(
        bootstrap_servers=[broker.bootstrap],
        inference_topic=f"{name}.inference",
        labels_topic=f"{name}.labels",
        alerts_topic=f"{name}.alerts",
        group_id=name,
    )
    ensure_topics([broker.bootstrap], all_topics(topics), partitions=PARTITIONS)
    broker_pid = next(
        (pid for pid, command in processes("tansu").items() if broker.bootstrap in command), None
    )
    producer = make_producer([broker.bootstrap], topics)
    results = []
    with fresh_database(args.database) as engine:
        run = Run(engine, topics, consumers, args.reference, broker_pid, logs, args.py_spy)
        total = 0
        for number, events in enumerate(phases):
            total += publish(producer, events, topics)
            group = f"{name}-{number}"
            if number:
                copy_offsets(broker.bootstrap, f"{name}-{number - 1}", group)
            results.append(run.consume(group, total, profile=number == len(phases) - 1))
    producer.close()
    return results


def copy_offsets(bootstrap: str, source: str, target: str) -> None:
    """Commit for group ``target`` the offsets group ``source`` has committed."""
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        offsets = admin.list_group_offsets(source)[source]
        failed = {
            tp: error
            for tp, error in admin.alter_group_offsets(target, offsets).items()
            if error.errno
        }
    finally:
        admin.close()
    if failed or not offsets:
        raise RuntimeError(f"offsets of {source} not copied to {target}: {failed or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--reference", type=int, default=1000, help="studies per site")
    parser.add_argument("--monitored", type=int, default=1000, help="studies per site, timed")
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--label-rate", type=float, default=0.5, help="share of studies labelled")
    parser.add_argument("--py-spy", type=Path, help="py-spy binary: profile the timed phase")
    parser.add_argument(
        "--database", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    per_site = args.reference + args.monitored
    change_at = args.reference + args.monitored // 2
    events = workload(args.sites, per_site, change_at, label_rate=args.label_rate)
    cut = reference_end(events, args.reference)
    phases = [events[:cut], events[cut:]]
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    inference = args.sites * per_site
    print(
        f"{args.sites} sites x {per_site} studies + {len(events) - inference:,} labels on "
        f"{PARTITIONS} partitions; reference phase {len(phases[0]):,} events, timed phase "
        f"{len(phases[1]):,} events",
        flush=True,
    )
    rows = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as logs:
        for consumers in args.consumers:
            reference, timed = measure(args, broker, consumers, phases, Path(logs))
            rows.append((consumers, reference, timed))
            print(
                f"{consumers} consumer(s): reference {reference.rate:,.0f} events/s, timed "
                f"{timed.rate:,.0f} events/s; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    _table(rows)


def _table(rows: list[tuple[int, Phase, Phase]]) -> None:
    cores = os.cpu_count() or 1
    base = rows[0][2].rate
    print()
    print(
        "| consumers | reference phase events/s | timed phase events/s | vs the first row | "
        "timed phase s | CPU s: consumers / broker / PostgreSQL / whole machine | "
        "stored per consumer |"
    )
    print("|---:|---:|---:|---:|---:|---|---|")
    for consumers, reference, timed in rows:
        cpu = timed.cpu
        machine = (
            f"{cpu['machine']:.1f} ({cpu['machine'] / (timed.seconds * cores):.0%} of {cores})"
        )
        print(
            f"| {consumers} | {reference.rate:,.0f} | {timed.rate:,.0f} | "
            f"{timed.rate / base:.2f}x | {timed.seconds:.1f} | {cpu['consumers']:.1f} / "
            f"{cpu['broker']:.1f} / {cpu['postgres']:.1f} / {machine} | "
            f"{' / '.join(f'{n:,}' for n in timed.stored_by)} |"
        )
    for consumers, _, timed in rows:
        if timed.profile:
            shares = ", ".join(f"{stage} {share:.0%}" for stage, share in timed.profile.items())
            print(f"\nfirst consumer of {consumers}, timed phase (py-spy): {shares}")


if __name__ == "__main__":
    main()
