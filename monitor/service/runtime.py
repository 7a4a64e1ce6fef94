"""Wiring shared by the CLI commands: the settings, the database, where the broker is, the
edge key; and how a command that cannot start says why.

A command that cannot start for a reason the operator must fix (a setting, an unreachable
database) prints one line, ``error: <what and where>; <what to do>``, and exits non-zero
(:data:`EXIT_SETTINGS`, :data:`EXIT_UNREACHABLE`); ``radsentry --debug <command>`` raises the
error instead, with its traceback.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import NoReturn

import structlog
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from monitor.service.broker import EmbeddedBroker, running_embedded_broker
from monitor.service.db import SchemaNotCurrent, engine_scope, ping, upgrade_at_start
from monitor.service.environment import (
    PREFIX,
    Problem,
    environment_problems,
    setting_names,
    validation_problems,
)
from monitor.service.errors import ServiceError
from monitor.service.kafka import all_topics, ensure_topics
from monitor.service.logging import configure_logging
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)

console = Console(stderr=True)
"""Where every command writes what it tells the person at the terminal (stdout stays data)."""

EDGE_KEY_FILE = "edge-hmac.key"

EXIT_SETTINGS = 2
"""A setting is unknown or invalid, or the database schema is not this release's."""
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


def fail(exc: Exception, lines: list[str], code: int) -> NoReturn:
    """End the command: each of ``lines`` printed as an error, exit ``code``; with
    ``--debug``, ``exc`` raised instead (its traceback shows)."""
    if run_options.debug:
        raise exc
    for line in lines:
        console.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    raise typer.Exit(code) from None


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


def database_location(url: URL) -> str:
    """Where ``url`` points, for messages: host, port, database and user, never a password."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite file {url.database}"
    host = url.host or "the local socket"
    port = f":{url.port}" if url.port else ""
    user = f" as {url.username}" if url.username else ""
    return f"{url.get_backend_name()} at {host}{port}/{url.database or ''}{user}"


def check_reachable(engine: Engine, setting: str) -> None:
    """DatabaseUnreachable unless the database answers a query; the driver's first line of
    reason is kept (libpq's messages name the host, never the password)."""
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
    servers = configured_bootstrap(settings)
    broker = None
    if servers is None:
        broker = EmbeddedBroker(state_dir=settings.data_dir).start()
        servers = [broker.bootstrap]
    ensure_topics(servers, all_topics(settings.kafka))
    return servers, broker


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
