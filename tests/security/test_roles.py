"""Least-privilege database roles on a real PostgreSQL: `radsentry migrate`, connected as the
schema's owner, grants the runtime and the consumer role; then, connected AS each role, an
insider holding its credentials tries to lift the change log's protections (each refused), and
the components do their work. Roles are cluster-wide: this module creates its own, with a
random suffix, and drops them at the end."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from monitor.drift.alerts import Alert, StreamKey
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.events import LabelEvent
from monitor.service.audit.keys import keyring
from monitor.service.audit.store import Entry, entries, record, verify
from monitor.service.cli import app
from monitor.service.db import SchemaNotCurrent, alembic_config, engine_scope, make_engine
from monitor.service.drift.alerts import raise_alert, transition
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.store import latest_inference_times
from monitor.service.kafka import make_producer
from monitor.service.models import (
    AlertRow,
    Base,
    ChangeLogCheckpointRow,
    DeadLetter,
    DriftCheckRow,
    LabelChangeRow,
)
from monitor.service.roles import (
    APPEND_ONLY,
    CONSUMER_PRIVILEGES,
    consumer_privileges,
    grant_roles,
    our_tables,
    runtime_privileges,
)
from monitor.service.scheduler import JOBS_TABLE, JobSpec, submit_job
from monitor.service.settings import KafkaSettings
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.conftest import SESSION_AUDIT_KEY
from tests.factories import label_event
from tests.integration.helpers import ingest_until, send
from tests.security.test_insider_change_log import forge
from tests.servers import fresh_database, pg_admin_url

pytestmark = pytest.mark.integration

SUFFIX = uuid.uuid4().hex[:8]
GRAFANA_ROLE = "radsentry_grafana"  # migration 0011 creates it when it can; a DBA otherwise


def _admin() -> Engine:
    return create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)


def as_role(database_url: str, role: str) -> str:
    """``database_url`` logging in as ``role`` (trust authentication: no password)."""
    url = make_url(database_url).set(username=role, password=None)
    return url.render_as_string(hide_password=False)


@contextmanager
def cluster_roles(*names: str, attributes: str = "") -> Iterator[None]:
    """LOGIN roles that exist for the block (a DBA's ``CREATE ROLE``), dropped after it."""
    admin = _admin()
    with admin.connect() as connection:
        connection.execute(
            text(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                f"'{GRAFANA_ROLE}') THEN CREATE ROLE {GRAFANA_ROLE} NOLOGIN; END IF; END $$"
            )
        )
        for name in names:
            connection.execute(text(f"CREATE ROLE {name} LOGIN {attributes}"))
    try:
        yield
    finally:
        with admin.connect() as connection:
            for name in names:
                connection.execute(text(f"DROP OWNED BY {name}"))
                connection.execute(text(f"DROP ROLE {name}"))
        admin.dispose()


def sql(url: str, *statements: str) -> None:
    """Run ``statements`` on ``url`` in one transaction."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    engine.dispose()


@dataclass(frozen=True)
class Ran:
    exit_code: int
    output: str
    """What the command printed, its lines (wrapped at the terminal's width) joined again."""


def migrate(migration_url: str | None, url: str | None = None, **roles: str) -> Ran:
    """`radsentry migrate` with only these database settings."""
    return run_command(
        ["migrate"],
        RADSENTRY_DATABASE__MIGRATION_URL=migration_url,
        RADSENTRY_DATABASE__URL=url,
        RADSENTRY_DATABASE__RUNTIME_ROLE=roles.get("runtime"),
        RADSENTRY_DATABASE__CONSUMER_ROLE=roles.get("consumer"),
    )


def run_command(args: list[str], **env: str | None) -> Ran:
    result = CliRunner().invoke(app, args, env=env)
    return Ran(result.exit_code, " ".join(result.output.split()))


@dataclass(frozen=True)
class Deployment:
    """A database migrated by its owner, with the two service roles granted."""

    owner: str
    runtime: str
    consumer: str
    urls: dict[str, str]
    migrated: Ran


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    owner, runtime, consumer = (f"rs_{kind}_{SUFFIX}" for kind in ("owner", "app", "consumer"))
    with (
        cluster_roles(owner, runtime, consumer),
        fresh_database(pg_admin_url(), "radsentry_roles") as url,
    ):
        # The DBA's part (docs/deploy.md): the owner owns the database.
        sql(pg_admin_url(), f'ALTER DATABASE "{make_url(url).database}" OWNER TO {owner}')
        urls = {role: as_role(url, role) for role in (owner, runtime, consumer)}
        migrated = migrate(urls[owner], runtime=runtime, consumer=consumer)
        assert migrated.exit_code == 0, migrated.output
        yield Deployment(owner, runtime, consumer, urls, migrated)


@pytest.fixture
def runtime_engine(deployment: Deployment) -> Iterator[Engine]:
    engine = make_engine(deployment.urls[deployment.runtime])
    yield engine
    engine.dispose()


@pytest.fixture
def consumer_engine(deployment: Deployment) -> Iterator[Engine]:
    engine = make_engine(deployment.urls[deployment.consumer])
    yield engine
    engine.dispose()


def refused(engine: Engine, statement: str) -> psycopg.Error:
    """The error ``statement`` fails with, run alone in a transaction as ``engine``'s role."""
    with pytest.raises(DBAPIError) as failure, engine.begin() as connection:
        connection.execute(text(statement))
    assert isinstance(failure.value.orig, psycopg.Error)
    return failure.value.orig


# --- the plan ---------------------------------------------------------------------------------


def test_the_consumer_gets_a_part_of_what_the_runtime_role_gets() -> None:
    runtime = runtime_privileges(our_tables())
    consumer = consumer_privileges(our_tables())
    assert set(CONSUMER_PRIVILEGES) <= set(Base.metadata.tables)
    assert all(consumer[table] <= runtime[table] for table in consumer)
    for never in ("candidates", "candidate_signatures", "retrain_requests", JOBS_TABLE):
        assert never not in consumer
    assert not set(consumer) & {*APPEND_ONLY, "alembic_version"}
    assert all(runtime[table] == {"SELECT", "INSERT"} for table in APPEND_ONLY)
    assert runtime["alembic_version"] == {"SELECT"}
    assert not any({"TRUNCATE", "REFERENCES", "TRIGGER"} & p for p in runtime.values())
    # No code of ours deletes a row; APScheduler deletes jobs from its store.
    assert [table for table, p in runtime.items() if "DELETE" in p] == [JOBS_TABLE]


def test_migrate_says_what_each_role_was_granted(deployment: Deployment) -> None:
    output = deployment.migrated.output
    assert "database at revision head" in output
    assert f"runtime role {deployment.runtime}: SELECT, INSERT, UPDATE, DELETE on apsc" in output
    assert "SELECT, INSERT, UPDATE on" in output
    assert "SELECT, INSERT on change_log, change_log_checkpoints" in output
    assert f"consumer role {deployment.consumer}: SELECT, INSERT, UPDATE on alerts" in output


# --- the runtime role as an attacker ----------------------------------------------------------

RUNTIME_REFUSED = [
    "ALTER TABLE change_log DISABLE TRIGGER ALL",
    "ALTER TABLE change_log DISABLE TRIGGER change_log_no_update_delete",
    "ALTER TABLE change_log_checkpoints DISABLE TRIGGER ALL",
    "ALTER TABLE change_log_checkpoints DISABLE TRIGGER change_log_checkpoints_no_truncate",
    "UPDATE change_log SET actor = 'someone else'",
    "DELETE FROM change_log",
    "TRUNCATE change_log",
    "UPDATE change_log_checkpoints SET signature = signature",
    "DELETE FROM change_log_checkpoints",
    "TRUNCATE change_log_checkpoints",
    "DROP TRIGGER change_log_no_truncate ON change_log",
    "DROP TRIGGER change_log_checkpoints_no_update_delete ON change_log_checkpoints",
    "DROP TABLE change_log_checkpoints",
    "ALTER TABLE change_log RENAME TO change_log_old",
    "CREATE OR REPLACE FUNCTION radsentry_change_log_append_only() RETURNS trigger "
    "AS $$ BEGIN RETURN NULL; END $$ LANGUAGE plpgsql",
    "SET session_replication_role = replica",
    "CREATE TABLE squatter (id integer)",
    "UPDATE alembic_version SET version_num = '0001'",
    "TRUNCATE alerts",
    "DELETE FROM inference_events",
    "DELETE FROM candidates",
    "DELETE FROM candidate_signatures",
    "CREATE TRIGGER quiet BEFORE INSERT ON alerts "
    "FOR EACH ROW EXECUTE FUNCTION radsentry_change_log_append_only()",
    "SELECT * FROM grafana.candidates",
]


@pytest.mark.parametrize("statement", RUNTIME_REFUSED)
def test_the_runtime_role_cannot_lift_the_change_logs_protection(
    runtime_engine: Engine, statement: str
) -> None:
    assert isinstance(refused(runtime_engine, statement), psycopg.errors.InsufficientPrivilege)


def test_the_runtime_role_cannot_become_the_owner(
    deployment: Deployment, runtime_engine: Engine
) -> None:
    for statement in (
        f"ALTER TABLE change_log OWNER TO {deployment.runtime}",
        f"SET ROLE {deployment.owner}",
        f"GRANT {deployment.owner} TO {deployment.runtime}",
        f'ALTER DATABASE "{runtime_engine.url.database}" OWNER TO {deployment.runtime}',
    ):
        assert isinstance(refused(runtime_engine, statement), psycopg.errors.InsufficientPrivilege)


def test_the_runtime_role_cannot_raise_the_unsigned_history(runtime_engine: Engine) -> None:
    if "change_log_unsigned" not in Base.metadata.tables:
        pytest.skip("no change_log_unsigned table in this schema")
    for statement in (
        "UPDATE change_log_unsigned SET through_seq = through_seq + 1000",
        "DELETE FROM change_log_unsigned",
        "INSERT INTO change_log_unsigned VALUES (1000, now())",
    ):
        assert isinstance(refused(runtime_engine, statement), psycopg.errors.InsufficientPrivilege)


def test_an_entry_the_runtime_role_appends_without_the_audit_key_is_named(
    runtime_engine: Engine,
) -> None:
    """What the runtime role may do to the change log, append, it can do with a correct chain
    hash (public arithmetic); without the audit key the entry is named by verification."""
    record(runtime_engine, Entry(actor="mlops", action="test", subject="s/0", details={}))
    seq = forge(runtime_engine)
    found = verify(runtime_engine, keyring(SESSION_AUDIT_KEY.public_key()))
    assert found.first_bad_seq == seq and found.problem is not None
    assert "unsigned" in found.problem


# --- the runtime role at work -----------------------------------------------------------------


def test_the_runtime_role_does_what_the_api_and_the_scheduler_do(
    deployment: Deployment, runtime_engine: Engine
) -> None:
    with engine_scope(deployment.urls[deployment.runtime]) as engine:  # at head: reads only
        written = record(engine, Entry(actor="mlops", action="test", subject="s/1", details={}))
    assert [row.seq for row in entries(runtime_engine)][-1] == written.seq
    with runtime_engine.begin() as connection:
        connection.execute(
            ChangeLogCheckpointRow.__table__.insert().values(
                seq=written.seq,
                head_hash=written.entry_hash,
                signed_at=datetime.now(UTC),
                key_id="0" * 64,
                signature="0" * 128,
            )
        )
    alert = _alert()
    raise_alert(runtime_engine, alert)
    assert transition(runtime_engine, alert.alert_id, "acknowledge", "mlops", None).acknowledged_by
    # The scheduler's job store, created by migrate: add, replace (update) and remove jobs.
    spec = JobSpec(
        id="roles-test",
        func_ref="math:floor",
        trigger="date",
        trigger_args={"run_date": "2099-01-01T00:00:00+00:00"},
        args=(1.5,),
    )
    submit_job(runtime_engine, spec)
    submit_job(runtime_engine, dataclasses.replace(spec, args=(2.5,)))
    with runtime_engine.begin() as connection:
        connection.execute(text(f"DELETE FROM {JOBS_TABLE} WHERE id = 'roles-test'"))


def _alert() -> Alert:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Alert(
        alert_id=uuid.uuid4(),
        key=StreamKey("site-01", "cxr-lesion", "1.0.0"),
        detector="job",
        features=(),
        occurred_at=at,
        since=at,
        window_start=at,
        window_end=at,
        statistic=0.0,
        p_value=None,
        effect_size=0.0,
        effect_size_name="none",
        explanation="a test",
        config_fingerprint="0" * 64,
        reference_id=uuid.uuid4(),
    )


# --- the consumer role ----------------------------------------------------------------------

CONSUMER_REFUSED = [
    "SELECT count(*) FROM candidates",
    "INSERT INTO candidates (candidate_id) VALUES (gen_random_uuid())",
    "SELECT count(*) FROM candidate_signatures",
    "UPDATE candidate_signatures SET signer = 'mallory'",
    "SELECT count(*) FROM change_log",
    "INSERT INTO change_log (seq) VALUES (1000000)",
    "SELECT count(*) FROM change_log_checkpoints",
    "INSERT INTO change_log_checkpoints (seq) VALUES (1000000)",
    "SELECT count(*) FROM retrain_requests",
    f"SELECT count(*) FROM {JOBS_TABLE}",
    "SELECT count(*) FROM performance_snapshots",
    "DELETE FROM inference_events",
    "UPDATE processed_events SET topic = 'x'",
    "TRUNCATE drift_checks",
    "ALTER TABLE alerts DISABLE TRIGGER ALL",
    "CREATE TABLE squatter (id integer)",
]


@pytest.mark.parametrize("statement", CONSUMER_REFUSED)
def test_the_consumer_role_cannot_touch_candidates_the_change_log_or_retraining(
    consumer_engine: Engine, statement: str
) -> None:
    assert isinstance(refused(consumer_engine, statement), psycopg.errors.InsufficientPrivilege)


DRIFT = EngineConfig(
    reference_size=100,
    window=WindowConfig(size=100, min_size=50),
    detectors=DetectorSet(mmd=None, online=None),
)


def test_the_consumer_role_runs_the_ingestion_path(
    consumer_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    """The real consumer loop, connected as the consumer role: events, labels and their
    corrections, a dead letter, drift checks, an alert opened, continued, ended and published."""
    site = "site-07"
    stream = list(
        feature_stream(
            FeatureStreamConfig(
                site_id=site,
                n_events=900,
                seed=3,
                change_at=200,
                change_until=500,
                pixel_shift_sd=1.0,
                degraded_scanner=True,
            )
        )
    )
    labels = [label_event(n, site_id=site) for n in range(5)]
    corrections = [_corrected(label) for label in labels]
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, [*stream, *labels])
    send(producer, kafka_settings, corrections)
    producer.send(kafka_settings.inference_topic, key=b"x", value=b"not json")
    producer.flush()
    producer.close()

    expected = len(stream) + len(labels) + len(corrections)
    stats = ingest_until(
        consumer_engine,
        kafka_settings,
        lambda s: s.stored >= expected and s.dead_lettered >= 1 and s.alerts_published >= 1,
        drift=DriftMonitor(DRIFT),
        timeout=120,
    )
    assert stats.failures == 0
    with consumer_engine.connect() as connection:
        alerts = connection.execute(select(AlertRow).where(AlertRow.site_id == site)).all()
        checks = connection.scalar(select(func.count()).select_from(DriftCheckRow))
        dead = connection.scalar(select(func.count()).select_from(DeadLetter))
        corrected = connection.scalar(select(func.count()).select_from(LabelChangeRow))
    assert alerts and all(a.published_at is not None for a in alerts)
    assert any(not a.drift_active for a in alerts) and checks and dead == 1
    assert corrected == len(corrections)
    assert site in latest_inference_times(consumer_engine, datetime(2000, 1, 1, tzinfo=UTC))


def _corrected(label: LabelEvent) -> LabelEvent:
    return label.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "labels": {finding: 1 - value for finding, value in label.labels.items()},
            "occurred_at": label.occurred_at + timedelta(hours=1),
        }
    )


# --- migrate: exact, idempotent, refusing what it cannot repair ---------------------------------


def _acls(url: str) -> list[tuple[str, str | None]]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.oid::regclass::text, c.relacl::text FROM pg_class AS c "
                "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('public', 'grafana') AND c.relkind IN ('r', 'v', 'S') "
                "UNION ALL SELECT nspname, nspacl::text FROM pg_namespace "
                # This deployment's database only: other tests (another xdist worker) create
                # and drop databases on the same server while this one reads.
                "UNION ALL SELECT datname, datacl::text FROM pg_database "
                "WHERE datname = current_database() ORDER BY 1"
            )
        ).all()
    engine.dispose()
    return [(name, acl) for name, acl in rows]


def test_granting_again_changes_nothing(deployment: Deployment) -> None:
    before = _acls(deployment.urls[deployment.owner])
    engine = make_engine(deployment.urls[deployment.owner])
    report = grant_roles(engine, deployment.runtime, deployment.consumer)
    engine.dispose()
    assert report.taken_over == []
    assert _acls(deployment.urls[deployment.owner]) == before
    again = migrate(
        deployment.urls[deployment.owner], runtime=deployment.runtime, consumer=deployment.consumer
    )
    assert again.exit_code == 0, again.output
    assert _acls(deployment.urls[deployment.owner]) == before


def test_migrate_refuses_a_role_that_does_not_exist(deployment: Deployment) -> None:
    missing = f"rs_missing_{SUFFIX}"
    result = migrate(deployment.urls[deployment.owner], runtime=missing)
    assert result.exit_code == 2
    assert f"the runtime role {missing} does not exist" in result.output
    assert f"CREATE ROLE {missing} LOGIN PASSWORD" in result.output


def test_migrate_refuses_the_owner_as_runtime_role(deployment: Deployment) -> None:
    result = migrate(deployment.urls[deployment.owner], runtime=deployment.owner)
    assert result.exit_code == 2
    assert "is the role this migration connects as, the owner" in result.output
    # Without a migration URL the services' own URL migrates: the same mistake, the same refusal.
    result = migrate(None, url=deployment.urls[deployment.owner], runtime=deployment.owner)
    assert result.exit_code == 2


def test_migrate_refuses_a_runtime_role_that_can_act_as_the_owner(deployment: Deployment) -> None:
    sql(pg_admin_url(), f"GRANT {deployment.owner} TO {deployment.runtime}")
    try:
        result = migrate(deployment.urls[deployment.owner], runtime=deployment.runtime)
    finally:
        sql(pg_admin_url(), f"REVOKE {deployment.owner} FROM {deployment.runtime}")
    assert result.exit_code == 2
    assert f'REVOKE "{deployment.owner}" FROM "{deployment.runtime}"' in result.output


def test_an_owner_that_may_manage_roles_repairs_the_membership(deployment: Deployment) -> None:
    """An owner with CREATEROLE (given by some DBAs so that migration 0011 can create the Grafana
    role) may revoke what lets the runtime role act as the owner, and migrate does: up to
    PostgreSQL 15. From 16 on CREATEROLE no longer lets a role revoke membership in itself (that
    needs ADMIN OPTION on it, which a role never holds on itself), so migrate stops and prints
    the DBA's REVOKE, as it does for an owner without CREATEROLE."""
    owner, runtime = deployment.owner, deployment.runtime
    sql(pg_admin_url(), f"ALTER ROLE {owner} CREATEROLE", f"GRANT {owner} TO {runtime}")
    try:
        result = migrate(deployment.urls[owner], runtime=runtime, consumer=deployment.consumer)
        admin = create_engine(pg_admin_url(), poolclass=NullPool)
        with admin.connect() as connection:
            member = connection.scalar(
                text(f"SELECT pg_has_role('{runtime}', '{owner}', 'MEMBER')")
            )
            version = int(connection.scalar(text("SHOW server_version_num")) or 0)
        admin.dispose()
    finally:
        sql(pg_admin_url(), f"ALTER ROLE {owner} NOCREATEROLE")
        sql(pg_admin_url(), f"REVOKE {owner} FROM {runtime}")  # whatever migrate did
    if version < 160000:
        assert result.exit_code == 0, result.output
        assert member is False
    else:
        assert result.exit_code == 2, result.output
        assert f'REVOKE "{owner}" FROM "{runtime}"' in result.output
        assert member is True


# --- an upgrade from one role, and a schema behind the release -------------------------------


def _owners(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        owners = connection.scalars(
            text(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                "WHERE relname = ANY(CAST(:names AS text[])) AND relkind = 'r' "
                "UNION SELECT pg_get_userbyid(datdba) FROM pg_database "
                "WHERE datname = current_database()"
            ),
            {"names": our_tables()},
        )
        return set(owners)


@pytest.fixture
def one_role_deployment() -> Iterator[tuple[str, str, str]]:
    """A database as deployments before least-privilege roles had it: one role (the "old
    app" role) owns the database and every table. Yields its URL and the old and new roles."""
    old, new = f"rs_oldapp_{SUFFIX}", f"rs_newowner_{SUFFIX}"
    with (
        cluster_roles(old),
        cluster_roles(new, attributes="CREATEDB"),
        fresh_database(pg_admin_url(), "radsentry_roles_upgrade") as url,
    ):
        sql(pg_admin_url(), f'ALTER DATABASE "{make_url(url).database}" OWNER TO {old}')
        legacy = migrate(None, url=as_role(url, old))
        assert legacy.exit_code == 0, legacy.output
        assert "no RADSENTRY_DATABASE__RUNTIME_ROLE" in legacy.output
        assert _owners(url) == {old}
        yield url, old, new


def test_an_upgrade_moves_ownership_to_the_new_owner(
    one_role_deployment: tuple[str, str, str],
) -> None:
    url, old, new = one_role_deployment
    sql(pg_admin_url(), f"GRANT {old} TO {new}")  # the DBA lets the new owner take over
    result = migrate(as_role(url, new), runtime=old)
    assert result.exit_code == 0, result.output
    assert f"ownership taken over by {new}: table change_log (was {old})" in result.output
    assert "database" in result.output and "function radsentry_change_log_append_only()" in (
        result.output
    )
    assert _owners(url) == {new}
    # The old role, now the runtime role, has lost what let it lift the triggers.
    engine = make_engine(as_role(url, old))
    for statement in (
        "ALTER TABLE change_log DISABLE TRIGGER ALL",
        "DROP TABLE change_log_checkpoints",
        "TRUNCATE change_log",
    ):
        assert isinstance(refused(engine, statement), psycopg.errors.InsufficientPrivilege)
    with engine_scope(as_role(url, old)) as runtime:  # and still serves, at head
        record(runtime, Entry(actor="mlops", action="test", subject="s/1", details={}))
    engine.dispose()


def test_an_upgrade_the_owner_cannot_take_over_names_the_dbas_statements(
    one_role_deployment: tuple[str, str, str],
) -> None:
    url, old, new = one_role_deployment
    result = migrate(as_role(url, new), runtime=old)
    assert result.exit_code == 2
    assert f'REASSIGN OWNED BY "{old}" TO "{new}";' in result.output
    assert f'GRANT "{old}" TO "{new}";' in result.output
    assert _owners(url) == {old}  # nothing changed


def test_a_runtime_role_behind_the_schema_is_told_to_migrate(deployment: Deployment) -> None:
    with fresh_database(pg_admin_url(), "radsentry_roles_behind") as url:
        database = make_url(url).database
        sql(pg_admin_url(), f'ALTER DATABASE "{database}" OWNER TO {deployment.owner}')
        owner = as_role(url, deployment.owner)
        assert migrate(owner, runtime=deployment.runtime).exit_code == 0
        engine = make_engine(owner)
        command.downgrade(alembic_config(engine), "-1")
        engine.dispose()
        with (
            pytest.raises(
                SchemaNotCurrent, match=r"at revision \w+, this release needs \w+"
            ) as told,
            engine_scope(as_role(url, deployment.runtime)),
        ):
            pass
        assert "run `radsentry migrate` with RADSENTRY_DATABASE__MIGRATION_URL" in str(told.value)
        result = run_command(
            ["scheduler", "--metrics-port", "0"],
            RADSENTRY_DATABASE__URL=as_role(url, deployment.runtime),
        )
        assert result.exit_code == 2 and "this release needs" in result.output


def test_the_runtime_role_may_not_rebuild_the_performance_statistics(
    deployment: Deployment,
) -> None:
    """`radsentry performance rebuild` rewrites whole tables: the service's runtime role (which
    an operator might have in RADSENTRY_DATABASE__URL) is refused by PostgreSQL and the command
    says what to do; the owner may."""
    as_runtime = run_command(
        ["performance", "rebuild", "--yes"],
        RADSENTRY_DATABASE__URL=deployment.urls[deployment.runtime],
    )
    assert as_runtime.exit_code == 2, as_runtime.output
    assert f"{deployment.runtime} may not rewrite the performance statistics" in as_runtime.output
    assert "nothing was changed" in as_runtime.output
    assert "RADSENTRY_DATABASE__MIGRATION_URL" in as_runtime.output
    as_owner = run_command(
        ["performance", "rebuild", "--yes"],
        RADSENTRY_DATABASE__MIGRATION_URL=deployment.urls[deployment.owner],
        RADSENTRY_DATABASE__URL=deployment.urls[deployment.runtime],
    )
    assert as_owner.exit_code == 0, as_owner.output
    assert "0 labelled cases counted" in as_owner.output
