"""PCCP candidates and their electronic signatures (approvals and rejections).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "candidates",
        sa.Column("candidate_id", sa.Uuid(), primary_key=True),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=True),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.Column("proposed_by", sa.String(128), nullable=False),
        sa.Column("triggered_by", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("plan_id", sa.String(64), nullable=True),
        sa.Column("plan_version", sa.String(64), nullable=True),
        sa.Column("plan_fingerprint", sa.String(64), nullable=True),
        sa.Column("approvals_required", sa.Integer(), nullable=True),
        sa.Column("champion_version", sa.String(32), nullable=True),
        sa.Column("report", JSON_DOCUMENT, nullable=True),
        sa.Column("previous_champion", sa.String(32), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("evaluated_at", TIMESTAMP, nullable=True),
        sa.Column("promoted_at", TIMESTAMP, nullable=True),
        sa.Column("promoted_by", sa.String(128), nullable=True),
        sa.Column("rolled_back_at", TIMESTAMP, nullable=True),
        sa.Column("rolled_back_by", sa.String(128), nullable=True),
    )
    op.create_index(
        "uq_candidates_version", "candidates", ["model_name", "model_version"], unique=True
    )
    op.create_index("ix_candidates_status", "candidates", ["status", "created_at"])
    op.create_table(
        "candidate_signatures",
        sa.Column("signature_id", sa.Uuid(), primary_key=True),
        sa.Column("candidate_id", sa.Uuid(), nullable=False),
        sa.Column("signer", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("meaning", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("signed_at", TIMESTAMP, nullable=False),
        sa.Column("change_log_seq", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "uq_candidate_signatures_signer",
        "candidate_signatures",
        ["candidate_id", "signer"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_candidate_signatures_signer", "candidate_signatures")
    op.drop_table("candidate_signatures")
    op.drop_index("ix_candidates_status", "candidates")
    op.drop_index("uq_candidates_version", "candidates")
    op.drop_table("candidates")
