"""Retrain requests record the job that serves them: attempts, progress, lineage, outcome.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("retrain_requests") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("started_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("finished_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("progress", JSON_DOCUMENT, nullable=True))
        batch.add_column(sa.Column("manifest_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("mlflow_run_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("model_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
    op.create_index("ix_retrain_requests_status", "retrain_requests", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_retrain_requests_status", "retrain_requests")
    with op.batch_alter_table("retrain_requests") as batch:
        for column in (
            "error",
            "model_version",
            "mlflow_run_id",
            "manifest_sha256",
            "progress",
            "finished_at",
            "started_at",
            "attempts",
        ):
            batch.drop_column(column)
