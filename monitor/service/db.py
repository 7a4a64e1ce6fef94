"""Engines, migrations and the helpers every store shares (pages, dialect-aware inserts).
Nothing connects at import time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, Connection, Engine, Table, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from monitor.service.models import Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def as_utc(value: datetime) -> datetime:
    """A stored timestamp as an aware UTC datetime (SQLite returns naive ones; all are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine for ``url``; SQLite files get WAL and a parent directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        echo=echo,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_pre_ping=True,
    )


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; safe to run at every start)."""
    command.upgrade(alembic_config(engine), revision)


@contextmanager
def engine_scope(url: str, *, migrate: bool = True) -> Iterator[Engine]:
    """An engine of its own on ``url``, disposed when the block ends, with the schema brought to
    head first unless ``migrate`` is false: what every command and scheduled job that opens its
    own database does."""
    engine = make_engine(url)
    try:
        if migrate:
            upgrade(engine)
        yield engine
    finally:
        engine.dispose()


def ping(engine: Engine) -> None:
    """Raise unless the database answers a query."""
    with engine.connect() as connection:
        connection.execute(select(1))


def table_of(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


RowT = TypeVar("RowT", bound=Base)


@dataclass(frozen=True, slots=True)
class Page(Generic[RowT]):
    """One page of a listing; ``total`` counts every row that matches, on any page."""

    items: list[RowT]
    total: int


def page_of(
    engine: Engine,
    model: type[RowT],
    conditions: Sequence[ColumnElement[bool]],
    order_by: Sequence[Any],
    limit: int,
    offset: int,
) -> Page[RowT]:
    """The rows of ``model`` matching every condition, ordered, one page of them."""
    query = select(table_of(model)).where(*conditions)
    with engine.connect() as connection:
        total = connection.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = connection.execute(query.order_by(*order_by).limit(limit).offset(offset))
        return Page([model(**row._mapping) for row in rows], total)


def insert_for(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported")
