"""Two indexes on ``performance_buckets`` that keep a performance refresh's reads off the
stream's history (issue 21: refresh cost flat as history grows). The refresh reads each
stream's rows of a few buckets (``total`` and the rolling window's days) across all its
subgroups, and every stream's all-cases ``total`` row; the primary key puts the subgroup before
the bucket, so both reads scanned every day's rows (docs/benchmarks.md, "Refresh cost as
history grows").

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

STREAM = ["site_id", "model_name", "model_version", "finding"]
TOTALS = "bucket = 'total' AND subgroup_field = ''"


def upgrade() -> None:
    op.create_index(
        "ix_performance_buckets_stream_bucket", "performance_buckets", [*STREAM, "bucket"]
    )
    op.create_index(
        "ix_performance_buckets_totals",
        "performance_buckets",
        STREAM,
        postgresql_where=sa.text(TOTALS),
        sqlite_where=sa.text(TOTALS),
    )


def downgrade() -> None:
    op.drop_index("ix_performance_buckets_totals", table_name="performance_buckets")
    op.drop_index("ix_performance_buckets_stream_bucket", table_name="performance_buckets")
