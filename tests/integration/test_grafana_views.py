"""The Grafana views (migrations 0011 and 0016) on PostgreSQL: documented columns, rows and
values that agree with the tables and the API, no identifiers, and a role that reads the views
and nothing else."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from psycopg import errors
from sqlalchemy import Connection, Engine, func, inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from monitor.service.db import alembic_config, make_engine, upgrade
from monitor.service.drift.api import AlertPublic
from monitor.service.grafana.views import GRAFANA_ROLE, GRAFANA_SCHEMA, GRAFANA_VIEWS
from monitor.service.models import (
    AlertRow,
    Base,
    CandidateRow,
    ChangeLogRow,
    DriftCheckRow,
    InferenceEventRow,
)
from monitor.service.performance.store import latest_snapshots
from tests.conftest import empty_tables
from tests.grafana_seed import CASES_SITE, DECISION_REASON, Seeded, seed_for_grafana

pytestmark = pytest.mark.integration

DOCS = Path(__file__).parents[2] / "docs" / "dashboards.md"
IDENTIFYING = re.compile(r"study|event_id|uri|sha256|hash|signature|reason|note|_by$|^actor$")
"""Column names that would carry an identifier, a payload digest, a signature or typed text."""
MACHINE_WRITTEN = {"decision_reason"}
"""Named like typed text, but only the drift engine writes it (a "sustained" ``AlertUpdate``
from ``DriftEngine``): allowed."""
HEX64 = re.compile(r"[0-9a-f]{64}")
WRITES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
T = TypeVar("T", bound=Base)


@pytest.fixture(scope="module")
def seeded(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, Seeded]]:
    engine = make_engine(pg_url)
    upgrade(engine)
    empty_tables(engine)
    try:
        yield engine, seed_for_grafana(engine, tmp_path_factory.mktemp("studies"))
    finally:
        empty_tables(engine)
        engine.dispose()


def rows(connection: Connection, view: str, where: str = "") -> list[dict[str, Any]]:
    query = f"SELECT * FROM {GRAFANA_SCHEMA}.{view} {where}"
    return [dict(row._mapping) for row in connection.execute(text(query))]


def stored(engine: Engine, model: type[T]) -> list[T]:
    with Session(engine) as session:
        return list(session.scalars(select(model)))


def test_every_view_has_the_listed_columns_and_rows(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    with engine.connect() as connection:
        assert set(inspect(connection).get_view_names(schema=GRAFANA_SCHEMA)) == set(GRAFANA_VIEWS)
        for view, columns in GRAFANA_VIEWS.items():
            result = connection.execute(text(f"SELECT * FROM {GRAFANA_SCHEMA}.{view}"))
            assert tuple(result.keys()) == columns, view
            assert result.first() is not None, f"{view} is empty"


def test_the_docs_list_each_view_with_its_columns() -> None:
    """docs/dashboards.md ("Data: PostgreSQL views") is the contract the dashboards follow."""
    documented = {
        match[1]: tuple(re.findall(r"`([a-z0-9_]+)`", match[2]))
        for match in re.finditer(r"^\| `grafana\.([a-z_]+)` \| ([^|]+) \|", DOCS.read_text(), re.M)
    }
    assert documented == GRAFANA_VIEWS


def test_daily_drift_counts_add_up_to_the_checks(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    with engine.connect() as connection:
        daily = rows(connection, "site_drift_daily")
    checks = stored(engine, DriftCheckRow)
    per_stream: Counter[tuple[str, str]] = Counter()
    drifting: Counter[tuple[str, str]] = Counter()
    for row in daily:
        per_stream[row["site_id"], row["detector"]] += row["checks"] + row["skipped_checks"]
        drifting[row["site_id"], row["detector"]] += row["drift_checks"]
    assert per_stream == Counter((c.site_id, c.detector) for c in checks)
    assert drifting == Counter((c.site_id, c.detector) for c in checks if c.is_drift)
    assert sum(drifting.values()) > 0  # the degraded site drifted
    assert len({row["day"] for row in daily}) > 1


def test_alert_features_are_listed_and_exploded(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    alerts = {a.alert_id: a for a in stored(engine, AlertRow)}
    with engine.connect() as connection:
        viewed = rows(connection, "alerts")
        exploded = rows(connection, "alert_features")
    assert {row["alert_id"] for row in viewed} == set(alerts)
    for row in viewed:
        assert row["features"] == ",".join(alerts[row["alert_id"]].features)
    assert Counter((r["alert_id"], r["feature"]) for r in exploded) == Counter(
        (a.alert_id, feature) for a in alerts.values() for feature in a.features
    )


def test_alert_severity_and_decision_agree_with_the_api(seeded: tuple[Engine, Seeded]) -> None:
    """``needs_decision`` is the API's rule, row for row, in both alert views; each seeded case
    (info, critical, asked, asked then acknowledged, asked then ended) shows as it should."""
    engine, _ = seeded
    api = {
        a.alert_id: AlertPublic.model_validate(a, from_attributes=True)
        for a in stored(engine, AlertRow)
    }
    with engine.connect() as connection:
        viewed = rows(connection, "alerts")
        exploded = rows(connection, "alert_features")
    for row in [*viewed, *exploded]:
        public = api[row["alert_id"]]
        assert (row["severity"], row["needs_decision"], row["decision_reason"]) == (
            public.severity,
            public.needs_decision,
            public.decision_reason,
        )
    cases = sorted(
        (r["severity"], r["status"], r["needs_decision"])
        for r in viewed
        if r["site_id"] == CASES_SITE
    )
    assert cases == [
        ("critical", "open", False),
        ("info", "open", False),
        ("info", "resolved", False),
        ("warning", "acknowledged", False),  # asked, then a person decided
        ("warning", "open", False),  # asked, then the drift ended
        ("warning", "open", True),
    ]
    assert {r["decision_reason"] for r in viewed} == {None, DECISION_REASON}
    assert {r["severity"] for r in viewed if r["site_id"] != CASES_SITE} <= {
        "info",
        "warning",
        "critical",
    }


def test_daily_distributions_count_every_event(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    with engine.connect() as connection:
        per_site = dict(
            connection.execute(
                select(InferenceEventRow.site_id, func.count()).group_by(InferenceEventRow.site_id)
            ).all()
        )
        pixel = rows(connection, "pixel_stats_daily", "WHERE stat = 'mean'")
        metadata = rows(connection, "metadata_daily")
    pixel_events: Counter[str] = Counter()
    for row in pixel:
        pixel_events[row["site_id"]] += row["events"]
        assert row["p05"] <= row["p50"] <= row["p95"]
    assert pixel_events == per_site
    sex: Counter[str] = Counter()
    for row in metadata:
        if row["field"] == "PatientSex":
            sex[row["site_id"]] += row["events"]
    assert sex == per_site
    assert {row["field"] for row in metadata} <= {
        "Manufacturer",
        "ManufacturerModelName",
        "Modality",
        "ViewPosition",
        "PhotometricInterpretation",
        "PatientSex",
        "PatientAgeBand",
        "BodyPartExamined",
        "ConvolutionKernel",
    }


def test_performance_views_read_the_latest_snapshots(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    latest = {(s.site_id, s.window): s for s in latest_snapshots(engine)}
    with engine.connect() as connection:
        windows = rows(connection, "performance_windows")
        bins = rows(connection, "reliability_bins")
        groups = rows(connection, "subgroup_performance")
    assert len(windows) == 2 * len(latest)  # two refreshes: the history is kept
    for (site_id, window), snapshot in latest.items():
        (row,) = (
            r
            for r in windows
            if (r["site_id"], r["window"], r["computed_at"])
            == (site_id, window, snapshot.computed_at)
        )
        auroc = snapshot.metrics["auroc"]
        assert (row["auroc"], row["auroc_lower"], row["auroc_upper"]) == (
            auroc["estimate"],
            auroc["lower"],
            auroc["upper"],
        )
        assert row["cases"] == snapshot.metrics["counts"]["n"]
        assert row["label_completeness"] == snapshot.labelled / snapshot.predicted
        own_bins = [b for b in bins if (b["site_id"], b["window"]) == (site_id, window)]
        assert {b["computed_at"] for b in own_bins} == {snapshot.computed_at}
        assert sum(b["cases"] for b in own_bins) == row["cases"]
        own_groups = [g for g in groups if (g["site_id"], g["window"]) == (site_id, window)]
        assert len(own_groups) == len(snapshot.subgroups)
    assert any(r["auroc_estimated"] is not None for r in windows if r["window"] == "rolling")


def test_candidate_views_count_approvals_and_criteria(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    proposed = {c.candidate_id: c for c in stored(engine, CandidateRow)}
    with engine.connect() as connection:
        candidates = {r["candidate_id"]: r for r in rows(connection, "candidates")}
        criteria = rows(connection, "gate_criteria")
        audit = rows(connection, "audit_summary")
        entries = connection.scalar(select(func.count()).select_from(ChangeLogRow))
    assert set(candidates) == set(proposed)
    assert {r["status"]: r["approvals"] for r in candidates.values()} == {
        "promoted": 2,
        "rejected": 0,
        "candidate": 0,
        "passed": 1,  # waiting for its second approval
    }
    assert Counter(r["candidate_id"] for r in criteria) == {
        candidate_id: len(row.report["criteria"])
        for candidate_id, row in proposed.items()
        if row.report is not None
    }
    assert sum(r["entries"] for r in audit) == entries


def test_no_view_shows_an_identifier(seeded: tuple[Engine, Seeded]) -> None:
    engine, seed = seeded
    with engine.connect() as connection:
        event_ids = {str(e) for e in connection.scalars(select(InferenceEventRow.event_id))}
        for view, columns in GRAFANA_VIEWS.items():
            flagged = [c for c in columns if IDENTIFYING.search(c)]
            assert not set(flagged) - MACHINE_WRITTEN, view
            for row in rows(connection, view):
                for value in row.values():
                    shown = str(value)
                    assert not set(HEX64.findall(shown)) & seed.study_keys, view
                    assert shown not in event_ids, view


def as_role(connection: Connection) -> None:
    """Take the role for the rest of the transaction (SET ROLE needs no LOGIN)."""
    connection.execute(text(f"SET LOCAL ROLE {GRAFANA_ROLE}"))


def refused(connection: Connection, statement: str) -> BaseException:
    """The error ``statement`` raises, in a savepoint so the transaction goes on."""
    with pytest.raises(DBAPIError) as raised, connection.begin_nested():
        connection.execute(text(statement))
    error = raised.value.orig
    assert error is not None
    return error


def test_the_role_reads_the_views_and_no_table(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    with engine.connect() as connection, connection.begin():
        readable = connection.execute(
            text(
                "SELECT n.nspname || '.' || c.relname FROM pg_class AS c "
                "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%' AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
                "AND has_table_privilege(:role, c.oid, 'SELECT')"
            ),
            {"role": GRAFANA_ROLE},
        ).scalars()
        assert set(readable) == {f"{GRAFANA_SCHEMA}.{view}" for view in GRAFANA_VIEWS}
        as_role(connection)
        for view in GRAFANA_VIEWS:
            assert connection.execute(text(f"SELECT * FROM {GRAFANA_SCHEMA}.{view}")).first()
        for table in Base.metadata.sorted_tables:
            error = refused(connection, f'SELECT * FROM "{table.name}" LIMIT 1')
            assert isinstance(error, errors.InsufficientPrivilege), table.name


def test_the_role_writes_nothing(seeded: tuple[Engine, Seeded]) -> None:
    engine, _ = seeded
    relations = [f"{GRAFANA_SCHEMA}.{view}" for view in GRAFANA_VIEWS] + [
        f'"{table.name}"' for table in Base.metadata.sorted_tables
    ]
    with engine.connect() as connection, connection.begin():
        for relation in relations:
            for privilege in WRITES:
                assert not connection.scalar(
                    text("SELECT has_table_privilege(:role, :relation, :privilege)"),
                    {"role": GRAFANA_ROLE, "relation": relation, "privilege": privilege},
                ), (relation, privilege)
        as_role(connection)
        for relation in relations:
            # Aggregating views are refused as not updatable before privileges are checked.
            refused(connection, f"DELETE FROM {relation}")
        for statement in (
            f"DELETE FROM {GRAFANA_SCHEMA}.audit_checkpoints",  # a simple, updatable view
            'TRUNCATE "change_log_checkpoints"',
            f"CREATE TABLE {GRAFANA_SCHEMA}.planted (x int)",
            "CREATE TABLE planted (x int)",
            f"CREATE VIEW {GRAFANA_SCHEMA}.planted AS SELECT 1",
        ):
            assert isinstance(refused(connection, statement), errors.InsufficientPrivilege)


def test_downgrading_0016_restores_the_alert_views_and_their_grant(
    seeded: tuple[Engine, Seeded],
) -> None:
    """0016 is undone by recreating 0011's alert views, which must be granted again."""
    engine, _ = seeded
    added = ("severity", "needs_decision", "decision_reason")
    command.downgrade(alembic_config(engine), "0015")
    try:
        with engine.connect() as connection, connection.begin():
            as_role(connection)
            for view in ("alerts", "alert_features"):
                result = connection.execute(text(f"SELECT * FROM {GRAFANA_SCHEMA}.{view}"))
                assert tuple(result.keys()) == GRAFANA_VIEWS[view][: -len(added)], view
                assert result.first() is not None, view
    finally:
        upgrade(engine)
    with engine.connect() as connection, connection.begin():
        as_role(connection)
        result = connection.execute(text(f"SELECT * FROM {GRAFANA_SCHEMA}.alerts"))
        assert tuple(result.keys())[-len(added) :] == added


def test_downgrade_drops_the_views_and_upgrade_keeps_the_existing_role(
    seeded: tuple[Engine, Seeded],
) -> None:
    """Roles are cluster-wide: upgrading again finds the role there and grants it again."""
    engine, _ = seeded
    command.downgrade(alembic_config(engine), "0010")
    with engine.connect() as connection:
        assert GRAFANA_SCHEMA not in inspect(connection).get_schema_names()
        assert connection.scalar(
            text("SELECT count(*) FROM pg_roles WHERE rolname = :role"), {"role": GRAFANA_ROLE}
        )
    upgrade(engine)
    with engine.connect() as connection, connection.begin():
        as_role(connection)
        assert connection.execute(text(f"SELECT * FROM {GRAFANA_SCHEMA}.candidates")).first()
