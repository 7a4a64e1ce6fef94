"""PHI-free views for Grafana in schema ``grafana``, readable by the role ``radsentry_grafana``.

The views hold aggregates and machine-written values only: no study key, event id, DICOM
locator, payload hash, signature, or reason or note typed by a person (docs/dashboards.md).
A view runs with its owner's rights (``security_invoker`` is off by default), so the role reads
the views with SELECT on them alone and is given nothing on the base tables. The role is
created NOLOGIN; the deployment grants LOGIN and a password. Roles are cluster-wide: it may
exist already (another database of the cluster), which is fine. Creating it needs CREATEROLE;
without it, a DBA creates the role first (``CREATE ROLE radsentry_grafana NOLOGIN``).

Column names and order are also in ``monitor.service.grafana.views`` (not imported here:
migrations are frozen); a test keeps the two equal.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SCHEMA = "grafana"
ROLE = "radsentry_grafana"

# Base tables are named without a schema: they resolve through the migrating session's
# search_path, as every other migration's tables do.
METADATA_FIELDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "Modality",
    "ViewPosition",
    "PhotometricInterpretation",
    "PatientSex",
    "PatientAgeBand",
    "BodyPartExamined",
    "ConvolutionKernel",
)
LATEST_SNAPSHOTS = """
    SELECT DISTINCT ON (site_id, model_name, model_version, finding, "window") *
    FROM performance_snapshots
    ORDER BY site_id, model_name, model_version, finding, "window", computed_at DESC, id DESC
"""


def _number(document: str, *path: str) -> str:
    return f"({document} #>> '{{{','.join(path)}}}')::double precision"


def _count(document: str, *path: str) -> str:
    return f"({document} #>> '{{{','.join(path)}}}')::integer"


def _interval(name: str) -> str:
    return ", ".join(
        f"{_number('s.metrics', name, part)} AS {name}{suffix}"
        for part, suffix in (("estimate", ""), ("lower", "_lower"), ("upper", "_upper"))
    )


VIEWS: dict[str, str] = {
    # Day of the window's end (event time), so replayed history lands on the day it happened.
    "site_drift_daily": """
        SELECT (window_end AT TIME ZONE 'UTC')::date AS day,
               site_id, model_name, model_version, detector,
               count(*) FILTER (WHERE skipped IS NULL) AS checks,
               count(*) FILTER (WHERE is_drift) AS drift_checks,
               count(*) FILTER (WHERE skipped IS NOT NULL) AS skipped_checks,
               max(statistic) AS max_statistic,
               min(p_value) AS min_p_value,
               avg(effect_size) AS mean_effect_size
        FROM drift_checks
        GROUP BY 1, site_id, model_name, model_version, detector
    """,
    "drift_checks": """
        SELECT checked_at, window_end, site_id, model_name, model_version, detector,
               statistic, p_value, threshold, effect_size, is_drift
        FROM drift_checks
        WHERE skipped IS NULL
    """,
    "alerts": """
        SELECT alert_id, site_id, model_name, model_version, detector, status, drift_active,
               occurred_at, since, ended_at, acknowledged_at, resolved_at,
               statistic, p_value, effect_size, effect_size_name,
               (SELECT string_agg(feature, ',' ORDER BY position)
                FROM jsonb_array_elements_text(features) WITH ORDINALITY AS f(feature, position)
               ) AS features,
               explanation
        FROM alerts
    """,
    "alert_features": """
        SELECT a.alert_id, a.site_id, a.model_name, a.detector, a.occurred_at, f.feature
        FROM alerts AS a
        CROSS JOIN LATERAL jsonb_array_elements_text(a.features) AS f(feature)
    """,
    "pixel_stats_daily": """
        SELECT (e.occurred_at AT TIME ZONE 'UTC')::date AS day, e.site_id, e.model_name,
               s.stat, count(*) AS events,
               avg(s.raw::double precision) AS mean,
               percentile_cont(0.05) WITHIN GROUP (ORDER BY s.raw::double precision) AS p05,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY s.raw::double precision) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY s.raw::double precision) AS p95
        FROM inference_events AS e
        CROSS JOIN LATERAL jsonb_each(e.pixel_stats) AS s(stat, raw)
        WHERE jsonb_typeof(s.raw) = 'number'
        GROUP BY 1, e.site_id, e.model_name, s.stat
    """,
    # Multi-valued DICOM attributes are joined with a backslash, as DICOM writes them.
    "metadata_daily": f"""
        SELECT (e.occurred_at AT TIME ZONE 'UTC')::date AS day, e.site_id, e.model_name,
               m.field,
               CASE jsonb_typeof(m.raw)
                   WHEN 'array' THEN (
                       SELECT string_agg(item, E'\\\\' ORDER BY position)
                       FROM jsonb_array_elements_text(m.raw) WITH ORDINALITY AS i(item, position))
                   ELSE m.raw #>> '{{}}'
               END AS value,
               count(*) AS events
        FROM inference_events AS e
        CROSS JOIN LATERAL jsonb_each(e.metadata) AS m(field, raw)
        WHERE m.field IN ({", ".join(f"'{name}'" for name in METADATA_FIELDS)})
          AND jsonb_typeof(m.raw) <> 'null'
        GROUP BY 1, e.site_id, e.model_name, m.field, 5
    """,
    "performance_windows": f"""
        SELECT s.computed_at, s.site_id, s.model_name, s.model_version, s.finding, s."window",
               s.predicted, s.labelled,
               s.labelled::double precision / NULLIF(s.predicted, 0) AS label_completeness,
               {_number("s.label_delay_hours", "p50")} AS label_delay_p50_hours,
               {_number("s.label_delay_hours", "p90")} AS label_delay_p90_hours,
               {_count("s.metrics", "counts", "n")} AS cases,
               {_count("s.metrics", "counts", "positives")} AS positives,
               {_interval("auroc")}, {_interval("sensitivity")}, {_interval("specificity")},
               {_number("s.metrics", "ece")} AS ece,
               {_number("s.estimate", "auroc")} AS auroc_estimated,
               {_number("s.estimate", "sensitivity")} AS sensitivity_estimated,
               {_number("s.estimate", "specificity")} AS specificity_estimated
        FROM performance_snapshots AS s
    """,
    "reliability_bins": f"""
        SELECT s.computed_at, s.site_id, s.model_name, s.model_version, s.finding, s."window",
               {_number("b.bin", "lower")} AS bin_lower,
               {_number("b.bin", "upper")} AS bin_upper,
               {_count("b.bin", "count")} AS cases,
               {_number("b.bin", "mean_score")} AS mean_score,
               {_number("b.bin", "observed_rate")} AS observed_rate
        FROM ({LATEST_SNAPSHOTS}) AS s
        CROSS JOIN LATERAL jsonb_array_elements(s.metrics -> 'reliability') AS b(bin)
    """,
    "subgroup_performance": f"""
        SELECT s.computed_at, s.site_id, s.model_name, s.model_version, s.finding, s."window",
               g.grp ->> 'field' AS field, g.grp ->> 'value' AS value,
               {_count("g.grp", "n")} AS cases,
               {_count("g.grp", "metrics", "counts", "positives")} AS positives,
               {_number("g.grp", "metrics", "auroc", "estimate")} AS auroc,
               {_number("g.grp", "metrics", "sensitivity", "estimate")} AS sensitivity,
               {_number("g.grp", "metrics", "specificity", "estimate")} AS specificity
        FROM ({LATEST_SNAPSHOTS}) AS s
        CROSS JOIN LATERAL jsonb_array_elements(s.subgroups) AS g(grp)
    """,
    "retrain_requests": """
        SELECT request_id, model_name, site_id, trigger, status, created_at, started_at,
               finished_at, model_version, attempts
        FROM retrain_requests
    """,
    "candidates": """
        SELECT c.candidate_id, c.model_name, c.model_version, c.site_id, c.status, c.plan_id,
               c.plan_version, c.champion_version, c.previous_champion,
               (SELECT count(*) FROM candidate_signatures AS s
                WHERE s.candidate_id = c.candidate_id AND s.decision = 'approve') AS approvals,
               c.approvals_required, c.created_at, c.evaluated_at, c.promoted_at,
               c.rolled_back_at
        FROM candidates AS c
    """,
    # The gate writes ``detail`` from the numbers it used: machine-written, aggregates only.
    "gate_criteria": """
        SELECT c.candidate_id, c.model_name, c.model_version, c.site_id,
               r.criterion ->> 'id' AS criterion_id, r.criterion ->> 'kind' AS kind,
               (r.criterion ->> 'passed')::boolean AS passed, r.criterion ->> 'detail' AS detail,
               c.evaluated_at
        FROM candidates AS c
        CROSS JOIN LATERAL jsonb_array_elements(c.report -> 'criteria') AS r(criterion)
        WHERE jsonb_typeof(c.report -> 'criteria') = 'array'
    """,
    "audit_summary": """
        SELECT (recorded_at AT TIME ZONE 'UTC')::date AS day, action,
               count(*) AS entries, count(DISTINCT actor) AS actors
        FROM change_log
        GROUP BY 1, action
    """,
    "audit_checkpoints": """
        SELECT seq, signed_at, key_id FROM change_log_checkpoints
    """,
}

CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        CREATE ROLE {ROLE} NOLOGIN;
    END IF;
EXCEPTION
    -- Another database's migration created it meanwhile.
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'cannot create role {ROLE}: %', SQLERRM
            USING HINT = 'a DBA creates it once per cluster: CREATE ROLE {ROLE} NOLOGIN';
END
$$
"""

# Nothing grants the role anything on the base tables; revoking states it, in whichever schema
# they are (current_schema(), normally public).
REVOKE_BASE_TABLES = f"""
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {ROLE}', current_schema());
END
$$
"""


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    for name, query in VIEWS.items():
        op.execute(f"CREATE OR REPLACE VIEW {SCHEMA}.{name} AS {query}")
    op.execute(CREATE_ROLE)
    op.execute(REVOKE_BASE_TABLES)
    op.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {ROLE}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {ROLE}")


def downgrade() -> None:
    """Drops the views and the schema (their grants go with them). The role stays: it is
    cluster-wide and other databases may use it; once no database grants it anything, a DBA
    drops it with ``DROP ROLE radsentry_grafana``."""
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {SCHEMA}.{name}")
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}")
