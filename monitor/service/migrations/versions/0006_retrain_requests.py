"""Retrain requests: from alerts (unique per model and alert) or from people.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "retrain_requests",
        sa.Column("request_id", sa.Uuid(), primary_key=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("alert_id", sa.Uuid(), nullable=True),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("policy_fingerprint", sa.String(64), nullable=True),
        sa.Column("details", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_index(
        "uq_retrain_requests_alert", "retrain_requests", ["model_name", "alert_id"], unique=True
    )
    op.create_index("ix_retrain_requests_model", "retrain_requests", ["model_name", "created_at"])


def downgrade() -> None:
    op.drop_table("retrain_requests")
