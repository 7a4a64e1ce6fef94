"""Performance from sufficient statistics: per-day buckets, prediction counts, matched labels.

* ``performance_buckets``: a ``PerformanceSummary`` and a label-delay sketch per (site, model,
  version, finding, subgroup field and value, threshold) and UTC day, plus a ``total`` bucket;
* ``prediction_counts``: predictions per (site, model, version) and UTC day, plus ``total``;
* ``labels_current.matched``: a prediction of the study has arrived. Expiry reads only the
  labels still waiting, through the partial index ``ix_labels_current_pending``; the
  performance CUSUM reads labels after its watermark through ``ix_labels_current_joined``.

The upgrade fills all three from the rows already stored, with the code that keeps them up to
date afterwards (``monitor/service/performance/summaries.py``'s ``rebuild``) and the default
subgroup fields. That import is deliberate, unlike the frozen SQL of other migrations: the rows
must be in the format the running code reads, and a second, frozen copy of the counting would
be a second thing to get right. The downgrade drops them.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

JSON_DOCUMENT = postgresql.JSONB()
TIMESTAMP = sa.DateTime(timezone=True)
PENDING = "NOT matched AND expired_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("labels_current") as batch:
        batch.add_column(
            sa.Column("matched", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(
        """
        UPDATE labels_current SET matched = EXISTS (
            SELECT 1 FROM inference_events AS e
            WHERE e.site_id = labels_current.site_id
              AND e.model_name = labels_current.model_name
              AND e.study_key = labels_current.study_key)
        """
    )
    op.create_index(
        "ix_labels_current_pending",
        "labels_current",
        ["labelled_at"],
        postgresql_where=sa.text(PENDING),
    )
    op.create_index(
        "ix_labels_current_joined",
        "labels_current",
        ["site_id", "model_name", "finding", "labelled_at"],
    )
    op.create_table(
        "performance_buckets",
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("finding", sa.String(64), nullable=False),
        sa.Column("subgroup_field", sa.String(64), nullable=False),
        sa.Column("subgroup_value", sa.String(128), nullable=False),
        sa.Column("bucket", sa.String(10), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("summary", sa.LargeBinary(), nullable=False),
        sa.Column("delays", JSON_DOCUMENT, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("first_at", TIMESTAMP, nullable=True),
        sa.Column("last_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(
            "site_id",
            "model_name",
            "model_version",
            "finding",
            "subgroup_field",
            "subgroup_value",
            "bucket",
            "threshold",
        ),
    )
    op.create_table(
        "prediction_counts",
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("bucket", sa.String(10), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "model_name", "model_version", "bucket"),
    )
    # Imported here, not at the top: only an upgrade that reaches this point needs the code.
    from monitor.service.performance.summaries import rebuild
    from monitor.service.settings import DEFAULT_SUBGROUP_FIELDS

    rebuild(op.get_bind(), DEFAULT_SUBGROUP_FIELDS, datetime.now(UTC))


def downgrade() -> None:
    op.drop_table("prediction_counts")
    op.drop_table("performance_buckets")
    op.drop_index("ix_labels_current_joined", table_name="labels_current")
    op.drop_index("ix_labels_current_pending", table_name="labels_current")
    with op.batch_alter_table("labels_current") as batch:
        batch.drop_column("matched")
