"""The site drift page against the Evidently page on the same data: time to build, and size.

One stream on a real PostgreSQL (``--url``, default the local server; a scratch database is
created and dropped), ingested through the service's own ``store_batch`` + ``DriftMonitor``
with the default engine configuration (a 1,000-event reference spanning 13 weeks, learned
thresholds, every detector): 1,000 reference events three hours apart, then ``--monitored``
events, the last ``--changed`` of them from a degraded portable reader (another manufacturer,
lower kVp and bit depth), so the stream has open alerts as a site manager would find it.

Timed, for a current sample of each ``--current`` size: the new page (``site_page.page_html``,
what ``GET /sites/{id}/drift-report`` answers) and the Evidently page (``site_report``, what
``GET /sites/{id}/report`` answers), each ``--repeat`` times after one warm-up call (which also
pays Evidently's import), median and worst; and once through the HTTP app for each route
(default window, a local-mode token). Sizes are the UTF-8 bytes of the page.

    .venv/bin/python -m benchmarks.bench_site_report [--out page.html]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.drift.config import EngineConfig
from monitor.events import InferenceEvent
from monitor.service.api import create_app
from monitor.service.auth import Role, issue_local_token
from monitor.service.db import make_engine, upgrade
from monitor.service.drift.site_page import page_html
from monitor.service.drift.site_report import site_report
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.settings import AuthSettings, Settings
from monitor.simulate.features import FeatureStreamConfig, feature_stream

SITE = "site-02"
BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--monitored", type=int, default=600)
    parser.add_argument("--changed", type=int, default=300)
    parser.add_argument("--current", type=int, nargs="+", default=[100, 250])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="Also write our page (largest sample) here.")
    args = parser.parse_args()
    config = EngineConfig()
    events = list(
        feature_stream(
            FeatureStreamConfig(
                site_id=SITE,
                n_events=1000 + args.monitored,
                seed=2,
                interval=timedelta(hours=3),
                change_at=1000 + args.monitored - args.changed,
                degraded_scanner=True,
            )
        )
    )
    with scratch_database(args.url) as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
            ingest(engine, config, events)
            print(
                f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
                f"{os.cpu_count()} cores, Python {platform.python_version()}"
            )
            print(
                f"stream: 1,000 reference events, {args.monitored} monitored "
                f"({args.changed} from the degraded reader)"
            )
            print(f"{'page':<28} {'current':>7} {'median s':>9} {'worst s':>8} {'bytes':>10}")
            for size in args.current:
                for name, build in pages(engine, config, size):
                    times, html = timed(build, args.repeat)
                    print(
                        f"{name:<28} {size:>7} {statistics.median(times):>9.3f} "
                        f"{max(times):>8.3f} {len(html.encode()):>10,}"
                    )
            served(engine, config)
            if args.out is not None:
                args.out.write_text(
                    page_html(engine, config, SITE, current_size=max(args.current)),
                    encoding="utf-8",
                )
        finally:
            engine.dispose()


def pages(engine: Engine, config: EngineConfig, size: int) -> list[tuple[str, Callable[[], str]]]:
    def ours() -> str:
        return page_html(engine, config, SITE, current_size=size)

    def evidently() -> str:
        return site_report(engine, config, SITE, current_size=size)[1]

    return [("site drift page (ours)", ours), ("Evidently page (appendix)", evidently)]


def timed(build: Callable[[], str], repeat: int) -> tuple[list[float], str]:
    html = build()  # warm-up: imports, first query plans
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        html = build()
        times.append(time.perf_counter() - start)
    return times, html


def served(engine: Engine, config: EngineConfig) -> None:
    """Each route once more through the HTTP app, as a browser would get it."""
    settings = Settings(
        drift=config, auth=AuthSettings(local_secret=SecretStr(secrets.token_hex(32)))
    )
    token = issue_local_token(settings, "bench", [Role.SITE_MANAGER], [SITE])
    app = create_app(settings, engine=engine)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        for path in (f"/sites/{SITE}/drift-report", f"/sites/{SITE}/report"):
            client.get(path)  # warm-up
            start = time.perf_counter()
            response = client.get(path)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            print(f"GET {path}: {elapsed:.3f} s, {len(response.content):,} bytes")


def ingest(engine: Engine, config: EngineConfig, events: Sequence[InferenceEvent]) -> None:
    monitor = DriftMonitor(config)
    for first in range(0, len(events), BATCH):
        chunk = events[first : first + BATCH]
        delivered = [Delivered(e, "bench", 0, first + i) for i, e in enumerate(chunk)]
        store_batch(engine, delivered, [], monitor.process)


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    name = f"radsentry_bench_site_report_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
