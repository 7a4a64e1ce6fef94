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

from monitor.service.db import UnsupportedDatabase, alembic_config, make_engine, upgrade
from monitor.service.models import JOB_STORE_TABLE, Base

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
