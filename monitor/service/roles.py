"""Least-privilege database roles: what ``radsentry migrate`` grants on PostgreSQL.

Three roles (docs/deploy.md, "Database roles"):

* the owner, the role ``radsentry migrate`` connects as (``RADSENTRY_DATABASE__MIGRATION_URL``):
  it owns every table, the Grafana views and schema, and the trigger functions. Only an owner
  can alter a table, disable or drop its triggers, or truncate it;
* the runtime role (``RADSENTRY_DATABASE__RUNTIME_ROLE``) of the API and the scheduler: it reads,
  inserts and updates the operational tables (no code of ours deletes a row: only APScheduler
  deletes, in its job store), only reads and appends to the change log and its checkpoints, and
  only reads :data:`READ_ONLY` (the schema's revision);
* the consumer role (``RADSENTRY_DATABASE__CONSUMER_ROLE``) of ``radsentry consume``: only
  :data:`CONSUMER_PRIVILEGES`, nothing on candidates, signatures, the change log, retraining or
  the job store.

:func:`grant_roles` is exact and idempotent. On every table it revokes everything from the role
(and from PUBLIC), grants the plan, then reads the effective privileges back (PUBLIC and
memberships included) and refuses if they differ. It takes over what an earlier one-role
deployment owned (:func:`take_ownership`: ``ALTER ... OWNER TO`` the owner, which works when the
owner is a member of the old owner role, or a superuser). What it may not repair itself it
refuses, naming the statements a DBA runs: a role that does not exist, is the owner, a
superuser, can create roles, or is a member of the owner role, and objects it cannot take over.
Everything happens in one transaction: a refusal changes nothing. The catalog queries are
``monitor.service.pg_objects``'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, Engine, text

from monitor.service.errors import ServiceError
from monitor.service.models import JOB_STORE_TABLE, Base
from monitor.service.pg_objects import (
    GRAFANA_SCHEMA,
    Owned,
    attempt,
    containers,
    current_database,
    current_schema,
    grafana_views,
    is_member,
    may_create,
    our_tables,
    owned_objects,
    quote,
    quoted,
    sequences_of,
    tables_of,
)
from monitor.service.settings import ROLE_NAME

Privileges = frozenset[str]
READ: Privileges = frozenset({"SELECT"})
APPEND: Privileges = frozenset({"SELECT", "INSERT"})
READ_WRITE: Privileges = frozenset({"SELECT", "INSERT", "UPDATE"})
JOB_STORE: Privileges = READ_WRITE | {"DELETE"}
"""APScheduler deletes a job once it has run, or when it is replaced."""
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

APPEND_ONLY = frozenset({"change_log", "change_log_checkpoints"})
"""The runtime role reads and appends, nothing more (their triggers refuse the rest as well)."""
READ_ONLY = frozenset({"alembic_version", "change_log_unsigned"})
"""Written by migrations only: the runtime role reads them."""

# Read from monitor/service/ingest (store.py, consumer.py) and what it calls: the drift engine's
# monitor/service/drift/{store,streams,alerts}.py, performance/labels.apply_labels and
# performance/summaries.join_batch.
# tests/security/test_roles.py runs the consumer's ingestion as this role. SELECT comes with
# every INSERT: a one-row insert returns its new id (RETURNING needs SELECT), and the rows are
# the consumer's own.
CONSUMER_PRIVILEGES: Mapping[str, Privileges] = {
    "processed_events": APPEND,  # the inbox: INSERT ... ON CONFLICT DO NOTHING RETURNING
    "inference_events": APPEND,  # COPY; the newest event per site at start
    "label_events": APPEND,  # COPY
    "dead_letters": APPEND,
    "labels_current": READ_WRITE,  # the label in force, updated by later labels
    "label_changes": APPEND,
    "drift_streams": READ_WRITE,  # SELECT ... FOR UPDATE needs UPDATE
    "drift_checks": APPEND,
    "reference_changes": APPEND,
    "alerts": READ_WRITE,  # new alerts, episodes continued or ended, published_at
    # performance/summaries.join_batch: labelled cases counted as they join, rows locked with
    # SELECT ... FOR UPDATE, new ones created with INSERT ... ON CONFLICT
    "performance_buckets": READ_WRITE,
    "prediction_counts": READ_WRITE,
}

GRAFANA_ROLE = "radsentry_grafana"
"""Reads the Grafana views only (migration 0011): never a service role."""

Kind = Literal["runtime", "consumer"]


class RoleSetupError(ServiceError, RuntimeError):
    """The roles cannot be set up as configured; the message names what a DBA must run."""


@dataclass(frozen=True, slots=True)
class RoleGrants:
    """What one role was granted: privileges per table (tables not named: nothing)."""

    kind: Kind
    role: str
    tables: Mapping[str, Privileges]

    def summary(self) -> str:
        """One line: each set of privileges with its tables (counted when there are many)."""
        groups: dict[Privileges, list[str]] = {}
        for table, privileges in sorted(self.tables.items()):
            groups.setdefault(privileges, []).append(table)
        parts = []
        for privileges, tables in sorted(groups.items(), key=lambda g: -len(g[0])):
            named = f"{len(tables)} tables" if len(tables) > 8 else ", ".join(tables)
            parts.append(f"{_ordered(privileges)} on {named}")
        return f"{self.kind} role {self.role}: " + "; ".join(parts) + "; nothing else"


@dataclass(frozen=True, slots=True)
class RolesReport:
    """What :func:`grant_roles` did, for ``radsentry migrate`` to print."""

    owner: str
    taken_over: list[str]
    """Objects whose ownership moved to the owner (an upgrade from one role)."""
    granted: list[RoleGrants]


def runtime_privileges(tables: Iterable[str]) -> dict[str, Privileges]:
    """The runtime role's plan over ``tables``."""
    return {table: _runtime(table) for table in tables}


def _runtime(table: str) -> Privileges:
    if table in APPEND_ONLY:
        return APPEND
    if table in READ_ONLY:
        return READ
    return JOB_STORE if table == JOB_STORE_TABLE else READ_WRITE


def consumer_privileges(tables: Iterable[str]) -> dict[str, Privileges]:
    """The consumer role's plan over ``tables``: :data:`CONSUMER_PRIVILEGES`, no more."""
    return {table: CONSUMER_PRIVILEGES[table] for table in tables if table in CONSUMER_PRIVILEGES}


def take_ownership(
    engine: Engine, runtime_role: str | None, consumer_role: str | None
) -> list[str]:
    """Check the roles and move to the connected role whatever of ours another role owns (run
    before an upgrade, so that it runs as the owner). Returns what moved."""
    with engine.begin() as connection:
        roles = _checked_roles(connection, runtime_role, consumer_role)
        return _take_ownership(connection, roles)


def grant_roles(engine: Engine, runtime_role: str | None, consumer_role: str | None) -> RolesReport:
    """Set the runtime and the consumer role's privileges exactly (see the module docstring);
    ``None`` leaves that role out."""
    with engine.begin() as connection:
        roles = _checked_roles(connection, runtime_role, consumer_role)
        taken_over = _take_ownership(connection, roles)
        tables = tables_of(connection, our_tables())
        missing = sorted({*Base.metadata.tables} - set(tables))
        if missing:
            raise RoleSetupError(f"tables {missing} do not exist: run the migration first")
        plans = {"runtime": runtime_privileges(tables), "consumer": consumer_privileges(tables)}
        granted = [RoleGrants(kind, role, plans[kind]) for kind, role in roles.items()]
        _revoke_from_public(connection, tables)
        for grants in granted:
            _grant(connection, grants, tables)
        problems = [p for grants in granted for p in _verify(connection, grants, tables)]
        if problems:
            raise RoleSetupError("the roles hold more than planned:\n  " + "\n  ".join(problems))
        owner = str(connection.scalar(text("SELECT current_user")))
    return RolesReport(owner, taken_over, granted)


# --- the roles themselves ---------------------------------------------------------------------


def _checked_roles(
    connection: Connection, runtime_role: str | None, consumer_role: str | None
) -> dict[Kind, str]:
    roles: dict[Kind, str] = {}
    if runtime_role:
        roles["runtime"] = runtime_role
    if consumer_role:
        roles["consumer"] = consumer_role
    if runtime_role and runtime_role == consumer_role:
        raise RoleSetupError("the runtime and the consumer role must be two roles")
    owner = str(connection.scalar(text("SELECT current_user")))
    for kind, role in roles.items():
        _check_role(connection, kind, role, owner)
    return roles


def _check_role(connection: Connection, kind: Kind, role: str, owner: str) -> None:
    if not re.fullmatch(ROLE_NAME, role):
        raise RoleSetupError(f"{kind} role {role!r} is not a plain PostgreSQL name ({ROLE_NAME})")
    if role == owner:
        raise RoleSetupError(
            f"the {kind} role {role} is the role this migration connects as, the owner: run "
            "`radsentry migrate` with RADSENTRY_DATABASE__MIGRATION_URL naming the owner, and "
            f"the services with RADSENTRY_DATABASE__URL naming {role}"
        )
    if role == GRAFANA_ROLE:
        raise RoleSetupError(f"{GRAFANA_ROLE} reads the Grafana views only; choose another role")
    found = connection.execute(
        text("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = :role"),
        {"role": role},
    ).first()
    if found is None:
        raise RoleSetupError(
            f"the {kind} role {role} does not exist. A DBA creates it, with a password of its "
            f"own:\n  CREATE ROLE {role} LOGIN PASSWORD '...';\nthen run `radsentry migrate` again"
        )
    if found.rolsuper or found.rolcreaterole:
        raise RoleSetupError(
            f"the {kind} role {role} is a superuser or may create roles (and so make itself a "
            f"member of the owner). A DBA runs:\n  ALTER ROLE {role} NOSUPERUSER NOCREATEROLE;"
        )
    _end_membership(connection, kind, role, owner)


def _end_membership(connection: Connection, kind: Kind, role: str, owner: str) -> None:
    """A member of the owner role can act as the owner: revoke that where this role may."""
    if not is_member(connection, role, owner):
        return
    revoke = f"REVOKE {quote(owner)} FROM {quote(role)}"
    attempt(connection, revoke)
    if is_member(connection, role, owner):
        raise RoleSetupError(
            f"the {kind} role {role} is a member of the owner {owner}, so it could act as the "
            f"owner. A DBA runs:\n  {revoke};\n(or, when the membership is indirect, revokes "
            "the role in between)"
        )


# --- ownership ----------------------------------------------------------------------------------


def _take_ownership(connection: Connection, roles: Mapping[Kind, str]) -> list[str]:
    """Tables, views, trigger functions and the Grafana schema move to the connected role when
    another owns them; the database and the tables' schema when a service role owns them."""
    owner = str(connection.scalar(text("SELECT current_user")))
    taken: list[Owned] = []
    refused: list[Owned] = []

    def take(found: Owned) -> None:
        if found.owner != owner:
            moved = attempt(connection, f"ALTER {found.kind} {found.name} OWNER TO CURRENT_USER")
            (taken if moved else refused).append(found)

    for found in owned_objects(connection):
        take(found)
    for index in range(2):  # the database first: its owner may own the schema too
        container = containers(connection)[index]
        if any(is_member(connection, role, container.owner) for role in roles.values()):
            take(container)
    if refused:
        raise RoleSetupError(_ownership_help(owner, refused))
    return [f"{found} (was {found.owner})" for found in taken]


def _ownership_help(owner: str, refused: Sequence[Owned]) -> str:
    old_owners = sorted({found.owner for found in refused} - {"pg_database_owner"})
    names = ", ".join(str(found) for found in refused)
    lines = [
        f"{owner} must own the schema's objects, and may not take these from their owners: "
        f"{names}.",
        "A DBA (a superuser) runs, in this database:",
        *(f"  REASSIGN OWNED BY {quote(old)} TO {quote(owner)};" for old in old_owners),
        "or lets the owner take them over, and reruns `radsentry migrate`:",
        *(f"  GRANT {quote(old)} TO {quote(owner)};" for old in old_owners),
    ]
    lines += [
        f"The database itself moves only for a superuser, or for a member with CREATEDB:\n"
        f"  ALTER DATABASE {found.name} OWNER TO {quote(owner)};"
        for found in refused
        if found.kind == "DATABASE"
    ]
    return "\n".join(lines)


# --- privileges -------------------------------------------------------------------------------


def _revoke_from_public(connection: Connection, tables: Mapping[str, int]) -> None:
    connection.execute(text(f"REVOKE ALL ON TABLE {quoted(tables)} FROM PUBLIC"))
    sequences = sequences_of(connection, tables)
    if sequences:
        connection.execute(text(f"REVOKE ALL ON SEQUENCE {', '.join(sequences)} FROM PUBLIC"))


def _grant(connection: Connection, grants: RoleGrants, tables: Mapping[str, int]) -> None:
    role = quote(grants.role)
    statements = [f"REVOKE ALL ON TABLE {quoted(tables)} FROM {role}"]
    views = grafana_views(connection)
    if views:
        statements.append(f"REVOKE ALL ON TABLE {', '.join(views)} FROM {role}")
        statements.append(f"REVOKE ALL ON SCHEMA {GRAFANA_SCHEMA} FROM {role}")
    sequences = sequences_of(connection, tables)
    if sequences:
        statements.append(f"REVOKE ALL ON SEQUENCE {', '.join(sequences)} FROM {role}")
    by_privileges: dict[Privileges, list[str]] = {}
    for table, privileges in grants.tables.items():
        by_privileges.setdefault(privileges, []).append(table)
    for privileges, names in sorted(by_privileges.items(), key=lambda g: sorted(g[0])):
        statements.append(f"GRANT {_ordered(privileges)} ON TABLE {quoted(names)} TO {role}")
    drawn = [s for s, table in sequences.items() if "INSERT" in grants.tables.get(table, ())]
    if drawn:
        statements.append(f"GRANT USAGE ON SEQUENCE {', '.join(sorted(drawn))} TO {role}")
    statements += [
        f"REVOKE ALL ON SCHEMA {current_schema(connection)} FROM {role}",
        f"GRANT USAGE ON SCHEMA {current_schema(connection)} TO {role}",
        f"REVOKE CREATE ON DATABASE {current_database(connection)} FROM {role}",
    ]
    for statement in statements:
        connection.execute(text(statement))
    if may_create(connection, grants.role):
        # Databases created before PostgreSQL 15 let PUBLIC create in the public schema.
        attempt(connection, f"REVOKE CREATE ON SCHEMA {current_schema(connection)} FROM PUBLIC")


def _verify(connection: Connection, grants: RoleGrants, tables: Mapping[str, int]) -> list[str]:
    """What ``grants.role`` can effectively do beyond its plan (PUBLIC and memberships count)."""
    held = connection.execute(
        text(
            """
            SELECT c.relname, p.privilege
            FROM pg_class AS c CROSS JOIN unnest(CAST(:privileges AS text[])) AS p(privilege)
            WHERE c.oid = ANY(CAST(:oids AS oid[]))
              AND has_table_privilege(:role, c.oid, p.privilege)
            """
        ),
        {"privileges": list(TABLE_PRIVILEGES), "oids": list(tables.values()), "role": grants.role},
    )
    extra = sorted(
        f"{privilege} on {table}"
        for table, privilege in held
        if privilege not in grants.tables.get(table, frozenset())
    )
    problems = [
        f"{grants.role} holds {what} (through PUBLIC or a role it belongs to)" for what in extra
    ]
    if may_create(connection, grants.role):
        problems.append(
            f"{grants.role} may create objects in schema {current_schema(connection)}: "
            f"REVOKE CREATE ON SCHEMA {current_schema(connection)} FROM PUBLIC;"
        )
    owners = {o.owner for o in (*owned_objects(connection), *containers(connection))}
    problems += [
        f"{grants.role} is a member of {owner}, which owns objects of the schema"
        for owner in sorted(owners)
        if is_member(connection, grants.role, owner)
    ]
    return problems


def _ordered(privileges: Privileges) -> str:
    return ", ".join(p for p in TABLE_PRIVILEGES if p in privileges)
