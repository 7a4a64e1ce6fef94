"""The change log: append-only, hash-chained; PostgreSQL refuses UPDATE, DELETE and TRUNCATE.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)

REFUSE = """
CREATE FUNCTION radsentry_change_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'change_log is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "change_log",
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("plan_version", sa.String(64), nullable=True),
        sa.Column("details", JSON_DOCUMENT, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_change_log_action", "change_log", ["action", "recorded_at"])
    op.execute(REFUSE)
    op.execute(
        "CREATE TRIGGER change_log_no_update_delete BEFORE UPDATE OR DELETE ON change_log "
        "FOR EACH ROW EXECUTE FUNCTION radsentry_change_log_append_only()"
    )
    op.execute(
        "CREATE TRIGGER change_log_no_truncate BEFORE TRUNCATE ON change_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION radsentry_change_log_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER change_log_no_truncate ON change_log")
    op.execute("DROP TRIGGER change_log_no_update_delete ON change_log")
    op.execute("DROP FUNCTION radsentry_change_log_append_only()")
    op.drop_table("change_log")
