"""The performance tracker's refresh: cost per site as labelled history grows, and at 100 sites.

Two measurements on a real PostgreSQL (``--url``, default the local server; a scratch database
is created and dropped):

* ``curve``: one site whose history holds 10,000, 100,000 and 1,000,000 labelled cases (100 a
  day, the default subgroup fields). Every case is in the raw tables (``inference_events`` and
  ``labels_current``, bulk-loaded) and in the per-day statistics, as the consumer leaves them.
  Timed: ``refresh`` as the scheduler runs it, after a first refresh (which reads the labels
  once for the CUSUM's watermark), median of ``--repeat``. With ``--baseline REV`` the refresh
  of revision ``REV`` runs on the same database too (from a git worktree, in a child process):
  the side-by-side comparison with the code before issue 21.
* ``fleet``: ``--sites`` sites with 100,000 labelled cases each (1,000 a day). The statistics
  hold every case (the ``total`` rows) and the latest 30 days; the raw tables hold what the
  refresh reads raw, a bounded number of rows: each site's first 1,000 and latest 1,000 cases.
  With ``--baseline REV`` the full refresh of revision ``REV`` runs on the same database too.

Statistics rows are written directly in the format ``performance.summaries.record`` writes
(one summary per day and key, plus ``total``), which is what a consumer run would leave
(``tests/integration/test_performance_summaries.py`` checks that the two agree): writing them
through the consumer would take hours at this size. With ``--baseline`` the baseline runs
on the schema of its own latest migration (a downgrade for the run), and the rows are written
in the storage format of the code before 2026-12-07 (format 1, zlib; ``_summary_bytes``),
which every revision reads: the baseline is timed, then every row is rewritten in the current
format (what the consumer's next batch does to a row it changes) before this checkout is
timed; ``fleet`` times this checkout on the format-1 rows too.

    .venv/bin/python -m benchmarks.bench_performance_refresh curve --baseline 45191bd
    .venv/bin/python -m benchmarks.bench_performance_refresh fleet --sites 100 --baseline f7768cb
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from numpy.typing import NDArray
from sqlalchemy import Engine, create_engine, text

from monitor.events import AGE_BANDS
from monitor.performance.delays import DelaySketch
from monitor.performance.sufficient import (
    PerformanceSummary,
    SummaryKey,
    SummaryLayout,
    stacked_from_bytes,
    stacked_to_bytes,
)
from monitor.service.db import alembic_config, make_engine, table_of, upgrade
from monitor.service.models import (
    CurrentLabelRow,
    DriftStreamRow,
    InferenceEventRow,
    PerformanceBucketRow,
    PredictionCountRow,
)
from monitor.service.performance.store import RefreshCache, refresh
from monitor.service.settings import PerformanceSettings

REPO = Path(__file__).resolve().parents[1]
START = datetime(2020, 1, 1, tzinfo=UTC)
MODEL, VERSION, FINDING = "cxr-lesion", "1.0.0", "lesion"
THRESHOLD = 0.5
FIELDS = {
    "PatientSex": ["F", "M"],
    "PatientAgeBand": list(AGE_BANDS),
    "Manufacturer": ["ACME", "Globex"],
    "Modality": ["CR", "DX"],
}
BASELINE_REFRESH = """
import sys, time, statistics
from datetime import UTC, datetime
from monitor.service.db import make_engine
from monitor.service.performance.store import refresh
from monitor.service.settings import PerformanceSettings
engine = make_engine(sys.argv[1])
settings = PerformanceSettings()
refresh(engine, settings, now=datetime(2031, 1, 1, tzinfo=UTC))
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    refresh(engine, settings, now=datetime(2031, 1, 1, tzinfo=UTC))
    times.append(time.perf_counter() - started)
print(statistics.median(times))
"""


class Cases:
    """One site's labelled cases, vectorised."""

    def __init__(self, site: str, n: int, per_day: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.site = site
        self.n = n
        self.labels = (rng.random(n) < 0.3).astype(np.int64)
        self.scores = 1.0 / (1.0 + np.exp(-rng.normal(1.5 * self.labels - 1.2, 1.0)))
        self.day = np.arange(n) // per_day
        seconds = (np.arange(n) % per_day) * (86_400 / per_day)
        self.at = [
            START + timedelta(days=int(d), seconds=float(s))
            for d, s in zip(self.day, seconds, strict=True)
        ]
        self.delay_h = rng.lognormal(np.log(48.0), 0.8, n)
        self.groups = {
            name: np.array(values)[rng.integers(0, len(values), n)]
            for name, values in FIELDS.items()
        }


def bucket_rows(cases: Cases, days: range | None, format_1: bool) -> list[dict[str, Any]]:
    """``performance_buckets`` rows: every case in ``total``, and the day rows of ``days``
    (all days when None)."""
    now = datetime.now(UTC)
    layout = SummaryLayout(threshold=THRESHOLD)
    selections: list[tuple[str, str, NDArray[np.bool_]]] = [("", "", np.ones(cases.n, bool))]
    for name, values in FIELDS.items():
        selections += [(name, value, cases.groups[name] == value) for value in values]
    last_day = int(cases.day[-1])
    wanted = range(last_day + 1) if days is None else days
    day_edges = np.searchsorted(cases.day, np.arange(last_day + 2))
    rows = []
    for field, value, members in selections:
        key = SummaryKey(
            MODEL, VERSION, FINDING, cases.site, field or None, value if field else None
        )
        per_day = []
        for day in wanted:
            lo, hi = day_edges[day], day_edges[day + 1]
            chosen = members[lo:hi]
            if not chosen.any():
                continue
            summary = PerformanceSummary(key, layout)
            summary.add(cases.labels[lo:hi][chosen], cases.scores[lo:hi][chosen])
            per_day.append(summary)
            rows.append(
                _row(
                    cases,
                    field,
                    value,
                    (START + timedelta(days=day)).date().isoformat(),
                    summary,
                    lo,
                    hi,
                    chosen,
                    now,
                    format_1,
                )
            )
        total = PerformanceSummary(key, layout)
        total.add(cases.labels[members], cases.scores[members])
        rows.append(_row(cases, field, value, "total", total, 0, cases.n, members, now, format_1))
    return rows


def _row(
    cases: Cases,
    field: str,
    value: str,
    bucket: str,
    summary: PerformanceSummary,
    lo: int,
    hi: int,
    chosen: NDArray[np.bool_],
    now: datetime,
    format_1: bool,
) -> dict[str, Any]:
    sketch = DelaySketch()
    if not field:
        sketch.add(cases.delay_h[lo:hi][chosen].tolist())
    index = np.flatnonzero(chosen) + lo
    return {
        "site_id": cases.site,
        "model_name": MODEL,
        "model_version": VERSION,
        "finding": FINDING,
        "subgroup_field": field,
        "subgroup_value": value,
        "bucket": bucket,
        "threshold": THRESHOLD,
        "summary": _format_1(summary) if format_1 else summary.to_bytes(),
        "delays": sketch.to_dict(),
        "n": summary.n,
        "first_at": cases.at[index[0]],
        "last_at": cases.at[index[-1]],
        "updated_at": now,
    }


def _format_1(summary: PerformanceSummary) -> bytes:
    """The storage bytes of the code before 2026-12-07 (``_summary_bytes``, format 1)."""
    arrays = (summary.histogram, summary.confusion, summary.calibration)
    return zlib.compress(np.concatenate([a.ravel() for a in arrays]).astype("<i8").tobytes(), 1)


def rewrite_in_current_format(engine: Engine) -> None:
    """Every statistics row's summary encoded again as ``summaries.record`` writes a row it
    changes, then the table compacted: the state a site reaches as its rows are updated."""
    layout = SummaryLayout(threshold=THRESHOLD)
    with engine.connect() as reader, engine.begin() as writer:
        rows = reader.execution_options(stream_results=True, yield_per=2000).execute(
            text("SELECT ctid::text AS at, summary FROM performance_buckets")
        )
        for chunk in rows.partitions():  # 2,000 rows decoded at a time: 66 MB
            blobs = stacked_from_bytes(layout, [row.summary for row in chunk])
            writer.execute(
                text(
                    "UPDATE performance_buckets SET summary = :blob WHERE ctid = CAST(:at AS tid)"
                ),
                [
                    {"blob": blob, "at": row.at}
                    for row, blob in zip(chunk, stacked_to_bytes(blobs, layout), strict=True)
                ],
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # FULL: the table and its indexes compact again, as the bulk load left them for the
        # baseline (a plain vacuum leaves every index twice its size after rewriting each row)
        connection.execute(text("VACUUM FULL ANALYZE performance_buckets"))


def raw_rows(cases: Cases, indices: range) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``inference_events`` and ``labels_current`` rows of the cases at ``indices``."""
    events, labels = [], []
    now = datetime.now(UTC)
    for i in indices:
        key = hashlib.sha256(f"{cases.site}/{i}".encode()).hexdigest()
        at = cases.at[i]
        metadata = {name: str(cases.groups[name][i]) for name in FIELDS}
        events.append(
            {
                "event_id": uuid.uuid5(uuid.NAMESPACE_URL, key),
                "site_id": cases.site,
                "model_name": MODEL,
                "model_version": VERSION,
                "occurred_at": at,
                "received_at": now,
                "study_key": key,
                "modality": metadata["Modality"],
                "metadata": metadata,
                "pixel_stats": None,
                "scores": {FINDING: float(cases.scores[i])},
                "threshold": THRESHOLD,
                "dicom_uri": None,
            }
        )
        labelled_at = at + timedelta(hours=float(cases.delay_h[i]))
        labels.append(
            {
                "site_id": cases.site,
                "model_name": MODEL,
                "study_key": key,
                "finding": FINDING,
                "label": int(cases.labels[i]),
                "label_event_id": uuid.uuid5(uuid.NAMESPACE_OID, key),
                "source": "radiologist",
                "labelled_at": labelled_at,
                "first_labelled_at": labelled_at,
                "revisions": 0,
                "expired_at": None,
                "matched": True,
            }
        )
    return events, labels


def load(
    engine: Engine, cases: Cases, days: range | None, raw: list[range], format_1: bool
) -> None:
    rows = bucket_rows(cases, days, format_1)
    events: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for indices in raw:
        more_events, more_labels = raw_rows(cases, indices)
        events += more_events
        labels += more_labels
    counts = [
        {
            "site_id": cases.site,
            "model_name": MODEL,
            "model_version": VERSION,
            "bucket": bucket,
            "n": n,
        }
        for bucket, n in _prediction_counts(cases).items()
    ]
    stream = {  # what the code before issue 21 found the streams by; read by key only
        "site_id": cases.site,
        "model_name": MODEL,
        "model_version": VERSION,
        "state": b"",
        "reference_state": b"",
        "state_version": 0,
        "reference": {},
        "events_seen": cases.n,
        "last_source": None,
        "updated_at": datetime.now(UTC),
    }
    with engine.begin() as connection:
        connection.execute(table_of(DriftStreamRow).insert(), [stream])
        for table, chunk_rows in (
            (PerformanceBucketRow, rows),
            (InferenceEventRow, events),
            (CurrentLabelRow, labels),
            (PredictionCountRow, counts),
        ):
            for start in range(0, len(chunk_rows), 5000):
                connection.execute(table_of(table).insert(), chunk_rows[start : start + 5000])


def analyze(engine: Engine) -> None:
    """Planner statistics after the bulk load, as autovacuum would gather them in service."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))


def _prediction_counts(cases: Cases) -> dict[str, int]:
    """Every case is a prediction; a fifth more predictions were never labelled."""
    days, per_day = np.unique(cases.day, return_counts=True)
    counts = {
        (START + timedelta(days=int(d))).date().isoformat(): int(k * 1.25)
        for d, k in zip(days, per_day, strict=True)
    }
    counts["total"] = sum(counts.values())
    return counts


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    name = f"radsentry_bench_refresh_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    scratch = url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield scratch
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def timed_refresh(engine: Engine, repeat: int) -> float:
    settings = PerformanceSettings()
    now = datetime(2031, 1, 1, tzinfo=UTC)
    refresh(engine, settings, now=now)  # the CUSUM's first read of every label
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        refresh(engine, settings, now=now)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def baseline_refresh(url: str, revision: str, repeat: int) -> float:
    """The median full refresh of ``revision`` (a git worktree, a child process) on the
    database at ``url``, whose schema is taken back to that revision's own latest migration
    for the run (and brought to head again after): the baseline runs as deployed."""
    checkout = Path("/tmp") / f"bench-refresh-baseline-{revision}"
    if not checkout.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), revision],
            check=True,
            capture_output=True,
        )
    versions = checkout / "monitor" / "service" / "migrations" / "versions"
    their_head = max(path.name.split("_")[0] for path in versions.glob("[0-9]*.py"))
    engine = make_engine(url)
    command.downgrade(alembic_config(engine), their_head)
    try:
        result = subprocess.run(
            [sys.executable, "-c", BASELINE_REFRESH, url, str(repeat)],
            cwd=checkout,
            env={**os.environ, "PYTHONPATH": str(checkout)},
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        upgrade(engine)
        engine.dispose()
    return float(result.stdout.strip().splitlines()[-1])


def curve(args: argparse.Namespace) -> None:
    print(
        "| labelled cases | statistics rows | refresh (this checkout) |"
        + (f" refresh ({args.baseline}) | ratio |" if args.baseline else "")
    )
    print("|---:|---:|---:|" + ("---:|---:|" if args.baseline else ""))
    for n in args.sizes:
        with scratch_database(args.url) as url:
            engine = make_engine(url)
            upgrade(engine)
            cases = Cases("site-01", n, per_day=100, seed=n)
            load(engine, cases, None, [range(n)], format_1=bool(args.baseline))
            analyze(engine)
            with engine.connect() as connection:
                rows = connection.scalar(text("SELECT count(*) FROM performance_buckets"))
            theirs = baseline_refresh(url, args.baseline, args.repeat) if args.baseline else 0.0
            if args.baseline:
                rewrite_in_current_format(engine)
            ours = timed_refresh(engine, args.repeat)
            line = f"| {n:,} | {rows:,} | {ours * 1000:,.0f} ms |"
            if args.baseline:
                line += f" {theirs * 1000:,.0f} ms | {theirs / ours:,.1f}x |"
            print(line, flush=True)
            engine.dispose()


def fleet(args: argparse.Namespace) -> None:
    per_site = 100_000
    with scratch_database(args.url) as url:
        engine = make_engine(url)
        upgrade(engine)
        started = time.perf_counter()
        for site in range(args.sites):
            cases = Cases(f"site-{site:03d}", per_site, per_day=1000, seed=site)
            last = int(cases.day[-1])
            load(
                engine,
                cases,
                range(last - 29, last + 1),
                [range(1000), range(per_site - 1000, per_site)],
                format_1=bool(args.baseline),
            )
        analyze(engine)
        print(
            f"loaded {args.sites} sites x {per_site:,} labelled cases "
            f"in {time.perf_counter() - started:,.0f} s"
        )
        theirs = old_rows = None
        if args.baseline:
            theirs = baseline_refresh(url, args.baseline, args.repeat)
            old_rows = timed_refresh(engine, args.repeat)
            rewrite_in_current_format(engine)
        every = timed_refresh(engine, args.repeat)
        changed = cached_refresh(engine, args.sites, args.changed, args.repeat)
        print(
            "| sites | labelled cases | every site recomputed | "
            f"{args.changed} sites with new labels (RefreshCache) |"
            + (
                f" every site recomputed, rows in format 1 | ({args.baseline}) | ratio |"
                if theirs
                else ""
            )
            + "\n|---:|---:|---:|---:|"
            + ("---:|---:|---:|" if theirs else "")
            + f"\n| {args.sites} | {args.sites * per_site:,} | {every:,.2f} s | {changed:,.2f} s |"
            + (f" {old_rows:,.2f} s | {theirs:,.2f} s | {theirs / every:,.1f}x |" if theirs else "")
        )
        engine.dispose()


def cached_refresh(engine: Engine, sites: int, changed: int, repeat: int) -> float:
    """The scheduled job's refresh (with its cache) after ``changed`` sites' statistics moved
    (their ``total`` rows touched, as a batch of new labels would)."""
    settings, cache = PerformanceSettings(), RefreshCache()
    now = datetime(2031, 1, 1, tzinfo=UTC)
    refresh(engine, settings, now=now, cache=cache)
    times = []
    for round_ in range(repeat):
        touched = [f"site-{(round_ * changed + i) % sites:03d}" for i in range(changed)]
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE performance_buckets SET updated_at = now() "
                    "WHERE bucket = 'total' AND site_id = ANY(:sites)"
                ),
                {"sites": touched},
            )
        started = time.perf_counter()
        refresh(engine, settings, now=now, cache=cache)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("curve", "fleet"))
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--changed", type=int, default=10, help="fleet: sites with new labels")
    parser.add_argument(
        "--baseline", help="a git revision whose full refresh runs side by side, same database"
    )
    args = parser.parse_args()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    curve(args) if args.what == "curve" else fleet(args)


if __name__ == "__main__":
    main()
