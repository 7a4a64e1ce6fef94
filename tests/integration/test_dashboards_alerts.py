"""The dashboards' alert tables on PostgreSQL, as Grafana's read-only role, on alerts of every
severity and decision state written by the service's own alert functions
(``tests.grafana_seed.seed_alert_cases``): the site overview's "Alerts not resolved" and the
fleet's "Open alerts by severity". Like tests/integration/test_dashboards_live.py, each query is
taken from the built dashboard and rendered as Grafana would send it; here the rows are known,
so the columns, their values and the order are checked, not only that rows come back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dashboards import fleet, site_overview
from dashboards.build import build_all
from dashboards.queries import Substitution, panel_queries, render
from monitor.service.db import make_engine, upgrade
from monitor.service.grafana.views import GRAFANA_ROLE
from tests.conftest import empty_tables
from tests.grafana_seed import CASES_SITE, DECISION_REASON, MODEL, seed_alert_cases

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
VALUES = Substitution(
    {"site": [CASES_SITE], "model": [MODEL]}, NOW - timedelta(days=400), NOW + timedelta(days=1)
)


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    upgrade(engine)
    empty_tables(engine)
    try:
        seed_alert_cases(engine)
        yield engine
    finally:
        empty_tables(engine)
        engine.dispose()


def panel_rows(engine: Engine, uid: str, title: str) -> list[Mapping[str, Any]]:
    """The rows of the panel's SQL query, run as the Grafana role."""
    (query,) = [q for q in panel_queries(build_all()[uid]) if q.panel_title == title]
    with engine.begin() as connection:
        connection.execute(text(f"SET LOCAL ROLE {GRAFANA_ROLE}"))
        return [row._mapping for row in connection.exec_driver_sql(render(query, VALUES))]


def test_alerts_not_resolved_lists_open_critical_first_with_the_decisions(engine: Engine) -> None:
    rows = panel_rows(engine, site_overview.UID, "Alerts not resolved")
    assert {"severity", "needs_decision", "decision_reason"} <= set(rows[0])
    assert [(r["status"], r["severity"], r["needs_decision"]) for r in rows] == [
        ("open", "critical", False),
        ("open", "warning", True),  # asked for a decision, still drifting
        ("open", "warning", False),  # asked, then the drift ended
        ("open", "info", False),  # shown, though it notifies nobody
        ("acknowledged", "warning", False),  # asked, then a person decided
    ]  # the resolved info alert is not listed
    # The question shows only while it waits for an answer.
    assert [r["decision_reason"] for r in rows] == [None, DECISION_REASON, None, None, None]


def test_fleet_counts_open_alerts_by_severity_and_decisions(engine: Engine) -> None:
    (row,) = panel_rows(engine, fleet.UID, "Open alerts by severity")
    assert dict(row) == {
        "site": CASES_SITE,
        "model": MODEL,
        "highest": "critical",
        "warning+": 3,  # critical, the one waiting for a decision, the one whose drift ended
        "info": 1,
        "need a decision": 1,
    }
