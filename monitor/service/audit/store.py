"""The change log: every governed event, append-only, hash-chained and signed.

Each entry stores ``entry_hash = SHA-256(prev_hash + canonical JSON of the entry)``, the first
entry's ``prev_hash`` being 64 zeros; so editing, inserting or deleting any entry breaks every
hash after it, and :func:`verify` names the first entry that does not match. The chain hash is
public arithmetic, so each entry is also signed with the audit key (``keys.py``), which the
database never holds: a row inserted with database credentials alone, however well hashed, is
named by :func:`verify` as unsigned or forged. Entries written before signing began (migration
0014) are reported as unsigned history, covered by the first signed checkpoint. Appends are
serialised by a transaction-scoped PostgreSQL advisory lock, so two writers never give two
entries one sequence number (the chain never forks). Triggers refuse UPDATE, DELETE and
TRUNCATE on the table (migration 0008), so even the service's own database user cannot rewrite
history without dropping them.

Entries carry who (``actor``), what (``action``, ``subject``, ``details``), when
(``recorded_at``, UTC, microseconds), why (``reason``) and the PCCP plan version. They must never
carry PHI: subjects and details are model names, versions, request and alert ids, site ids and
fingerprints.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import Connection, Engine, select, text

from monitor.service.audit import keys
from monitor.service.db import Page, as_utc, page_of, table_of
from monitor.service.models import ChangeLogRow, ChangeLogUnsignedRow

GENESIS: Final = "0" * 64
_LOCK_KEY: Final = 0x52534C4F47  # "RSLOG": the change log's advisory lock
_EXPORT_COLUMNS: Final = (
    "seq",
    "recorded_at",
    "actor",
    "action",
    "subject",
    "reason",
    "plan_version",
    "details",
    "prev_hash",
    "entry_hash",
    "key_id",
    "signature",
)


@dataclass(frozen=True, slots=True)
class Entry:
    """A governed event to record."""

    actor: str
    action: str
    """``plan.loaded``, ``retrain.requested``, ``training.run``, ``gate.result``, ``approval``,
    ``promotion``, ``rollback``, ``rebaseline``, ``config.changed``, ..."""
    subject: str
    details: Mapping[str, Any]
    reason: str | None = None
    plan_version: str | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """What :func:`verify` found: entries checked, and the first bad one if any."""

    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None
    signatures_checked: bool = False
    """Whether each entry's signature was checked against trusted keys (else the chain only)."""
    unsigned_through: int = 0
    """Entries 1 to this were written before entries were signed (migration 0014)."""

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None

    def summary(self) -> str:
        """One line for people: what verified, and the unsigned history if any."""
        if not self.ok:
            return (
                f"change log broken at entry {self.first_bad_seq}: {self.problem} "
                f"({self.entries} entries before it verified)"
            )
        signed = (
            "signed and chained" if self.signatures_checked else "chained (signatures not checked)"
        )
        text = f"change log intact: {self.entries} entries {signed}, head {self.head_hash}"
        if self.unsigned_through:
            text += (
                f"; entries 1-{self.unsigned_through} unsigned, before "
                f"{self.unsigned_through + 1} (written before entries were signed)"
            )
        return text


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers: its fields (not the hashes) as sorted, compact JSON."""
    document = {
        "seq": int(row["seq"]),
        "recorded_at": as_utc(row["recorded_at"]).isoformat(timespec="microseconds"),
        "actor": row["actor"],
        "action": row["action"],
        "subject": row["subject"],
        "reason": row["reason"],
        "plan_version": row["plan_version"],
        "details": row["details"],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def entry_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(row)).hexdigest()


def intact(row: ChangeLogRow) -> bool:
    """Whether a stored entry's ``entry_hash`` recomputes from its ``prev_hash`` and fields (the
    entry alone; :func:`verify` checks the links between entries as well)."""
    fields = {column: getattr(row, column) for column in _EXPORT_COLUMNS}
    return entry_hash(row.prev_hash, fields) == row.entry_hash


def authentic(row: ChangeLogRow, trusted: keys.Keyring, unsigned_history: int) -> bool:
    """Whether a stored entry is :func:`intact` and a trusted key signed it, or it is unsigned
    history from before entries were signed (``seq <= unsigned_history``): what promotion and
    rollback require of each entry they rely on."""
    if not intact(row):
        return False
    if row.signature is None and row.seq <= unsigned_history:
        return True
    problem = keys.entry_problem(trusted, row.seq, row.entry_hash, row.key_id, row.signature)
    return problem is None


def lock(connection: Connection) -> None:
    """Take the change log's append lock (an advisory lock) until the transaction ends.
    Callers that read the log to decide whether to append take it first."""
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def append(connection: Connection, entry: Entry, now: datetime | None = None) -> ChangeLogRow:
    """Append ``entry`` inside the caller's transaction (so it commits with what it records)."""
    lock(connection)
    last = connection.execute(
        select(ChangeLogRow.seq, ChangeLogRow.entry_hash).order_by(ChangeLogRow.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (1, GENESIS) if last is None else (last.seq + 1, last.entry_hash)
    recorded_at = (now or datetime.now(UTC)).astimezone(UTC)
    row: dict[str, Any] = {
        "seq": seq,
        "recorded_at": recorded_at,
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "reason": entry.reason,
        "plan_version": entry.plan_version,
        # Through JSON once, so the stored document is exactly what the hash covered.
        "details": json.loads(json.dumps(dict(entry.details), sort_keys=True)),
        "prev_hash": prev_hash,
    }
    row["entry_hash"] = entry_hash(prev_hash, row)
    row["key_id"], row["signature"] = keys.sign_entry(keys.entry_key(), row["entry_hash"])
    connection.execute(table_of(ChangeLogRow).insert().values(**row))
    return ChangeLogRow(**row)


def latest_details(
    connection: Connection, actions: tuple[str, ...], subject: str
) -> dict[str, Any] | None:
    """The details of the newest entry with one of ``actions`` about ``subject``, or None.

    Under :func:`lock`: callers that append only when something changed since that entry take
    the lock first, so two of them starting together record the change once."""
    lock(connection)
    found = connection.execute(
        select(ChangeLogRow.details)
        .where(ChangeLogRow.action.in_(actions), ChangeLogRow.subject == subject)
        .order_by(ChangeLogRow.seq.desc())
        .limit(1)
    ).first()
    return None if found is None else dict(found.details)


def about(connection: Connection, subject: str, actions: tuple[str, ...]) -> list[ChangeLogRow]:
    """The entries with one of ``actions`` about ``subject``, in sequence order."""
    rows = connection.execute(
        select(table_of(ChangeLogRow))
        .where(ChangeLogRow.subject == subject, ChangeLogRow.action.in_(actions))
        .order_by(ChangeLogRow.seq)
    )
    return [ChangeLogRow(**row._mapping) for row in rows]


def record(engine: Engine, entry: Entry) -> ChangeLogRow:
    """Append ``entry`` in a transaction of its own."""
    with engine.begin() as connection:
        return append(connection, entry)


def entries(engine: Engine, *, after: int = 0, batch: int = 1000) -> Iterator[ChangeLogRow]:
    """Every entry from ``after + 1`` on, in sequence order, read in batches."""
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                select(table_of(ChangeLogRow))
                .where(ChangeLogRow.seq > after)
                .order_by(ChangeLogRow.seq)
                .limit(batch)
            ).all()
        if not rows:
            return
        for row in rows:
            yield ChangeLogRow(**row._mapping)
        after = rows[-1].seq


EntryPage = Page[ChangeLogRow]


def search(
    engine: Engine,
    *,
    action: str | None = None,
    actor: str | None = None,
    subject_prefix: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> EntryPage:
    """Entries matching every filter given, newest first; ``total`` counts all that match."""
    conditions = []
    if action is not None:
        conditions.append(ChangeLogRow.action == action)
    if actor is not None:
        conditions.append(ChangeLogRow.actor == actor)
    if subject_prefix is not None:
        escaped = subject_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(ChangeLogRow.subject.like(f"{escaped}%", escape="\\"))
    if since is not None:
        conditions.append(ChangeLogRow.recorded_at >= since)
    if until is not None:
        conditions.append(ChangeLogRow.recorded_at < until)
    return page_of(engine, ChangeLogRow, conditions, (ChangeLogRow.seq.desc(),), limit, offset)


def unsigned_through(connection: Connection) -> int:
    """How many entries the log held when entries began to be signed (0: every entry is)."""
    return connection.scalar(select(ChangeLogUnsignedRow.through_seq).limit(1)) or 0


def verify(engine: Engine, trusted: keys.Keyring | None = None) -> Verification:
    """Recompute the chain from the first entry and, given ``trusted`` public keys, check each
    entry's signature; the first entry that does not hold, if any.

    Unsigned entries are accepted only up to :func:`unsigned_through` (history written before
    signing began); any later one was inserted without the audit key."""
    with engine.connect() as connection:
        legacy = unsigned_through(connection) if trusted is not None else 0
    prev_hash, expected_seq, count = GENESIS, 1, 0

    def broken(seq: int, problem: str) -> Verification:
        return Verification(count, prev_hash, seq, problem, trusted is not None, min(legacy, count))

    for row in entries(engine):
        fields = {column: getattr(row, column) for column in _EXPORT_COLUMNS}
        if row.seq != expected_seq:
            return broken(row.seq, f"expected entry {expected_seq} next")
        if row.prev_hash != prev_hash:
            return broken(row.seq, "prev_hash is not the previous hash")
        if entry_hash(prev_hash, fields) != row.entry_hash:
            return broken(row.seq, "content does not match its hash")
        if trusted is not None and not (row.signature is None and row.seq <= legacy):
            problem = keys.entry_problem(
                trusted, row.seq, row.entry_hash, row.key_id, row.signature
            )
            if problem is not None:
                return broken(row.seq, problem)
        prev_hash, expected_seq, count = row.entry_hash, expected_seq + 1, count + 1
    return Verification(count, prev_hash, None, None, trusted is not None, min(legacy, count))


def export(engine: Engine, fmt: Literal["json", "csv"]) -> str:
    """The whole log for auditors: JSON lines, or CSV with ``details`` as JSON text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(_EXPORT_COLUMNS)
    for row in entries(engine):
        values = {column: getattr(row, column) for column in _EXPORT_COLUMNS}
        values["recorded_at"] = as_utc(row.recorded_at).isoformat(timespec="microseconds")
        if writer is None:
            buffer.write(json.dumps(values, sort_keys=True) + "\n")
        else:
            values["details"] = json.dumps(row.details, sort_keys=True)
            writer.writerow([values[column] for column in _EXPORT_COLUMNS])
    return buffer.getvalue()
