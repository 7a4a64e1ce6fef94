"""The PostgreSQL views Grafana reads (migrations 0011 and 0016, docs/dashboards.md): names and
columns.

The migrations define the views and do not import this (migrations are frozen); a test keeps
them, and docs/dashboards.md, equal. Dashboards code checks its SQL panels against it. A new
view takes a new migration (CREATE VIEW, then GRANT SELECT to the role), a line here and one in
the docs.
"""

from __future__ import annotations

from typing import Final

GRAFANA_SCHEMA: Final = "grafana"
GRAFANA_ROLE: Final = "radsentry_grafana"
"""Reads the views and nothing else; NOLOGIN until the deployment grants LOGIN and a password."""

_DECISION = ("severity", "needs_decision", "decision_reason")
"""Added by migration 0016: ``needs_decision`` is the API's rule (asked, open, still drifting)."""
_LATEST = ("computed_at", "site_id", "model_name", "model_version", "finding", "window")

GRAFANA_VIEWS: Final[dict[str, tuple[str, ...]]] = {
    "site_drift_daily": (
        "day",
        "site_id",
        "model_name",
        "model_version",
        "detector",
        "checks",
        "drift_checks",
        "skipped_checks",
        "max_statistic",
        "min_p_value",
        "mean_effect_size",
    ),
    "drift_checks": (
        "checked_at",
        "window_end",
        "site_id",
        "model_name",
        "model_version",
        "detector",
        "statistic",
        "p_value",
        "threshold",
        "effect_size",
        "is_drift",
    ),
    "alerts": (
        "alert_id",
        "site_id",
        "model_name",
        "model_version",
        "detector",
        "status",
        "drift_active",
        "occurred_at",
        "since",
        "ended_at",
        "acknowledged_at",
        "resolved_at",
        "statistic",
        "p_value",
        "effect_size",
        "effect_size_name",
        "features",
        "explanation",
        *_DECISION,
    ),
    "alert_features": (
        "alert_id",
        "site_id",
        "model_name",
        "detector",
        "occurred_at",
        "feature",
        *_DECISION,
    ),
    "pixel_stats_daily": (
        "day",
        "site_id",
        "model_name",
        "stat",
        "events",
        "mean",
        "p05",
        "p50",
        "p95",
    ),
    "metadata_daily": ("day", "site_id", "model_name", "field", "value", "events"),
    "performance_windows": (
        *_LATEST,
        "predicted",
        "labelled",
        "label_completeness",
        "label_delay_p50_hours",
        "label_delay_p90_hours",
        "cases",
        "positives",
        "auroc",
        "auroc_lower",
        "auroc_upper",
        "sensitivity",
        "sensitivity_lower",
        "sensitivity_upper",
        "specificity",
        "specificity_lower",
        "specificity_upper",
        "ece",
        "auroc_estimated",
        "sensitivity_estimated",
        "specificity_estimated",
    ),
    "reliability_bins": (
        *_LATEST,
        "bin_lower",
        "bin_upper",
        "cases",
        "mean_score",
        "observed_rate",
    ),
    "subgroup_performance": (
        *_LATEST,
        "field",
        "value",
        "cases",
        "positives",
        "auroc",
        "sensitivity",
        "specificity",
    ),
    "retrain_requests": (
        "request_id",
        "model_name",
        "site_id",
        "trigger",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "model_version",
        "attempts",
    ),
    "candidates": (
        "candidate_id",
        "model_name",
        "model_version",
        "site_id",
        "status",
        "plan_id",
        "plan_version",
        "champion_version",
        "previous_champion",
        "approvals",
        "approvals_required",
        "created_at",
        "evaluated_at",
        "promoted_at",
        "rolled_back_at",
    ),
    "gate_criteria": (
        "candidate_id",
        "model_name",
        "model_version",
        "site_id",
        "criterion_id",
        "kind",
        "passed",
        "detail",
        "evaluated_at",
    ),
    "audit_summary": ("day", "action", "entries", "actors"),
    "audit_checkpoints": ("seq", "signed_at", "key_id"),
}
"""View name (in schema ``grafana``) -> its columns, in order."""
