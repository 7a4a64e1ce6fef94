"""Drift tables: stream states, checks, alerts, reference changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger()


def _stream_columns() -> list[sa.Column[str]]:
    return [
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "drift_streams",
        *_stream_columns(),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("reference_state", sa.LargeBinary(), nullable=False),
        sa.Column("state_version", sa.BigInteger(), nullable=False),
        sa.Column("reference", JSON_DOCUMENT, nullable=False),
        sa.Column("events_seen", sa.BigInteger(), nullable=False),
        sa.Column("last_source", sa.String(300), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("site_id", "model_name", "model_version"),
    )
    op.create_table(
        "drift_checks",
        sa.Column("id", ROW_ID, primary_key=True),
        *_stream_columns(),
        sa.Column("detector", sa.String(32), nullable=False),
        sa.Column("window_start", TIMESTAMP, nullable=False),
        sa.Column("window_end", TIMESTAMP, nullable=False),
        sa.Column("n_window", sa.Integer(), nullable=False),
        sa.Column("is_drift", sa.Boolean(), nullable=True),
        sa.Column("statistic", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("effect_size", sa.Float(), nullable=True),
        sa.Column("effect_size_name", sa.String(64), nullable=True),
        sa.Column("attributions", JSON_DOCUMENT, nullable=False),
        sa.Column("skipped", sa.Text(), nullable=True),
        sa.Column("config_fingerprint", sa.String(64), nullable=True),
        sa.Column("reference_id", sa.Uuid(), nullable=False),
        sa.Column("checked_at", TIMESTAMP, nullable=False),
    )
    op.create_index(
        "ix_drift_checks_stream",
        "drift_checks",
        ["site_id", "model_name", "detector", "window_end"],
    )
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.Uuid(), primary_key=True),
        *_stream_columns(),
        sa.Column("detector", sa.String(32), nullable=False),
        sa.Column("features", JSON_DOCUMENT, nullable=False),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("since", TIMESTAMP, nullable=False),
        sa.Column("window_start", TIMESTAMP, nullable=False),
        sa.Column("window_end", TIMESTAMP, nullable=False),
        sa.Column("statistic", sa.Float(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("effect_size", sa.Float(), nullable=False),
        sa.Column("effect_size_name", sa.String(64), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("config_fingerprint", sa.String(64), nullable=False),
        sa.Column("reference_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("drift_active", sa.Boolean(), nullable=False),
        sa.Column("drifting_checks", sa.Integer(), nullable=False),
        sa.Column("last_drift_at", TIMESTAMP, nullable=False),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.Column("ended_reason", sa.Text(), nullable=True),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
        sa.Column("acknowledged_at", TIMESTAMP, nullable=True),
        sa.Column("resolved_by", sa.String(128), nullable=True),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
    )
    op.create_index("ix_alerts_site_status", "alerts", ["site_id", "status", "occurred_at"])
    op.create_index("ix_alerts_unpublished", "alerts", ["published_at"])
    op.create_table(
        "reference_changes",
        sa.Column("id", ROW_ID, primary_key=True),
        *_stream_columns(),
        sa.Column("reference_id", sa.Uuid(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_reference_changes_stream", "reference_changes", ["site_id", "model_name"])


def downgrade() -> None:
    op.drop_table("reference_changes")
    op.drop_table("alerts")
    op.drop_table("drift_checks")
    op.drop_table("drift_streams")
