"""Wiring shared by the CLI commands: the settings, where the broker is, the edge key."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import structlog
import typer
from rich.console import Console
from sqlalchemy import Engine

from monitor.service.broker import EmbeddedBroker, running_embedded_broker
from monitor.service.db import SchemaNotCurrent, engine_scope
from monitor.service.errors import ServiceError
from monitor.service.kafka import all_topics, ensure_topics
from monitor.service.logging import configure_logging
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)

console = Console(stderr=True)
"""Where every command writes what it tells the person at the terminal (stdout stays data)."""

EDGE_KEY_FILE = "edge-hmac.key"


class BrokerNotFound(ServiceError, RuntimeError):
    """No bootstrap servers are configured and no bundled broker is running."""


def load_settings() -> Settings:
    """The settings from the environment, with logging configured from them (every command)."""
    settings = Settings()
    configure_logging(settings.logging)
    return settings


@contextmanager
def open_database(url: str, *, migrate: bool = True) -> Iterator[Engine]:
    """:func:`~monitor.service.db.engine_scope` for a long-running command: a schema that this
    role may not bring to head ends the command with the reason in one line (exit status 2)."""
    with ExitStack() as stack:
        try:
            engine = stack.enter_context(engine_scope(url, migrate=migrate))
        except SchemaNotCurrent as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
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
