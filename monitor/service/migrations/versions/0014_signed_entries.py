"""Change-log entries signed with the audit key, and where unsigned history ends.

Each entry from now on carries the Ed25519 signature of its ``entry_hash`` and the id of the key
that made it (``audit/keys.py``), so a row inserted with database credentials alone, even with
a correct chain hash, fails ``radsentry audit verify``, which names it.

Entries written before this revision stay as they are: nothing is re-signed. The table
``change_log_unsigned`` records, once, how many entries the log held at the upgrade; verification
reports those as "unsigned, before <seq>" (the first signed checkpoint covers them) and any
other unsigned entry as a forgery. The services' runtime role may only read it
(``monitor/service/roles.py``), so it cannot widen the unsigned history.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("change_log", sa.Column("key_id", sa.String(64), nullable=True))
    op.add_column("change_log", sa.Column("signature", sa.String(128), nullable=True))
    op.create_table(
        "change_log_unsigned",
        sa.Column(
            "through_seq",
            sa.BigInteger(),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO change_log_unsigned (through_seq, recorded_at) "
        "SELECT COALESCE(MAX(seq), 0), CURRENT_TIMESTAMP FROM change_log"
    )


def downgrade() -> None:
    op.drop_table("change_log_unsigned")
    op.drop_column("change_log", "signature")
    op.drop_column("change_log", "key_id")
