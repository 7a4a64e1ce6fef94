"""``radsentry backtest``: replay a file of inference events through the drift engine.

Each event goes through :meth:`DriftEngine.process`, the live consumer's code, in event-time
order; each alert raised is written as one JSON line, with ``decision_asked_at`` (when its
episode, open long enough, asked for a decision) and ``ended_at`` (the event time of the check
that ended its episode); each null when it did not happen by the end of the file. The summary gives,
per stream and detector, the share of checks inside an open episode (time in alarm) and the
alerts per month of monitored time. Memory stays bounded: a first streaming
pass checks whether the file is already in ``occurred_at`` order; if so it is streamed again, if
not external-sorted (sorted chunks in a temporary directory, then ``heapq.merge``). Only the
``--reference`` sample is held in memory. Invalid lines are reported by line number and the
contract's reason, never their content (it may carry PHI); other schemas are counted, skipped.
"""

from __future__ import annotations

import gc
import gzip
import heapq
import math
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import ValidationError
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TaskID, TimeRemainingColumn
from rich.table import Table

from monitor.drift.alerts import StreamKey
from monitor.drift.base import InsufficientDataError
from monitor.drift.config import EngineConfig
from monitor.drift.engine import DriftEngine, Outcome
from monitor.events import KNOWN_SCHEMAS, InferenceEvent, InvalidEvent, describe_errors
from monitor.events import parse_event as parse_record
from monitor.service.errors import ServiceError

DEFAULT_CHUNK_LINES = 100_000
MAX_REPORTED_INVALID = 100
PROGRESS_EVERY = 4096
_RECORD = struct.Struct("<dQI")  # event time, line number, length of the line that follows
Line = tuple[int, bytes]
"""A non-blank line of an input file: its 1-based line number and its bytes."""
Item = TypeVar("Item")


class BacktestError(ServiceError):
    """The backtest could not run: a bad config or reference, or ``--strict`` met a bad line."""


ProgressHook = Callable[[str, int, int | None], None]
"""Told (phase, lines done, lines in all or None when not yet known) as a run goes."""


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """Where an invalid line is and why it was refused (the contract's reason, no values)."""

    file: str
    line: int
    reason: str


@dataclass
class LineCounts:
    accepted: int = 0
    skipped: int = 0  # valid lines of another schema (label events)
    invalid: int = 0


DAYS_PER_MONTH = 365.25 / 12


@dataclass
class DetectorTally:
    checks: int = 0
    """Scored windows (for the online detector: blocks of its window size, or exceedances)."""
    drifting: int = 0
    alerts: int = 0
    in_alarm: int = 0
    """Checks after which an episode of this detector was open."""
    first_at: float | None = None
    last_at: float | None = None
    """Window ends (POSIX seconds) of the first and last checks: the monitored span."""

    @property
    def time_in_alarm(self) -> float | None:
        return self.in_alarm / self.checks if self.checks else None

    @property
    def alerts_per_month(self) -> float | None:
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return self.alerts / ((self.last_at - self.first_at) / 86_400 / DAYS_PER_MONTH)


@dataclass(frozen=True)
class Collecting:
    """A stream that ended the replay still collecting its reference, and what it lacked."""

    key: StreamKey
    events: int
    span_s: float
    needs: str
    """What a complete reference takes under the config (``EngineConfig.reference_needs``)."""

    @classmethod
    def of(cls, key: StreamKey, times: NDArray[np.float64], config: EngineConfig) -> Collecting:
        span = float(times[-1] - times[0]) if len(times) else 0.0
        return cls(key, len(times), span, config.reference_needs())

    def describe(self) -> str:
        return (
            f"{self.key.site_id} {self.key.model_name} {self.key.model_version}: still collecting "
            f"its reference ({self.events:,} events over {self.span_s / 86_400:.1f} days; it "
            f"needs {self.needs}), so it was never checked for drift. Replay more history, give "
            "it a reference with --reference, or set reference_size alone in --config."
        )


@dataclass
class BacktestSummary:
    """What a backtest did, for the summary table and for tests."""

    config_fingerprint: str
    events: LineCounts = field(default_factory=LineCounts)
    reference: LineCounts | None = None
    invalid_lines: list[InvalidLine] = field(default_factory=list)
    """The first :data:`MAX_REPORTED_INVALID` invalid lines (all files), by file and line."""
    tallies: dict[tuple[StreamKey, str], DetectorTally] = field(default_factory=dict)
    streams: int = 0
    alerts: int = 0
    sorted_chunks: int = 0
    """0 when the file was already in event-time order, else the external sort's chunk count."""
    elapsed_s: float = 0.0
    collecting: list[Collecting] = field(default_factory=list)
    """Streams whose reference was still incomplete at the end: never checked for drift."""

    @property
    def invalid(self) -> int:
        return self.events.invalid + (self.reference.invalid if self.reference else 0)

    @property
    def events_per_s(self) -> float:
        return self.events.accepted / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def record(self, outcome: Outcome, engine: DriftEngine | None = None) -> None:
        """Count ``outcome``; with ``engine`` (after it processed the event), also whether each
        checked detector's episode is open now."""
        for check in outcome.checks:
            if check.result is not None:
                tally = self.tallies.setdefault((check.key, check.detector), DetectorTally())
                tally.checks += 1
                tally.drifting += check.result.is_drift
                at = check.window_end.timestamp()
                tally.first_at = at if tally.first_at is None else tally.first_at
                tally.last_at = at
                if engine is not None:
                    alarm = engine.streams[check.key].alarms.get(check.detector)
                    tally.in_alarm += bool(alarm and alarm.in_episode)
        for alert in outcome.alerts:
            self.tallies.setdefault((alert.key, alert.detector), DetectorTally()).alerts += 1
            self.alerts += 1


def freeze_start_up_objects() -> None:
    """Put every object alive now, most of them the imported libraries' (about 450,000), in the
    garbage collector's permanent generation, where its full collections no longer walk them.

    For the one-shot ``radsentry backtest`` process, once its modules are imported: a replay
    allocates enough to trigger many full collections (each of the labelled replay's 330
    refreshes and 500 batches), and each one walked every one of those objects
    (docs/benchmarks.md, issue 21 item 4). Garbage collected first, so none is kept.
    """
    gc.collect()
    gc.freeze()


def load_config(path: Path | None) -> EngineConfig:
    """The engine config in ``path`` (JSON, or YAML for .yaml/.yml), or the defaults."""
    if path is None:
        return EngineConfig()
    try:
        return EngineConfig.model_validate(_read_document(path) or {})
    except ValidationError as exc:
        raise BacktestError(f"{path}: {describe_errors(exc)}") from None
    except ValueError as exc:
        raise BacktestError(f"{path}: {exc}") from None


def _read_document(path: Path) -> object:
    text = path.read_bytes()
    if path.suffix.lower() not in (".yaml", ".yml"):
        return orjson.loads(text)  # its JSONDecodeError is a ValueError
    import yaml  # type: ignore[import-untyped]  # PyYAML ships no type stubs

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None


def run_backtest(
    events_path: Path,
    out_path: Path,
    *,
    config: EngineConfig | None = None,
    reference_path: Path | None = None,
    strict: bool = False,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    temp_dir: Path | None = None,
    on_progress: ProgressHook | None = None,
) -> BacktestSummary:
    """Replay ``events_path`` (JSONL, gzip allowed) in event-time order; alerts to ``out_path``.

    Streams found in ``reference_path`` start from those events (an uploaded reference); the
    others collect theirs from their first events (``EngineConfig.reference_complete``). The
    alerts file is written only when the
    run completes. Raises :class:`BacktestError`, and OSError or EOFError for unreadable input.
    """
    started = time.perf_counter()
    engine = DriftEngine(config)
    summary = BacktestSummary(config_fingerprint=engine.config.fingerprint())
    if reference_path is not None:
        _apply_reference(engine, reference_path, summary, strict)
    partial = out_path.with_name(out_path.name + ".partial")
    with ExitStack() as stack:
        lines, total, summary.sorted_chunks = ordered_lines(
            events_path, stack, chunk_lines=chunk_lines, temp_dir=temp_dir, on_progress=on_progress
        )
        sink = stack.enter_context(partial.open("wb"))
        stack.callback(partial.unlink, missing_ok=True)  # a no-op once renamed below
        lines = reported(lines, on_progress, "replaying", total)
        _replay(engine, lines, sink, summary, strict)
        sink.close()
        partial.replace(out_path)
    summary.streams = len(engine.streams)
    summary.collecting = [
        Collecting.of(key, stream.reference.times, engine.config)
        for key, stream in engine.streams.items()
        if not stream.reference_info.frozen
    ]
    summary.elapsed_s = time.perf_counter() - started
    return summary


def ordered_lines(
    path: Path,
    stack: ExitStack,
    *,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    temp_dir: Path | None = None,
    on_progress: ProgressHook | None = None,
) -> tuple[Iterable[Line], int, int]:
    """The lines of ``path`` in event-time order: (lines, how many, sorted chunks written).

    Streams the file when it is already in order, else external-sorts it into a temporary
    directory that ``stack`` removes.
    """
    total = _lines_if_ordered(path, on_progress)
    if total is not None:
        return read_lines(path), total, 0
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=temp_dir)))
    chunks = _write_chunks(path, work, chunk_lines, on_progress)
    merged = _merge_chunks([chunk for chunk, _ in chunks], stack)
    return merged, sum(n for _, n in chunks), len(chunks)


def read_lines(path: Path) -> Iterator[Line]:
    """The non-blank lines of ``path`` (gzip-compressed or not) with their numbers, streamed."""
    with path.open("rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if compressed else path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def event_time(raw: bytes) -> float | None:
    """The ``occurred_at`` of an inference- or label-event line as POSIX seconds; None for
    other lines.

    Only the time is parsed (full validation comes at replay). Lines without one (invalid lines,
    unknown schemas) take no part in ordering.
    """
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("schema") not in KNOWN_SCHEMAS:
        return None
    with suppress(KeyError, TypeError, ValueError):
        moment = datetime.fromisoformat(document["occurred_at"])
        if moment.tzinfo is not None:
            return moment.timestamp()
    # A form the fast path does not read (e.g. a number): the contract decides, as at replay.
    try:
        event = parse_record(raw)
    except InvalidEvent:
        return None
    return event.occurred_at.timestamp()


def _lines_if_ordered(path: Path, on_progress: ProgressHook | None) -> int | None:
    """Pass 1: the number of lines when the events are in event-time order, else None."""
    latest, count = -math.inf, 0
    for _, raw in reported(read_lines(path), on_progress, "checking order"):
        count += 1
        moment = event_time(raw)
        if moment is not None and moment < latest:
            return None
        latest = latest if moment is None else moment
    return count


def _write_chunks(
    path: Path, work: Path, chunk_lines: int, on_progress: ProgressHook | None
) -> list[tuple[Path, int]]:
    """Write ``path`` as runs of ``chunk_lines`` lines sorted by (event time, line number)."""
    chunks: list[tuple[Path, int]] = []
    batch: list[tuple[float, int, bytes]] = []
    for number, raw in reported(read_lines(path), on_progress, "sorting"):
        moment = event_time(raw)
        batch.append((-math.inf if moment is None else moment, number, raw))
        if len(batch) >= chunk_lines:
            chunks.append(_write_chunk(work / f"chunk-{len(chunks):05d}", batch))
            batch = []
    if batch:
        chunks.append(_write_chunk(work / f"chunk-{len(chunks):05d}", batch))
    return chunks


def _write_chunk(path: Path, batch: list[tuple[float, int, bytes]]) -> tuple[Path, int]:
    batch.sort(key=lambda record: (record[0], record[1]))
    with path.open("wb") as chunk:
        for moment, number, raw in batch:
            chunk.write(_RECORD.pack(moment, number, len(raw)))
            chunk.write(raw)
    return path, len(batch)


def _merge_chunks(paths: list[Path], stack: ExitStack) -> Iterator[Line]:
    """The lines of all sorted chunks in (event time, line number) order."""
    runs = [_read_chunk(stack.enter_context(path.open("rb"))) for path in paths]
    for _, number, raw in heapq.merge(*runs):  # line numbers are unique: bytes never compared
        yield number, raw


def _read_chunk(chunk: BinaryIO) -> Iterator[tuple[float, int, bytes]]:
    while header := chunk.read(_RECORD.size):
        moment, number, length = _RECORD.unpack(header)
        yield moment, number, chunk.read(length)


def _accept(
    file: str, line: Line, counts: LineCounts, summary: BacktestSummary, strict: bool
) -> InferenceEvent | None:
    """The line's inference event, or None after counting it as skipped or invalid."""
    number, raw = line
    try:
        event = parse_record(raw)
    except InvalidEvent as exc:
        counts.invalid += 1
        if strict:
            raise BacktestError(f"{file} line {number}: {exc.reason}") from None
        if len(summary.invalid_lines) < MAX_REPORTED_INVALID:
            summary.invalid_lines.append(InvalidLine(file, number, exc.reason))
        return None
    if not isinstance(event, InferenceEvent):
        counts.skipped += 1
        return None
    counts.accepted += 1
    return event


def _replay(
    engine: DriftEngine,
    lines: Iterable[Line],
    sink: BinaryIO,
    summary: BacktestSummary,
    strict: bool,
) -> None:
    raised: dict[str, dict[str, object]] = {}  # in the order raised; few next to the events
    for line in lines:
        event = _accept("events", line, summary.events, summary, strict)
        if event is None:
            continue
        outcome = engine.process(event)
        summary.record(outcome, engine)
        for alert in outcome.alerts:
            raised[str(alert.alert_id)] = alert.to_json() | {
                "decision_asked_at": None,
                "ended_at": None,
            }
        for update in outcome.updates:
            record = raised.get(str(update.alert_id))
            if record is not None and update.kind in ("sustained", "ended"):
                field = "ended_at" if update.kind == "ended" else "decision_asked_at"
                record[field] = update.at.isoformat()
    for record in raised.values():
        sink.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))


def _apply_reference(
    engine: DriftEngine, path: Path, summary: BacktestSummary, strict: bool
) -> None:
    """Give every stream in ``path`` those events as its uploaded reference."""
    summary.reference = LineCounts()
    by_stream: dict[StreamKey, list[tuple[float, int, InferenceEvent]]] = {}
    for line in read_lines(path):
        event = _accept("reference", line, summary.reference, summary, strict)
        if event is not None:
            key = StreamKey(event.site_id, event.model_name, event.model_version)
            by_stream.setdefault(key, []).append((event.occurred_at.timestamp(), line[0], event))
    reason, at = f"--reference {path}", time.time()
    for key, records in sorted(by_stream.items()):
        records.sort(key=lambda record: (record[0], record[1]))
        reference = [event for _, _, event in records]
        try:
            engine.rebaseline(
                key, requested_by="backtest", reason=reason, requested_at=at, events=reference
            )
        except InsufficientDataError as exc:
            raise BacktestError(f"reference for {key} in {path}: {exc}") from None


def reported(
    items: Iterable[Item], hook: ProgressHook | None, phase: str, total: int | None = None
) -> Iterator[Item]:
    """``items``, telling ``hook`` how many have passed every :data:`PROGRESS_EVERY` items."""
    count = 0
    for count, item in enumerate(items, start=1):
        if hook is not None and count % PROGRESS_EVERY == 0:
            hook(phase, count, total)
        yield item
    if hook is not None:
        hook(phase, count, count)


@contextmanager
def rich_progress(console: Console) -> Iterator[ProgressHook]:
    """A progress bar per phase on ``console``, shown only on a terminal and removed after."""
    columns = (*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def update(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield update


def summary_tables(summary: BacktestSummary, max_rows: int = 60) -> tuple[Table, Table]:
    """Per stream and detector: checks, drifting checks, alerts, alerts per month of monitored
    time and time in alarm (share of checks inside an open episode); then the totals.

    Beyond ``max_rows`` rows only those with drifting checks are listed (a caption says so).
    """
    rows = sorted(summary.tallies.items(), key=lambda item: (item[0][0], item[0][1]))
    shown = rows if len(rows) <= max_rows else [r for r in rows if r[1].drifting or r[1].alerts]
    caption = f"{len(rows) - len(shown)} quiet rows not shown" if len(shown) < len(rows) else None
    detail = Table("site", "model", "detector", title="Checks", caption=caption)
    for name in ("checks", "drifting", "alerts", "alerts/month", "in alarm"):
        detail.add_column(name, justify="right")
    for (key, detector), tally in shown:
        counts = [f"{n:,}" for n in (tally.checks, tally.drifting, tally.alerts)]
        per_month, in_alarm = tally.alerts_per_month, tally.time_in_alarm
        counts.append("–" if per_month is None else f"{per_month:.2f}")
        counts.append("–" if in_alarm is None else f"{in_alarm:.0%}")
        model = f"{key.model_name} {key.model_version}"
        detail.add_row(key.site_id, model, detector, *counts)
    totals = Table(title="Totals", show_header=False)
    for label, value in _totals(summary):
        totals.add_row(label, value)
    return detail, totals


def _totals(summary: BacktestSummary) -> list[tuple[str, str]]:
    events, reference, chunks = summary.events, summary.reference, summary.sorted_chunks
    return [
        ("inference events replayed", f"{events.accepted:,}"),
        ("skipped (other schemas)", f"{events.skipped:,}"),
        ("invalid lines", f"{summary.invalid:,}"),
        ("streams", f"{summary.streams:,}"),
        ("alerts", f"{summary.alerts:,}"),
        ("input order", f"external sort, {chunks} chunks" if chunks else "in order"),
        ("elapsed", f"{summary.elapsed_s:,.1f} s"),
        ("events/s", f"{summary.events_per_s:,.0f}"),
        ("uploaded reference events", f"{reference.accepted:,}" if reference else "none"),
        ("config fingerprint", summary.config_fingerprint[:16]),
    ]


def print_summary(console: Console, summary: BacktestSummary) -> None:
    """Invalid lines (where and why, never their content), then the summary tables."""
    for bad in summary.invalid_lines:
        message = f"invalid: {bad.file} line {bad.line}: {bad.reason}"
        console.print(message, markup=False, highlight=False, soft_wrap=True)
    if (unlisted := summary.invalid - len(summary.invalid_lines)) > 0:
        console.print(f"... and {unlisted:,} more invalid lines")
    for stream in summary.collecting[:MAX_REPORTED_INVALID]:
        console.print(stream.describe(), markup=False, highlight=False, soft_wrap=True)
    if (more := len(summary.collecting) - MAX_REPORTED_INVALID) > 0:
        console.print(f"... and {more:,} more streams still collecting their reference")
    console.print(*summary_tables(summary))
