"""The signer's printed name on each electronic signature (21 CFR 11.50 (a)(1)).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: signatures made before this revision carry no printed name, and stay as signed.
    op.add_column("candidate_signatures", sa.Column("signer_name", sa.String(256), nullable=True))


def downgrade() -> None:
    op.drop_column("candidate_signatures", "signer_name")
