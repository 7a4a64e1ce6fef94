"""Ingestion tables: inbox, inference and label events, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Uuid(), primary_key=True),
        sa.Column("schema_id", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("processed_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "inference_events",
        sa.Column("event_id", sa.Uuid(), primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.Column("study_key", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("metadata", JSON_DOCUMENT, nullable=False),
        sa.Column("pixel_stats", JSON_DOCUMENT, nullable=True),
        sa.Column("scores", JSON_DOCUMENT, nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("dicom_uri", sa.String(512), nullable=True),
    )
    op.create_index("ix_inference_events_site_time", "inference_events", ["site_id", "occurred_at"])
    op.create_index(
        "ix_inference_events_study", "inference_events", ["site_id", "model_name", "study_key"]
    )
    op.create_table(
        "label_events",
        sa.Column("event_id", sa.Uuid(), primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("study_key", sa.String(64), nullable=False),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.Column("labels", JSON_DOCUMENT, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_label_events_site_time", "label_events", ["site_id", "occurred_at"])
    op.create_index("ix_label_events_study", "label_events", ["site_id", "model_name", "study_key"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("payload_bytes", sa.Integer(), nullable=False),
        sa.Column("dead_lettered_at", TIMESTAMP, nullable=False),
    )
    op.create_index(
        "uq_dead_letters_source", "dead_letters", ["topic", "partition", "offset"], unique=True
    )
    op.create_index("ix_dead_letters_code", "dead_letters", ["topic", "code"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("label_events")
    op.drop_table("inference_events")
    op.drop_table("processed_events")
