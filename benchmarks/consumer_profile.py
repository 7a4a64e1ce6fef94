"""Where a running `radsentry consume` process spends its time, by stage of a batch.

Attaches py-spy (not a dependency of the project: ``pip install py-spy`` into any environment
and pass its path) to the process, and attributes every sample to the deepest stage of
``Ingestor.process`` on its stack; ``other`` is the rest (the loop, metrics, other threads).
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGES = {
    "poll (fetch, decode)": ("KafkaConsumer.poll (kafka/",),
    "validate (event contract)": ("Ingestor._validate (",),
    "dead letters": ("Ingestor._dead_letter (",),
    "store: transaction": ("store_batch (monitor/service/ingest/store.py",),
    "store: inbox claim": ("_claim (monitor/service/ingest/store.py",),
    "store: COPY events": ("_write_events (monitor/service/ingest/store.py",),
    "labels: apply_labels": ("apply_labels (monitor/service/performance/labels.py",),
    "drift: load states": ("DriftMonitor._sync (",),
    "drift: engine": ("DriftMonitor._run (",),
    "drift: save states": ("DriftMonitor._save (",),
    "drift: checks, alerts, references": (
        "write_checks (",
        "write_alerts (",
        "apply_updates (",
        "record_references (",
    ),
    "commit offsets": ("Ingestor._commit (",),
    "publish alerts": ("Ingestor._publish_alerts (",),
}


@contextmanager
def recording(py_spy: Path, pid: int, out: Path, rate: int = 20) -> Iterator[None]:
    """py-spy samples process ``pid`` while the block runs (raw stacks into ``out``)."""
    command = [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate)]
    command += ["--format", "raw", "--nonblocking", "--output", str(out)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        spy.wait(60)


def stages(raw: Path) -> dict[str, float]:
    """Share of the samples in each stage (deepest stage on the stack), largest first."""
    counts: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        counts[_stage(stack.split(";"))] += int(samples)
    total = sum(counts.values()) or 1
    return {stage: count / total for stage, count in counts.most_common()}


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, prefixes in STAGES.items():
            if frame.startswith(prefixes):
                return stage
    return "other"
