"""The Grafana alert views show each alert's severity and whether it waits for a decision.

``grafana.alerts`` and ``grafana.alert_features`` gain, after their existing columns:

* ``severity``: info, warning or critical (``alerts.severity``, migration 0015);
* ``needs_decision``: the episode asked for a person's decision and the alert is still open
  (not acknowledged or resolved) and drifting. The same rule as the API's
  ``AlertPublic.needs_decision`` (``monitor/service/drift/api.py``); a test keeps them equal;
* ``decision_reason``: what to decide, written by the drift engine when it asked
  ("sustained for 15 days: acknowledge and re-baseline if this is the new normal, or
  investigate"). Machine-written, like the explanation: no person types it.

``CREATE OR REPLACE VIEW`` may only append columns, which is what this does, so each view keeps
its owner and its grants; the grant to ``radsentry_grafana`` is stated again all the same.
Downgrading drops the new columns: the views are recreated as 0011 defined them and granted
again.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

SCHEMA = "grafana"
ROLE = "radsentry_grafana"

FEATURES = """(SELECT string_agg(feature, ',' ORDER BY position)
                FROM jsonb_array_elements_text(features) WITH ORDINALITY AS f(feature, position)
               ) AS features"""

# 0011's definitions, for the downgrade (migrations are frozen: copied, not imported).
ALERTS_0011 = f"""
        SELECT alert_id, site_id, model_name, model_version, detector, status, drift_active,
               occurred_at, since, ended_at, acknowledged_at, resolved_at,
               statistic, p_value, effect_size, effect_size_name,
               {FEATURES},
               explanation
        FROM alerts
"""
ALERT_FEATURES_0011 = """
        SELECT a.alert_id, a.site_id, a.model_name, a.detector, a.occurred_at, f.feature
        FROM alerts AS a
        CROSS JOIN LATERAL jsonb_array_elements_text(a.features) AS f(feature)
"""


def _needs_decision(alias: str) -> str:
    """The API's rule: asked, still open (not acknowledged or resolved), still drifting."""
    return (
        f"({alias}decision_asked_at IS NOT NULL AND {alias}status = 'open' "
        f"AND {alias}drift_active) AS needs_decision"
    )


VIEWS: dict[str, str] = {
    "alerts": f"""
        SELECT alert_id, site_id, model_name, model_version, detector, status, drift_active,
               occurred_at, since, ended_at, acknowledged_at, resolved_at,
               statistic, p_value, effect_size, effect_size_name,
               {FEATURES},
               explanation,
               severity, {_needs_decision("")}, decision_reason
        FROM alerts
    """,
    "alert_features": f"""
        SELECT a.alert_id, a.site_id, a.model_name, a.detector, a.occurred_at, f.feature,
               a.severity, {_needs_decision("a.")}, a.decision_reason
        FROM alerts AS a
        CROSS JOIN LATERAL jsonb_array_elements_text(a.features) AS f(feature)
    """,
}
VIEWS_0011: dict[str, str] = {"alerts": ALERTS_0011, "alert_features": ALERT_FEATURES_0011}


def upgrade() -> None:
    for name, query in VIEWS.items():
        op.execute(f"CREATE OR REPLACE VIEW {SCHEMA}.{name} AS {query}")
        op.execute(f"GRANT SELECT ON {SCHEMA}.{name} TO {ROLE}")


def downgrade() -> None:
    for name, query in VIEWS_0011.items():
        # Columns cannot be dropped from a view in place: drop it and create it again.
        op.execute(f"DROP VIEW {SCHEMA}.{name}")
        op.execute(f"CREATE VIEW {SCHEMA}.{name} AS {query}")
        op.execute(f"GRANT SELECT ON {SCHEMA}.{name} TO {ROLE}")
