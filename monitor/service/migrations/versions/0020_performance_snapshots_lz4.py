"""lz4 TOAST compression for the performance snapshots' JSON, where the server has lz4.

A full refresh of 100 sites stores 202 snapshots whose subgroups JSON is about 38 KB each;
PostgreSQL compresses it with pglz by default (``default_toast_compression``), which was about
half of storing them. lz4 took the store from 0.22 s to 0.12 s on the 100-site benchmark
(docs/benchmarks.md, "Full refresh: statistics without zlib, lz4 snapshots"). Only values
written from now on are lz4; older ones stay pglz and read as before.

The server must have been built with lz4 (Debian's PostgreSQL 15 is; the embedded PostgreSQL
wheel that ``radsentry demo`` and the labelled backtest start is not): the revision changes
nothing on a server without it. A ``pg_dump`` of a database upgraded here names lz4 for these
columns, so its restore into a server without lz4 reports those statements as errors (the data
itself restores; ``pg_dump --no-toast-compression`` leaves them out).

The code that came with this revision also writes the performance statistics in storage format
2 (``monitor/performance/_summary_bytes.py``), which the code before it cannot read. Rows move
to it as batches rewrite them, so the upgrade changes none; the downgrade writes every format-2
row back in format 1, so that a rollback to the release before (head 0019) reads its statistics.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

COLUMNS = ("label_delay_hours", "metrics", "subgroups", "estimate")


def lz4_available(bind: sa.Connection) -> bool:
    """Whether the server can compress with lz4 (one of ``default_toast_compression``'s values)."""
    found = bind.execute(
        sa.text(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
    ).scalar()
    return bool(found)


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if not lz4_available(bind):
        return
    for column in COLUMNS:
        op.execute(
            f'ALTER TABLE performance_snapshots ALTER COLUMN "{column}" SET COMPRESSION {method}'
        )


def upgrade() -> None:
    _set_compression("lz4")


BUCKET_KEY = (
    "site_id",
    "model_name",
    "model_version",
    "finding",
    "subgroup_field",
    "subgroup_value",
    "bucket",
    "threshold",
)


def _statistics_in_format_1(bind: sa.Connection, batch: int = 1000) -> None:
    """Every ``performance_buckets`` summary in format 2 rewritten in format 1 (zlib), read
    through a server-side cursor and written back ``batch`` rows at a time."""
    # Imported here: only a downgrade past this revision needs the code.
    from monitor.performance._summary_bytes import TAG, as_format_1

    buckets = sa.table(
        "performance_buckets",
        *(sa.column(name) for name in BUCKET_KEY),
        sa.column("summary", sa.LargeBinary),
    )
    found = bind.execute(
        sa.select(buckets)
        .where(sa.func.get_byte(buckets.c.summary, 0) == TAG)
        .execution_options(stream_results=True, max_row_buffer=batch)
    )
    statement = (
        sa.update(buckets)
        .where(*(buckets.c[name] == sa.bindparam(f"key_{name}") for name in BUCKET_KEY))
        .values(summary=sa.bindparam("rewritten"))
    )
    while rows := found.fetchmany(batch):
        bind.execute(
            statement,
            [
                {"rewritten": as_format_1(row.summary)}
                | {f"key_{name}": row._mapping[name] for name in BUCKET_KEY}
                for row in rows
            ],
        )


def downgrade() -> None:
    _statistics_in_format_1(op.get_bind())
    _set_compression("default")
