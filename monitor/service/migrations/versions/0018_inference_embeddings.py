"""Embeddings of inference-event/v2: ``inference_events.embedding`` (a JSON array of at most 32
finite numbers, the deployed model's projected penultimate features) and ``embedding_id`` (the
projection that produced it). Both NULL for v1 events and for v2 events without an embedding.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("inference_events", sa.Column("embedding", postgresql.JSONB(), nullable=True))
    op.add_column("inference_events", sa.Column("embedding_id", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("inference_events", "embedding_id")
    op.drop_column("inference_events", "embedding")
