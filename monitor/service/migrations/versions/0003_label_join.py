"""Label join: the label in force per study and finding, and the corrections.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
ROW_ID = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "labels_current",
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("study_key", sa.String(64), nullable=False),
        sa.Column("finding", sa.String(64), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("label_event_id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("labelled_at", TIMESTAMP, nullable=False),
        sa.Column("first_labelled_at", TIMESTAMP, nullable=False),
        sa.Column("revisions", sa.Integer(), nullable=False),
        sa.Column("expired_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("site_id", "model_name", "study_key", "finding"),
    )
    op.create_index(
        "ix_labels_current_expiry", "labels_current", ["site_id", "expired_at", "labelled_at"]
    )
    op.create_table(
        "label_changes",
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("study_key", sa.String(64), nullable=False),
        sa.Column("finding", sa.String(64), nullable=False),
        sa.Column("old_label", sa.Integer(), nullable=False),
        sa.Column("new_label", sa.Integer(), nullable=False),
        sa.Column("old_event_id", sa.Uuid(), nullable=False),
        sa.Column("new_event_id", sa.Uuid(), nullable=False),
        sa.Column("changed_at", TIMESTAMP, nullable=False),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
    )
    op.create_index(
        "ix_label_changes_study", "label_changes", ["site_id", "model_name", "study_key"]
    )


def downgrade() -> None:
    op.drop_table("label_changes")
    op.drop_table("labels_current")
