"""Severity of alerts and drifting checks: info, warning or critical (``monitor.drift.severity``),
and when a sustained episode asked for a decision (``alerts.decision_asked_at``).

Alerts raised before this revision become ``warning``: each of them notified and could trigger
retraining, which is what ``warning`` means from now on. Checks written before it keep no
severity (NULL), as quiet and skipped checks do.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "alerts", sa.Column("severity", sa.String(16), nullable=False, server_default="warning")
    )
    op.add_column("drift_checks", sa.Column("severity", sa.String(16), nullable=True))
    op.add_column(
        "alerts", sa.Column("decision_asked_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("alerts", sa.Column("decision_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("alerts", "decision_reason")
    op.drop_column("alerts", "decision_asked_at")
    op.drop_column("drift_checks", "severity")
    op.drop_column("alerts", "severity")
