"""Engines, migrations and the helpers every store shares (pages, upserts).
Nothing connects at import time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    create_engine,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from monitor.service.errors import ServiceError
from monitor.service.models import Base

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.sql.selectable import TableValuedAlias
    from sqlalchemy.types import TypeEngine

# Alembic is imported where the schema is read or changed, not here: a quarter of a second that
# read-only commands (`radsentry audit verify`) need not pay (docs/benchmarks.md, "CLI start").

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

CONNECT_TIMEOUT_S = 10
"""PostgreSQL: seconds a new connection may take (libpq waits forever by default, so a start
against an unreachable host, or /readyz during an outage, would hang instead of failing).
A ``connect_timeout`` in the URL's query wins."""


def as_utc(value: datetime) -> datetime:
    """A timestamp as an aware UTC datetime (a naive one is taken as UTC: every stored time is)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


class UnsupportedDatabase(ServiceError, ValueError):
    """The URL names a database other than PostgreSQL."""


NO_JIT: Final = "-c jit=off"
"""Every connection runs without PostgreSQL's JIT compilation. Our statements are keyed reads
and writes of a few thousand rows at most; a batched one (the tracker's reads of 200 streams)
is estimated costly enough to be compiled, which took 0.5-0.7 s against its 0.1 s of work
(docs/benchmarks.md, issue 21 item 4)."""


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the engine for ``url``, a PostgreSQL URL (UnsupportedDatabase otherwise: the
    change log's triggers, the advisory locks and the Grafana views are PostgreSQL's; with no
    URL configured RadSentry runs an embedded PostgreSQL server, ``embedded_pg``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise UnsupportedDatabase(
            f"RadSentry needs PostgreSQL, not {parsed.get_backend_name()}; unset "
            "RADSENTRY_DATABASE__URL to use the embedded PostgreSQL server"
        )
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "options" not in parsed.query:
        connect_args["options"] = NO_JIT
    return create_engine(
        url,
        echo=echo,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; safe to run at every start)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


INSUFFICIENT_PRIVILEGE = "42501"
"""PostgreSQL's SQLSTATE for a refused privilege (``permission denied``, ``must be owner``)."""


class SchemaNotCurrent(ServiceError, RuntimeError):
    """The schema is behind this release, and the role connected may not upgrade it."""


def schema_revisions(engine: Engine) -> tuple[str | None, str | None]:
    """The database's schema revision (None: none yet) and this release's head."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def upgrade_at_start(engine: Engine) -> None:
    """:func:`upgrade`, as a service does at start. At head that only reads the revision, which
    the runtime role may; behind head the runtime role may not change the schema, and is told
    to run ``radsentry migrate`` as the owner (SchemaNotCurrent)."""
    try:
        upgrade(engine)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        user = engine.url.username or "this role"
        try:
            current, head = schema_revisions(engine)
        except DBAPIError:  # not even the revision: no grants yet
            raise SchemaNotCurrent(
                f"{user} may not read this database's schema: run `radsentry migrate` with "
                "RADSENTRY_DATABASE__MIGRATION_URL (the owner) and "
                f"RADSENTRY_DATABASE__RUNTIME_ROLE={user}, which grants it what it needs"
            ) from exc
        raise SchemaNotCurrent(
            f"the database schema is at revision {current or 'none (empty)'}, this release "
            f"needs {head}: run `radsentry migrate` with RADSENTRY_DATABASE__MIGRATION_URL (the "
            f"owner); {user} may not change the schema"
        ) from exc


@contextmanager
def engine_scope(url: str, *, migrate: bool = True) -> Iterator[Engine]:
    """An engine of its own on ``url``, disposed when the block ends, with the schema brought to
    head first unless ``migrate`` is false: what every command and scheduled job that opens its
    own database does (:func:`upgrade_at_start`)."""
    engine = make_engine(url)
    try:
        if migrate:
            upgrade_at_start(engine)
        yield engine
    finally:
        engine.dispose()


def ping(engine: Engine) -> None:
    """Raise unless the database answers a query."""
    with engine.connect() as connection:
        connection.execute(select(1))


def table_of(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


KEYS_PER_STATEMENT: Final = 200
"""How many keys (streams, sites, summary rows) one batched read takes: :func:`chunked`."""

_ItemT = TypeVar("_ItemT")


def chunked(items: Sequence[_ItemT], size: int = KEYS_PER_STATEMENT) -> Iterator[list[_ItemT]]:
    """``items`` in consecutive lists of at most ``size``: one batched statement each."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def given_rows(
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    types: Mapping[str, TypeEngine[Any]] | None = None,
    name: str = "given",
) -> TableValuedAlias:
    """``rows`` (values of ``table``'s ``columns``, in that order) as a relation to join:
    ``unnest`` of one array parameter per column.

    One short statement whatever the number of rows, where a tuple ``IN`` list is SQL text that
    grows with the keys (psycopg parses it anew for every batch, and PostgreSQL plans it as an
    OR of row comparisons): the batch transaction's keyed reads and writes use this
    (docs/benchmarks.md, "Labelled replay: set-based batch writes"). ``types``: a column's
    element type where it is not the table's (JSON sent as text, say), or of a column the table
    lacks.
    """
    types = types or {}
    arrays = []
    for index, column in enumerate(columns):
        values = [row[index] for row in rows]  # psycopg's dialect casts it: ::VARCHAR(64)[]
        element = types[column] if column in types else table.c[column].type
        arrays.append(bindparam(None, values, type_=ARRAY(element)))
    return func.unnest(*arrays).table_valued(*columns).render_derived(name)


def copy_rows(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Bulk load ``rows`` (all with the same keys) with COPY inside the open transaction.

    COPY halves the client CPU per row compared with executemany through SQLAlchemy's bind
    processing, which is what keeps one consumer above 5,000 events/s (docs/benchmarks.md).
    """
    columns = list(rows[0])
    names = ", ".join(f'"{name}"' for name in columns)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([_copy_value(row[name]) for name in columns])


def _copy_value(value: Any) -> Any:
    # JSON columns hold objects or (the embedding) arrays; psycopg would send a list as an array.
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else value


def matches(table: Table, given: TableValuedAlias, columns: Sequence[str]) -> ColumnElement[bool]:
    """``table``'s row has the given row's values in every one of ``columns``."""
    return and_(*(table.c[column] == given.c[column] for column in columns))


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
