"""The change log's signed checkpoints become append-only, like the change log itself.

Without this, anyone holding the services' database credentials could delete the checkpoints
and leave a rewritten-and-rehashed log with nothing signed to contradict it: triggers refuse
UPDATE, DELETE and TRUNCATE.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

REFUSE = """
CREATE FUNCTION radsentry_checkpoints_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'change_log_checkpoints is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.execute(REFUSE)
    op.execute(
        "CREATE TRIGGER change_log_checkpoints_no_update_delete BEFORE UPDATE OR DELETE "
        "ON change_log_checkpoints "
        "FOR EACH ROW EXECUTE FUNCTION radsentry_checkpoints_append_only()"
    )
    op.execute(
        "CREATE TRIGGER change_log_checkpoints_no_truncate BEFORE TRUNCATE "
        "ON change_log_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION radsentry_checkpoints_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER change_log_checkpoints_no_truncate ON change_log_checkpoints")
    op.execute("DROP TRIGGER change_log_checkpoints_no_update_delete ON change_log_checkpoints")
    op.execute("DROP FUNCTION radsentry_checkpoints_append_only()")
