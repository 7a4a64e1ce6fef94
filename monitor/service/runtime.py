"""Wiring shared by the CLI commands: the settings, the database, where the broker is, the
edge key; and how a command that cannot start says why.

A command that cannot start for a reason the operator must fix (a setting, an unreachable
database) prints one line, ``error: <what and where>; <what to do>``, and exits non-zero
(:data:`EXIT_SETTINGS`, :data:`EXIT_UNREACHABLE`); ``radsentry --debug <command>`` raises the
error instead, with its traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import structlog
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape

from monitor.service.broker import EmbeddedBroker, running_embedded_broker
from monitor.service.environment import (
    PREFIX,
    Problem,
    environment_problems,
    setting_names,
    validation_problems,
)
from monitor.service.errors import ServiceError
from monitor.service.logging import configure_logging
from monitor.service.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

    from monitor.service.embedded_pg import EmbeddedPostgres

# The database layer (SQLAlchemy, the ORM models) is imported by the functions that open a
# database, so that commands which open none start quickly (docs/benchmarks.md, "CLI start").

log = structlog.get_logger(__name__)

console = Console(stderr=True)
"""Where every command writes what it tells the person at the terminal (stdout stays data)."""

EDGE_KEY_FILE = "edge-hmac.key"

EXIT_SETTINGS = 2
"""A setting is unknown or invalid, the database schema is not this release's, or the API's
port is taken."""
EXIT_UNREACHABLE = 3
"""The database does not answer (down, wrong host, refused login)."""


@dataclass
class RunOptions:
    """Options of the root command that every command honours."""

    debug: bool = False
    """Raise start-up errors with their traceback instead of one line each."""


run_options = RunOptions()
"""Set by the root command's callback (``radsentry --debug ...``)."""


class BrokerNotFound(ServiceError, RuntimeError):
    """No bootstrap servers are configured and no bundled broker is running."""


class SettingsInvalid(ServiceError, ValueError):
    """Variables that stop the process: unknown, not JSON, or refused by validation. The
    message names each one and why, never a value."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems


class DatabaseUnreachable(ServiceError, ConnectionError):
    """The database did not answer at start; the message names where, never the password."""


class NoDatabase(ServiceError, LookupError):
    """A read-only command found no RadSentry database where the settings point."""


def fail(exc: Exception, lines: list[str], code: int) -> NoReturn:
    """End the command: each of ``lines`` printed as an error, exit ``code``; with
    ``--debug``, ``exc`` raised instead (its traceback shows)."""
    if run_options.debug:
        raise exc
    for line in lines:
        console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    raise typer.Exit(code) from None


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` once its ``atexit`` callbacks have run and its output is
    flushed, skipping the interpreter's teardown of every imported module: after the demo
    (torch, MLflow, FastAPI, ... loaded) that teardown alone took 6 to 10 s on a loaded 2-core
    machine, all of it after the demo had said "stopped" (docs/benchmarks.md). Only for a
    command that has stopped everything it started itself, as `radsentry demo` has."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: exiting anyway
            stream.flush()
    os._exit(code)


def read_settings(environ: Mapping[str, str]) -> Settings:
    """The settings from ``environ`` (it must be ``os.environ``, which pydantic-settings
    reads), after :func:`~monitor.service.environment.environment_problems`; SettingsInvalid
    names every variable at fault."""
    names = setting_names()
    problems = environment_problems(environ, names)
    if problems:
        raise SettingsInvalid(problems)
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsInvalid(validation_problems(exc, names)) from exc
    except SettingsError as exc:  # names the group, never the value
        raise SettingsInvalid([Problem(PREFIX + "*", str(exc))]) from exc


def load_settings() -> Settings:
    """The settings from the environment, with logging configured from them (every command).
    A variable that names no setting, or an invalid value, ends the command: one line per
    variable, exit :data:`EXIT_SETTINGS`."""
    try:
        settings = read_settings(os.environ)
    except SettingsInvalid as exc:
        fail(exc, [f"{problem} (README, Settings)" for problem in exc.problems], EXIT_SETTINGS)
    configure_logging(settings.logging)
    return settings


def database_url(settings: Settings) -> str:
    """The database a command connects to (:func:`monitor.service.embedded_pg.database_url`:
    the configured one, else the embedded server's); an embedded server that does not start
    ends the command with its reason and its log's tail (:data:`EXIT_UNREACHABLE`)."""
    from monitor.service import embedded_pg  # SQLAlchemy: only commands that connect

    try:
        return embedded_pg.database_url(settings)
    except embedded_pg.EmbeddedDatabaseError as exc:
        fail(exc, str(exc).splitlines(), EXIT_UNREACHABLE)


def existing_database_url(settings: Settings) -> str:
    """:func:`database_url` for a read-only command, which creates nothing: with no database
    configured and no embedded cluster in the data dir yet, the command ends
    (:class:`NoDatabase`, :data:`EXIT_SETTINGS`) instead of creating one."""
    from monitor.service.embedded_pg import CLUSTER_DIR

    cluster = settings.data_dir / CLUSTER_DIR
    if not settings.database.url and not (cluster / "PG_VERSION").exists():
        missing = NoDatabase(
            f"no database at {cluster.resolve()}, so nothing to read; this command creates "
            f"none (`radsentry serve` or `make run` does), check {PREFIX}DATABASE__URL or "
            f"{PREFIX}DATA_DIR"
        )
        fail(missing, [str(missing)], EXIT_SETTINGS)
    return database_url(settings)


def embedded_database(settings: Settings) -> EmbeddedPostgres | None:
    """The embedded server, started or joined, when no database is configured (the demo holds
    it for its whole run); None when one is. Fails as :func:`database_url` does."""
    from monitor.service import embedded_pg

    if settings.database.url:
        return None
    try:
        return embedded_pg.open_embedded_database(settings.data_dir)
    except embedded_pg.EmbeddedDatabaseError as exc:
        fail(exc, str(exc).splitlines(), EXIT_UNREACHABLE)


def database_location(url: URL) -> str:
    """Where ``url`` points, for messages: host, port, database and user, never a password."""
    host = url.host or url.query.get("host") or "the local socket"
    port = f":{url.port}" if url.port else ""
    user = f" as {url.username}" if url.username else ""
    return f"{url.get_backend_name()} at {host}{port}/{url.database or ''}{user}"


def check_reachable(engine: Engine, setting: str) -> None:
    """DatabaseUnreachable unless the database answers a query; the driver's first line of
    reason is kept (libpq's messages name the host, never the password)."""
    from sqlalchemy.exc import DBAPIError

    from monitor.service.db import ping

    try:
        ping(engine)
    except DBAPIError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        if engine.url.password:
            reason = reason.replace(str(engine.url.password), "***")
        raise DatabaseUnreachable(
            f"cannot reach the database, {database_location(engine.url)} ({reason}); check "
            f"that it is running and reachable from here, and {setting}"
        ) from exc


@contextmanager
def open_database(
    url: str, *, migrate: bool = True, setting: str = "RADSENTRY_DATABASE__URL"
) -> Iterator[Engine]:
    """:func:`~monitor.service.db.engine_scope` for a long-running command, checked first: a
    database that does not answer ends the command in one line (:data:`EXIT_UNREACHABLE`),
    naming ``setting``; so does a schema that this role may not bring to head
    (:data:`EXIT_SETTINGS`)."""
    from monitor.service.db import SchemaNotCurrent, engine_scope, upgrade_at_start

    with ExitStack() as stack:
        engine = stack.enter_context(engine_scope(url, migrate=False))
        try:
            check_reachable(engine, setting)
        except DatabaseUnreachable as exc:
            fail(exc, [str(exc)], EXIT_UNREACHABLE)
        if migrate:
            try:
                upgrade_at_start(engine)
            except SchemaNotCurrent as exc:
                fail(exc, [str(exc)], EXIT_SETTINGS)
        yield engine


def open_owner_database(settings: Settings) -> AbstractContextManager[Engine]:
    """:func:`open_database` connected as the schema's owner, not upgraded: the connection of
    commands that change the schema or rewrite whole tables (`migrate`, `performance
    rebuild`): RADSENTRY_DATABASE__MIGRATION_URL when set, else RADSENTRY_DATABASE__URL."""
    owner_setting = "MIGRATION_URL" if settings.database.migration_url else "URL"
    return open_database(
        settings.database.migration_url or database_url(settings),
        migrate=False,
        setting=f"RADSENTRY_DATABASE__{owner_setting}",
    )


def configured_bootstrap(settings: Settings) -> list[str] | None:
    """Configured servers, else the address of a running bundled broker, else None."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    address = running_embedded_broker(settings.data_dir)
    return [address] if address else None


def require_bootstrap(settings: Settings) -> list[str]:
    servers = configured_bootstrap(settings)
    if servers is None:
        raise BrokerNotFound(
            "no Kafka bootstrap servers configured (RADSENTRY_KAFKA__BOOTSTRAP_SERVERS) and no "
            f"bundled broker running for data dir {settings.data_dir}; start `radsentry serve` "
            "first or configure a cluster"
        )
    return servers


def start_broker_if_needed(settings: Settings) -> tuple[list[str], EmbeddedBroker | None]:
    """Use the configured cluster or a running bundled broker; otherwise start one."""
    from monitor.service.kafka import (
        all_topics,
        ensure_topics,
    )  # kafka-python: commands that need it

    servers = configured_bootstrap(settings)
    broker = None
    if servers is None:
        broker = EmbeddedBroker(state_dir=settings.data_dir).start()
        servers = [broker.bootstrap]
    ensure_topics(servers, all_topics(settings.kafka))
    return servers, broker


@contextmanager
def terminal_foreground() -> Iterator[None]:
    """Make this process the terminal's foreground process group for the block, so that Ctrl-C
    reaches this command (and its children) only, not the program that started it.

    GNU make dies of a SIGINT it receives itself ("*** [run] Interrupt", status 130) whatever
    its recipe does, so `make run` could not end 0 on Ctrl-C while make shared the demo's
    process group. A process without a terminal, or in the background, is left as it is; the
    terminal goes back to the previous group at the end.
    """
    try:
        terminal = os.open("/dev/tty", os.O_RDWR)
    except OSError:  # no controlling terminal (CI, a service): nothing to take
        yield
        return
    try:
        previous = os.tcgetpgrp(terminal)
        if previous != os.getpgrp():  # a background job: Ctrl-C is not ours to take
            yield
            return
        _as_foreground(terminal, _own_group)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the previous group may have gone
                _as_foreground(terminal, lambda: previous)
    finally:
        os.close(terminal)


def _own_group() -> int:
    os.setpgid(0, 0)  # a process group of its own (its children join it)
    return os.getpgrp()


def _as_foreground(terminal: int, group: Callable[[], int]) -> None:
    # A background group that changes the foreground gets SIGTTOU (which would stop it).
    handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(terminal, group())
    finally:
        signal.signal(signal.SIGTTOU, handler)


def pasteable_cli(data_dir: Path) -> str:
    """``radsentry`` as a command line that works pasted into a new shell, in any directory.

    A new shell has no activated virtual environment, so a bare ``radsentry`` is not on its
    PATH (it lives in ``.venv/bin``); and a relative ``.venv/bin/radsentry`` or data dir holds
    only in the repository root. So: the absolute path of the console script installed beside
    this interpreter (else this interpreter running the CLI module), with this process's data
    dir, where the local token secret lives, as an absolute ``RADSENTRY_DATA_DIR``.
    """
    script = Path(sys.executable).parent / "radsentry"
    program = (
        shlex.quote(str(script))
        if script.is_file()
        else f"{shlex.quote(sys.executable)} -m monitor.service.cli"
    )
    return f"{PREFIX}DATA_DIR={shlex.quote(str(data_dir.resolve()))} {program}"


def edge_key(settings: Settings) -> bytes:
    """The site's pseudonymisation secret: configured, or created once in data_dir (demo)."""
    if settings.edge.hmac_key is not None:
        return settings.edge.hmac_key.get_secret_value().encode()
    path = settings.data_dir / EDGE_KEY_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
        log.warning(
            "created a demo pseudonymisation key; set RADSENTRY_EDGE__HMAC_KEY in production"
        )
    return path.read_text().strip().encode()


@contextmanager
def open_existing_database(
    url: str, *, setting: str = "RADSENTRY_DATABASE__URL"
) -> Iterator[Engine]:
    """:func:`open_database` for a read-only command, which creates nothing: no schema, no
    upgrade (``url`` from :func:`existing_database_url`, which creates no embedded cluster). A
    query that fails on a schema that is not this release's ends the command
    (:data:`EXIT_SETTINGS`; Alembic, which tells, is imported only then: it is a tenth of the
    command's start)."""
    from sqlalchemy.exc import DBAPIError

    from monitor.service.db import SchemaNotCurrent, schema_revisions

    with open_database(url, migrate=False, setting=setting) as engine:
        try:
            yield engine
        except DBAPIError:
            current, head = schema_revisions(engine)
            if current == head:
                raise
            found = f"revision {current}" if current else "no RadSentry schema"
            behind = SchemaNotCurrent(
                f"the database ({database_location(engine.url)}) has {found}, this release "
                f"reads {head}; this command changes nothing: run `radsentry migrate` first"
            )
            fail(behind, [str(behind)], EXIT_SETTINGS)
