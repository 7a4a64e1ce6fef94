"""Prometheus metrics read from the database at scrape time, exposed by the API process.

Open alerts and PCCP candidates live in tables that several processes write (the consumer, the
scheduler's jobs, people through the API), so no single process could count them in memory. The
API's ``/metrics`` asks the database instead: one short read-only query per scrape, bounded by a
statement timeout. When it fails the error is logged and the scrape is still served, without
these families (their series go stale in Prometheus; ``/readyz`` reports the database).

* ``radsentry_alerts_open{site_id, model_name, detector, status, severity}``: alerts not
  resolved, by status ``open`` or ``acknowledged`` and severity ``info``, ``warning`` or
  ``critical`` (``monitor.drift.severity``; performance and ``retrain.failed`` alerts are
  ``warning``). Only warning and above notify, so the paging rule and the dashboards' red light
  leave ``info`` out. Three severities at most triple the series of a (site, model, detector,
  status), and only combinations that have alerts are exported;
* ``radsentry_candidates{model_name, status}``: candidates per lifecycle status;
* ``radsentry_promotions_total{model_name}``, ``radsentry_rollbacks_total{model_name}``:
  candidates ever promoted / rolled back (``promoted_at`` / ``rolled_back_at`` set).

prometheus_client's global registry refuses a second collector with the same names, and a
process may build several apps (tests do): one collector is registered once, and each app binds
its engine to it for the length of its lifespan (the newest bound engine answers).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import cast

import structlog
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Executable, func, literal, null, select, text, union_all

from monitor.service.models import AlertRow, CandidateRow

log = structlog.get_logger(__name__)

STATEMENT_TIMEOUT_MS = 5_000
"""A scrape never waits long on a slow database."""


class DatabaseCollector(Collector):
    """Collects the database-backed families from the most recently bound engine."""

    def __init__(self) -> None:
        self._engines: list[Engine] = []
        self._lock = threading.Lock()

    @contextmanager
    def bound(self, engine: Engine) -> Iterator[None]:
        """Answer scrapes from ``engine`` for the ``with`` block (an app's lifespan)."""
        with self._lock:
            self._engines.append(engine)
        try:
            yield
        finally:
            with self._lock:
                self._engines.remove(engine)

    def describe(self) -> Iterable[Metric]:
        """The families' names, without a query (the registry checks them at registration)."""
        return _families()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            engine = self._engines[-1] if self._engines else None
        if engine is None:
            return []
        try:
            rows = _query(engine)
        except Exception:
            # Boundary: a broken database must not break the scrape of every other metric.
            log.exception("database metrics unavailable for this scrape")
            return []
        return _fill(rows)


_Group = tuple[str, str | None, str, str | None, str, str | None, int, int, int]
"""kind ('alert' or 'candidate'), site_id, model_name, detector, status, severity (alerts
only), count, promoted, rolled back."""


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily
]:
    return (
        GaugeMetricFamily(
            "radsentry_alerts_open",
            "Alerts not resolved, by status (open or acknowledged) and severity (info, warning "
            "or critical; only warning and critical notify).",
            labels=["site_id", "model_name", "detector", "status", "severity"],
        ),
        GaugeMetricFamily(
            "radsentry_candidates",
            "PCCP candidates per lifecycle status.",
            labels=["model_name", "status"],
        ),
        CounterMetricFamily(
            "radsentry_promotions",
            "Candidates ever promoted to champion (from the candidates table).",
            labels=["model_name"],
        ),
        CounterMetricFamily(
            "radsentry_rollbacks",
            "Promotions ever rolled back (from the candidates table).",
            labels=["model_name"],
        ),
    )


def _query(engine: Engine) -> list[_Group]:
    """Both tables in one statement: a row per alert group, then a row per candidate group."""
    alerts = (
        select(
            literal("alert").label("kind"),
            AlertRow.site_id,
            AlertRow.model_name,
            AlertRow.detector,
            AlertRow.status,
            AlertRow.severity,
            func.count().label("n"),
            literal(0).label("promoted"),
            literal(0).label("rolled_back"),
        )
        .where(AlertRow.status != "resolved")
        .group_by(
            AlertRow.site_id,
            AlertRow.model_name,
            AlertRow.detector,
            AlertRow.status,
            AlertRow.severity,
        )
    )
    candidates = select(
        literal("candidate"),
        null(),
        CandidateRow.model_name,
        null(),
        CandidateRow.status,
        null(),
        func.count(),
        func.count(CandidateRow.promoted_at),
        func.count(CandidateRow.rolled_back_at),
    ).group_by(CandidateRow.model_name, CandidateRow.status)
    statement: Executable = union_all(alerts, candidates)
    with engine.connect() as connection:
        connection.execute(text("SET TRANSACTION READ ONLY"))
        connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        rows = [cast(_Group, tuple(row)) for row in connection.execute(statement)]
        connection.rollback()  # read only: nothing to keep
    return rows


def _fill(rows: Iterable[_Group]) -> list[Metric]:
    alerts_open, candidates, promotions, rollbacks = _families()
    promoted: dict[str, int] = {}
    rolled_back: dict[str, int] = {}
    for kind, site_id, model_name, detector, status, severity, n, n_promoted, n_rolled_back in rows:
        if kind == "alert":
            labels = [site_id or "", model_name, detector or "", status, severity or ""]
            alerts_open.add_metric(labels, n)
            continue
        candidates.add_metric([model_name, status], n)
        promoted[model_name] = promoted.get(model_name, 0) + n_promoted
        rolled_back[model_name] = rolled_back.get(model_name, 0) + n_rolled_back
    for model_name, count in sorted(promoted.items()):
        promotions.add_metric([model_name], count)
    for model_name, count in sorted(rolled_back.items()):
        rollbacks.add_metric([model_name], count)
    return [alerts_open, candidates, promotions, rollbacks]


DATABASE_COLLECTOR = DatabaseCollector()
_registered = False
_register_lock = threading.Lock()


def database_collector() -> DatabaseCollector:
    """The process's collector, registered with the global registry on first use."""
    global _registered
    with _register_lock:
        if not _registered:
            REGISTRY.register(DATABASE_COLLECTOR)
            _registered = True
    return DATABASE_COLLECTOR
