"""Our objects in PostgreSQL's catalog: which exist, who owns them, the sequences they draw
from, what a role may do; and the few statements ``monitor.service.roles`` builds from names.
Queries only, except :func:`attempt`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from monitor.service.models import JOB_STORE_TABLE, Base

GRAFANA_SCHEMA = "grafana"
"""The schema of the PHI-free views (migration 0011), read by their own role only."""


def our_tables() -> list[str]:
    """The tables the migrations and ``radsentry migrate`` create in the schema."""
    return sorted({*Base.metadata.tables, "alembic_version", JOB_STORE_TABLE})


@dataclass(frozen=True, slots=True)
class Owned:
    """An object of ours and the role that owns it."""

    kind: Literal["TABLE", "VIEW", "FUNCTION", "SCHEMA", "DATABASE"]
    name: str
    """As PostgreSQL prints it (quoted where needed)."""
    owner: str

    def __str__(self) -> str:
        return f"{self.kind.lower()} {self.name}"


def is_member(connection: Connection, role: str, of: str) -> bool:
    """Whether ``role`` belongs to ``of``, directly or not (and so may act as it)."""
    statement = text("SELECT pg_has_role(:role, :of, 'MEMBER')")
    return bool(connection.scalar(statement, {"role": role, "of": of}))


def attempt(connection: Connection, statement: str) -> bool:
    """Run ``statement`` in a savepoint; False (and nothing changed) if it is refused."""
    try:
        with connection.begin_nested():
            connection.execute(text(statement))
    except DBAPIError:
        return False
    return True


def owned_objects(connection: Connection) -> list[Owned]:
    """Our tables (:func:`our_tables`), the Grafana views and schema, and the functions of our
    tables' triggers, with their owners."""
    tables = tables_of(connection, our_tables())
    relations = connection.execute(
        text(
            """
            SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                   c.oid::regclass::text, pg_get_userbyid(c.relowner)
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE (c.oid = ANY(CAST(:oids AS oid[])))
               OR (n.nspname = :grafana AND c.relkind = 'v')
            ORDER BY 1, 2
            """
        ),
        {"oids": list(tables.values()), "grafana": GRAFANA_SCHEMA},
    )
    functions = connection.execute(
        text(
            """
            SELECT DISTINCT 'FUNCTION', p.oid::regprocedure::text, pg_get_userbyid(p.proowner)
            FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid
            WHERE t.tgrelid = ANY(CAST(:oids AS oid[])) AND NOT t.tgisinternal
            ORDER BY 2
            """
        ),
        {"oids": list(tables.values())},
    )
    schema = connection.execute(
        text(
            "SELECT 'SCHEMA', quote_ident(nspname), pg_get_userbyid(nspowner) "
            "FROM pg_namespace WHERE nspname = :grafana"
        ),
        {"grafana": GRAFANA_SCHEMA},
    )
    return [Owned(*row) for result in (relations, functions, schema) for row in result]


def containers(connection: Connection) -> list[Owned]:
    """The database and the schema of our tables: whoever owns them may drop our tables."""
    rows = connection.execute(
        text(
            """
            SELECT 'DATABASE', quote_ident(d.datname), pg_get_userbyid(d.datdba)
            FROM pg_database AS d WHERE d.datname = current_database()
            UNION ALL
            SELECT 'SCHEMA', quote_ident(n.nspname), pg_get_userbyid(n.nspowner)
            FROM pg_namespace AS n WHERE n.nspname = current_schema()
            """
        )
    )
    return [Owned(*row) for row in rows]


def tables_of(connection: Connection, names: Sequence[str]) -> dict[str, int]:
    """Which of ``names`` exist in the current schema, with their oids."""
    rows = connection.execute(
        text(
            "SELECT relname, oid FROM pg_class WHERE relnamespace = "
            "to_regnamespace(current_schema())::oid AND relkind IN ('r', 'p') "
            "AND relname = ANY(CAST(:names AS text[]))"
        ),
        {"names": list(names)},
    )
    return {name: oid for name, oid in rows}


def sequences_of(connection: Connection, tables: Mapping[str, int]) -> dict[str, str]:
    """The sequences our tables' serial and identity columns draw from: name -> table."""
    rows = connection.execute(
        text(
            """
            SELECT s.oid::regclass::text, t.relname
            FROM pg_class AS s
            JOIN pg_depend AS d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
                 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
            JOIN pg_class AS t ON t.oid = d.refobjid
            WHERE s.relkind = 'S' AND t.oid = ANY(CAST(:oids AS oid[]))
            """
        ),
        {"oids": list(tables.values())},
    )
    return {sequence: table for sequence, table in rows}


def may_create(connection: Connection, role: str) -> bool:
    """Whether ``role`` may create objects in the tables' schema (PUBLIC counts)."""
    statement = text("SELECT has_schema_privilege(:role, current_schema(), 'CREATE')")
    return bool(connection.scalar(statement, {"role": role}))


def grafana_views(connection: Connection) -> list[str]:
    """The views of the Grafana schema, qualified."""
    rows = connection.execute(
        text(
            "SELECT c.oid::regclass::text FROM pg_class AS c "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :grafana AND c.relkind = 'v' ORDER BY 1"
        ),
        {"grafana": GRAFANA_SCHEMA},
    )
    return list(rows.scalars())


def current_schema(connection: Connection) -> str:
    """The schema our tables resolve to, quoted (normally public)."""
    return str(connection.scalar(text("SELECT quote_ident(current_schema())")))


def current_database(connection: Connection) -> str:
    """The connected database's name, quoted."""
    return str(connection.scalar(text("SELECT quote_ident(current_database())")))


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quoted(tables: Iterable[str]) -> str:
    """A list of quoted identifiers, sorted, for a GRANT or REVOKE."""
    return ", ".join(quote(table) for table in sorted(tables))
