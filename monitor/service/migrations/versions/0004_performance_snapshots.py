"""Performance snapshots: metrics per site, model version, finding and window.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "performance_snapshots",
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("finding", sa.String(64), nullable=False),
        sa.Column("window", sa.String(16), nullable=False),
        sa.Column("computed_at", TIMESTAMP, nullable=False),
        sa.Column("predicted", sa.Integer(), nullable=False),
        sa.Column("labelled", sa.Integer(), nullable=False),
        sa.Column("expired_labels", sa.Integer(), nullable=False),
        sa.Column("label_delay_hours", JSON_DOCUMENT, nullable=True),
        sa.Column("metrics", JSON_DOCUMENT, nullable=False),
        sa.Column("subgroups", JSON_DOCUMENT, nullable=False),
        sa.Column("estimate", JSON_DOCUMENT, nullable=True),
        sa.Column("config_fingerprint", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_performance_snapshots_stream",
        "performance_snapshots",
        ["site_id", "model_name", "finding", "computed_at"],
    )


def downgrade() -> None:
    op.drop_table("performance_snapshots")
