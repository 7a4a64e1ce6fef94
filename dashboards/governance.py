"""Governance: the PCCP trail for quality and regulatory staff. What asked for retraining,
which candidates came out, how each fared at the gate per criterion, what waits for
signatures, what was promoted or rolled back, and whether the change log's chain holds."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as viz_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as viz
from grafana_foundation_sdk.models import dashboard as model

from dashboards.common import (
    POSTGRES,
    PROMETHEUS,
    SQL_MODEL,
    config_value,
    explainer,
    model_variable,
    new_dashboard,
    stat_panel,
    thresholds,
    with_panels,
)
from dashboards.sql import Sql

UID = "radsentry-governance"
TITLE = "RadSentry: governance"

EXPLANATION = """
**Change control under the PCCP** (docs/pccp.md). *Model* narrows every panel.

* **Audit chain**: *Verified* when the hash chain of the change log and its signed checkpoints
  checked out at the last verification (every 15 minutes). *BROKEN* or a stale check: stop
  promotions and call the security officer; the log is evidence.
* **Retrain requests -> candidates -> gate**: each request (from an alert or a person), the
  candidate version it produced, and the gate's verdict per acceptance criterion of the plan.
* **Pending approvals**: candidates that passed the gate and wait for signatures (four eyes), or
  are approved and wait for promotion.
* **Promotions and rollbacks**: which version became champion when, and which were undone.
"""

AUDIT_OK = "radsentry_audit_chain_ok"
AUDIT_AGE = "time() - radsentry_audit_chain_last_verified_timestamp_seconds"
CANDIDATES = 'sum by (status) (radsentry_candidates{model_name=~"$model"})'
# `or vector(0)`: a counter nobody incremented has no series yet; show 0, not "No data".
PROMOTIONS = (
    'sum(increase(radsentry_promotions_total{model_name=~"$model"}[$__range])) or vector(0)'
)
ROLLBACKS = 'sum(increase(radsentry_rollbacks_total{model_name=~"$model"}[$__range])) or vector(0)'
RETRAIN_OUTCOMES = "sum by (outcome) (increase(radsentry_retrain_jobs_total[$__range]))"

RETRAIN_REQUESTS = f"""
SELECT created_at, model_name, site_id, trigger, status, attempts, model_version,
       started_at, finished_at
FROM grafana.retrain_requests
WHERE {SQL_MODEL} AND $__timeFilter(created_at)
ORDER BY created_at DESC
LIMIT 100
"""

CANDIDATE_LIST = f"""
SELECT created_at, model_name, model_version, site_id, status, plan_id, plan_version,
       champion_version, approvals, approvals_required, evaluated_at, promoted_at, rolled_back_at
FROM grafana.candidates
WHERE {SQL_MODEL} AND $__timeFilter(created_at)
ORDER BY created_at DESC
LIMIT 100
"""

GATE_CRITERIA = f"""
SELECT evaluated_at, model_name, model_version, criterion_id, kind,
       CASE WHEN passed THEN 'pass' ELSE 'fail' END AS result, detail
FROM grafana.gate_criteria
WHERE {SQL_MODEL} AND $__timeFilter(evaluated_at)
ORDER BY evaluated_at DESC, model_name, model_version, criterion_id
LIMIT 200
"""

PENDING_APPROVALS = f"""
SELECT model_name, model_version, site_id,
       CASE status WHEN 'passed' THEN 'signatures' ELSE 'promotion' END AS waiting_for,
       approvals, approvals_required, evaluated_at,
       extract(epoch FROM now() - evaluated_at) / 3600 AS hours_waiting
FROM grafana.candidates
WHERE {SQL_MODEL} AND status IN ('passed', 'approved')
ORDER BY evaluated_at
"""

PROMOTIONS_AND_ROLLBACKS = f"""
SELECT promoted_at AS "time", model_name, model_version, 'promoted' AS event,
       champion_version AS replaced_version
FROM grafana.candidates
WHERE {SQL_MODEL} AND $__timeFilter(promoted_at)
UNION ALL
SELECT rolled_back_at, model_name, model_version, 'rolled back', previous_champion
FROM grafana.candidates
WHERE {SQL_MODEL} AND $__timeFilter(rolled_back_at)
ORDER BY 1 DESC
"""

AUDIT_ACTIVITY = """
SELECT day::timestamptz AS "time", action, entries
FROM grafana.audit_summary
WHERE $__timeFilter(day::timestamptz)
ORDER BY 1, 2
"""

CHECKPOINTS = """
SELECT seq, signed_at, key_id
FROM grafana.audit_checkpoints
ORDER BY seq DESC
LIMIT 10
"""


def _stat(title: str, expr: str, span: int, legend: str = "") -> stat.Panel:
    query = prom.Dataquery().expr(expr).instant().ref_id("A")
    if legend:
        query.legend_format(legend)
    return stat_panel().title(title).datasource(PROMETHEUS).with_target(query).span(span).height(5)


def _audit_panels() -> list[stat.Panel]:
    chain = (
        _stat("Audit chain", AUDIT_OK, 4)
        .mappings(
            [
                model.ValueMap(
                    options={
                        "1": model.ValueMappingResult(text="Verified", color="green", index=0),
                        "0": model.ValueMappingResult(text="BROKEN", color="red", index=1),
                    }
                )
            ]
        )
        .color_mode(viz.BigValueColorMode.BACKGROUND)
    )
    age = (
        _stat("Last verified", AUDIT_AGE, 4)
        .description("Verification runs every 15 minutes; older than an hour: the job stopped.")
        .unit("s")
        .thresholds(thresholds((None, "green"), (1800, "orange"), (3600, "red")))
        .color_mode(viz.BigValueColorMode.BACKGROUND)
    )
    candidates = _stat("Candidates by status", CANDIDATES, 8, legend="{{status}}").text_mode(
        viz.BigValueTextMode.VALUE_AND_NAME
    )
    promotions = _stat("Promotions in range", PROMOTIONS, 2).decimals(0)
    rollbacks = (
        _stat("Rollbacks in range", ROLLBACKS, 2)
        .decimals(0)
        .thresholds(thresholds((None, "green"), (1, "orange")))
        .color_mode(viz.BigValueColorMode.BACKGROUND)
    )
    jobs = (
        _stat("Retraining jobs in range", RETRAIN_OUTCOMES, 4, legend="{{outcome}}")
        .decimals(0)
        .text_mode(viz.BigValueTextMode.VALUE_AND_NAME)
    )
    return [chain, age, candidates, promotions, rollbacks, jobs]


def _sql_table(title: str, sql: str, span: int, description: str) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(POSTGRES)
        .with_target(Sql(sql).ref_id("A"))
        .filterable(True)
        .span(span)
        .height(9)
    )


def _trail_panels() -> list[table.Panel | timeseries.Panel]:
    gate = _sql_table(
        "Gate results per criterion",
        GATE_CRITERIA,
        24,
        "Every acceptance criterion of the plan, per candidate; detail holds the estimate and "
        "the bound it was compared with.",
    ).override_by_name(
        "result",
        [
            config_value("custom.cellOptions", {"type": "color-text"}),
            config_value(
                "mappings",
                [
                    model.ValueMap(
                        options={
                            "pass": model.ValueMappingResult(color="green", index=0),
                            "fail": model.ValueMappingResult(color="red", index=1),
                        }
                    )
                ],
            ),
        ],
    )
    activity = (
        timeseries.Panel()
        .title("Change-log entries per day")
        .datasource(POSTGRES)
        .with_target(Sql(AUDIT_ACTIVITY).time_series().ref_id("A"))
        .draw_style(viz.GraphDrawStyle.BARS)
        .stacking(viz_builders.StackingConfig().mode(viz.StackingMode.NORMAL))
        .span(16)
        .height(8)
    )
    return [
        _sql_table(
            "Retrain requests",
            RETRAIN_REQUESTS,
            12,
            "Requests created in the time range: trigger alert or manual, job status.",
        ),
        _sql_table(
            "Candidates",
            CANDIDATE_LIST,
            12,
            "Registered versions under change control created in the time range.",
        ),
        gate,
        _sql_table(
            "Pending approvals",
            PENDING_APPROVALS,
            12,
            "Passed the gate and waiting for signatures, or approved and waiting for "
            "promotion; oldest first.",
        ),
        _sql_table(
            "Promotions and rollbacks",
            PROMOTIONS_AND_ROLLBACKS,
            12,
            "Champion changes in the time range.",
        ),
        activity,
        _sql_table(
            "Signed checkpoints",
            CHECKPOINTS,
            8,
            "The latest Ed25519 checkpoints of the change log's head.",
        ),
    ]


def build() -> builders.Dashboard:
    return with_panels(
        new_dashboard(
            UID, TITLE, "Retraining, gate, approvals, promotions and the audit chain."
        ).with_variable(model_variable()),
        explainer(EXPLANATION, height=7),
        *_audit_panels(),
        *_trail_panels(),
    )
