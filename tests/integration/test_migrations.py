"""Alembic migrations run on PostgreSQL and match the models exactly; other databases are
refused."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from typer.testing import CliRunner

from monitor.performance._summary_bytes import TAG
from monitor.service.cli import app
from monitor.service.db import UnsupportedDatabase, alembic_config, make_engine, upgrade
from monitor.service.models import JOB_STORE_TABLE, Base
from monitor.service.performance.windows import read_window, tracked
from tests.integration.test_performance_summaries import _store_history

lz4_migration = importlib.import_module(
    "monitor.service.migrations.versions.0020_performance_snapshots_lz4"
)

pytestmark = pytest.mark.integration


def _check(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)  # idempotent: safe at every start
    with engine.connect() as connection:
        # The Grafana views (schema grafana, migration 0011) are not models: compare_metadata
        # reflects the default schema's tables only, so they need no exclusion here.
        # APScheduler's job store is APScheduler's table, created beside ours (`radsentry
        # migrate`, or the scheduler at start), not by a revision: another test may have made it.
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, _parent: (
                    not (kind == "table" and name == JOB_STORE_TABLE)
                ),
            },
        )
        assert compare_metadata(context, Base.metadata) == []
    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version", JOB_STORE_TABLE}
    upgrade(engine)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_a_database_other_than_postgresql_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDatabase, match="unset RADSENTRY_DATABASE__URL"):
        make_engine(f"sqlite:///{tmp_path / 'radsentry.db'}")
    assert not (tmp_path / "radsentry.db").exists()


def test_migrations_on_postgresql(pg_engine: Engine) -> None:
    _check(pg_engine)


def test_snapshot_json_is_compressed_with_lz4_where_the_server_has_it(pg_engine: Engine) -> None:
    """Migration 0020: lz4 for the snapshots' JSON columns on a server built with it (the
    test server, Debian's PostgreSQL, is), the default again after a downgrade past it."""
    query = text(
        "SELECT attname, attcompression FROM pg_attribute "
        "WHERE attrelid = 'performance_snapshots'::regclass AND attname = ANY(:columns)"
    )
    columns = list(lz4_migration.COLUMNS)

    def methods() -> dict[str, str]:
        with pg_engine.connect() as connection:
            return dict(connection.execute(query, {"columns": columns}).all())

    upgrade(pg_engine)
    with pg_engine.connect() as connection:
        if not lz4_migration.lz4_available(connection):
            pytest.skip("this PostgreSQL was built without lz4: the revision changes nothing")
    assert methods() == dict.fromkeys(columns, "l")
    command.downgrade(alembic_config(pg_engine), "0019")
    assert methods() == dict.fromkeys(columns, "")
    upgrade(pg_engine)
    assert methods() == dict.fromkeys(columns, "l")


def test_a_downgrade_past_0020_writes_the_statistics_back_in_format_1(pg_engine: Engine) -> None:
    """The code before 0020 reads statistics in format 1 only: `radsentry downgrade --to 0019`
    (an unknown revision refused first, changing nothing) rewrites every format-2 row, and the
    windows read afterwards (by this code, which reads both) are the ones read before, bit for
    bit."""
    _store_history(pg_engine)

    def windows() -> list[tuple[object, ...]]:
        with pg_engine.connect() as connection:
            read = [
                read_window(connection, model, version, finding, site_id=site)
                for (site, model, version), finding in tracked(connection)
            ]
        return [
            (w.summary, w.subgroups, w.delays.to_dict(), w.first_at, w.last_at, w.threshold_source)
            for w in read
        ]

    def first_bytes() -> set[int]:
        with pg_engine.connect() as connection:
            return set(
                connection.execute(
                    text("SELECT DISTINCT get_byte(summary, 0) FROM performance_buckets")
                ).scalars()
            )

    before = windows()
    assert len(before) == 8 and all(summary is not None for summary, *_ in before)
    assert first_bytes() == {TAG}
    owner = {"RADSENTRY_DATABASE__MIGRATION_URL": pg_engine.url.render_as_string(False)}
    refused = CliRunner().invoke(app, ["downgrade", "--to", "0013x", "--yes"], env=owner)
    assert refused.exit_code == 2 and "0013x" in refused.output, refused.output
    assert first_bytes() == {TAG}
    ran = CliRunner().invoke(app, ["downgrade", "--to", "0019", "--yes"], env=owner)
    assert ran.exit_code == 0, ran.output
    assert "database at revision 0019 (was 0020)" in " ".join(ran.output.split())
    assert first_bytes() == {0x78}  # a zlib stream: format 1
    upgrade(pg_engine)
    assert windows() == before
