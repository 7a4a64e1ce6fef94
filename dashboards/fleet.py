"""Fleet: every site and model on one page, for ML ops. Which (site, model) pairs are red now,
which were red over the time range, and what to look at first."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import statushistory, table, timeseries
from grafana_foundation_sdk.models import common as viz
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.common import (
    NOTIFYING,
    POSTGRES,
    PROMETHEUS,
    SQL_MODEL,
    SQL_SEVERITY_RANK,
    STATUS_MAPPINGS,
    config_value,
    explainer,
    finding_variable,
    model_variable,
    new_dashboard,
    severity_cell,
    status_expr,
    status_thresholds,
    thresholds,
    transformation,
    with_panels,
)
from dashboards.sql import Sql

UID = "radsentry-fleet"
TITLE = "RadSentry: fleet"

EXPLANATION = """
**All sites x models, worst first** (for ML ops; site managers use *Site overview*).

* **Status now**: one cell per site and model: green OK, amber watch (a detector's latest check
  found drift, or an alert is acknowledged), red alert (an open alert nobody acknowledged). Only
  warning and critical alerts count, here and in *open alerts*: info alerts do not notify, they
  are listed in *Open alerts by severity* but do not turn a cell red.
* **Status over time**: the same traffic light per site and model across the time range, to
  tell a one-off from a site that keeps drifting or a change that hit every site at once.
* **By severity**: status, open alerts, detectors drifting and the lowest realised sensitivity
  (rolling window, over the *Finding* selection) per site and model, worst first.
* **Open alerts by severity**: per site and model, the most serious open alert, how many are
  warning or critical (these notify) and how many info (they do not), and how many wait for a
  person's decision (drift lasting weeks: re-baseline or investigate).
* **Pipeline**: consumer lag, dead-lettered records and hours since each site's newest event;
  a silent site is not a healthy one.
"""

FLEET = 'model_name=~"$model"'
STATUS = status_expr(FLEET, "site_id, model_name")
UNACKNOWLEDGED = f'radsentry_alerts_open{{{FLEET}, status="open", {NOTIFYING}}}'
OPEN_ALERTS = f"sum by (site_id, model_name) ({UNACKNOWLEDGED})"
DRIFTING = f"sum by (site_id, model_name) (radsentry_drift_detected{{{FLEET}}})"
LOWEST_SENSITIVITY = (
    "min by (site_id, model_name) (radsentry_performance{"
    f'{FLEET}, finding=~"$finding", window="rolling", metric="sensitivity"}})'
)
CONSUMER_LAG = "sum by (topic) (radsentry_consumer_lag)"
DEAD_LETTERS = (
    "sum by (topic, reason) (increase(radsentry_events_dead_lettered_total[$__rate_interval]))"
)
SILENCE = "(time() - radsentry_site_last_event_timestamp_seconds) / 3600"
OPEN_BY_SEVERITY = f"""
SELECT site_id AS site, model_name AS model,
       (array_agg(severity ORDER BY {SQL_SEVERITY_RANK}))[1] AS highest,
       count(*) FILTER (WHERE severity <> 'info') AS "warning+",
       count(*) FILTER (WHERE severity = 'info') AS info,
       count(*) FILTER (WHERE needs_decision) AS "need a decision"
FROM grafana.alerts
WHERE {SQL_MODEL} AND status = 'open'
GROUP BY site_id, model_name
ORDER BY min({SQL_SEVERITY_RANK}), 6 DESC, 4 DESC, site, model
"""


def _instant_table(expr: str, ref_id: str) -> prom.Dataquery:
    return prom.Dataquery().expr(expr).instant().format(PromQueryFormat.TABLE).ref_id(ref_id)


def _matrix_panel() -> table.Panel:
    return (
        table.Panel()
        .title("Status now: sites x models")
        .description("Rows are sites, columns models; empty: the model does not run there.")
        .datasource(PROMETHEUS)
        .with_target(_instant_table(STATUS, "A"))
        .with_transformation(
            transformation(
                "groupingToMatrix",
                {
                    "columnField": "model_name",
                    "rowField": "site_id",
                    "valueField": "Value",
                },
            )
        )
        .mappings(STATUS_MAPPINGS)
        .thresholds(status_thresholds())
        .cell_options(viz.TableColoredBackgroundCellOptions())
        .span(10)
        .height(10)
    )


def _history_panel() -> statushistory.Panel:
    return (
        statushistory.Panel()
        .title("Status over time")
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery().expr(STATUS).ref_id("A").legend_format("{{site_id}} / {{model_name}}")
        )
        .mappings(STATUS_MAPPINGS)
        .thresholds(status_thresholds())
        .show_value(viz.VisibilityMode.NEVER)
        .span(14)
        .height(10)
    )


def _severity_panel() -> table.Panel:
    return (
        table.Panel()
        .title("Sites and models by severity")
        .description(
            "Worst first: status, then open alerts (warning and critical, unacknowledged), then "
            "detectors drifting. Info alerts count in neither status nor open alerts: see "
            "Open alerts by severity."
        )
        .datasource(PROMETHEUS)
        .with_target(_instant_table(STATUS, "A"))
        .with_target(_instant_table(OPEN_ALERTS, "B"))
        .with_target(_instant_table(DRIFTING, "C"))
        .with_target(_instant_table(LOWEST_SENSITIVITY, "D"))
        .with_transformation(transformation("merge", {}))
        .with_transformation(
            transformation(
                "organize",
                {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "site_id": "site",
                        "model_name": "model",
                        "Value #A": "status",
                        "Value #B": "open alerts",
                        "Value #C": "detectors drifting",
                        "Value #D": "lowest sensitivity",
                    },
                },
            )
        )
        .with_transformation(
            transformation(
                "sortBy",
                {
                    "sort": [
                        {"field": "status", "desc": True},
                        {"field": "open alerts", "desc": True},
                        {"field": "detectors drifting", "desc": True},
                    ],
                },
            )
        )
        .override_by_name(
            "status",
            [
                config_value("mappings", STATUS_MAPPINGS),
                config_value("custom.cellOptions", {"type": "color-background"}),
                config_value("thresholds", status_thresholds().build()),
            ],
        )
        .override_by_name("lowest sensitivity", [config_value("unit", "percentunit")])
        .filterable(True)
        .span(15)
        .height(10)
    )


def _alerts_by_severity_panel() -> table.Panel:
    return (
        table.Panel()
        .title("Open alerts by severity")
        .description(
            "Alerts nobody acknowledged yet, per site and model; most serious first. "
            "warning+: warning and critical, which notify; info: listed, not notified. "
            "need a decision: open for weeks and still drifting (re-baseline or investigate)."
        )
        .datasource(POSTGRES)
        .with_target(Sql(OPEN_BY_SEVERITY).ref_id("A"))
        .override_by_name("highest", severity_cell())
        .override_by_name(
            "need a decision",
            [
                config_value("custom.cellOptions", {"type": "color-text"}),
                config_value("thresholds", thresholds((None, "text"), (1, "purple")).build()),
            ],
        )
        .span(9)
        .height(10)
    )


def _pipeline_panels() -> list[timeseries.Panel]:
    lag = (
        timeseries.Panel()
        .title("Consumer lag (records)")
        .description("Records behind the end of each topic; growing lag: add consumers.")
        .datasource(PROMETHEUS)
        .with_target(prom.Dataquery().expr(CONSUMER_LAG).legend_format("{{topic}}").ref_id("A"))
        .span(8)
        .height(8)
    )
    dead = (
        timeseries.Panel()
        .title("Dead-lettered records")
        .description(
            "Records refused by the contract, per reason; a burst: a site's sender changed."
        )
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery().expr(DEAD_LETTERS).legend_format("{{topic}} {{reason}}").ref_id("A")
        )
        .span(8)
        .height(8)
    )
    silence = (
        timeseries.Panel()
        .title("Hours since each site's newest event")
        .datasource(PROMETHEUS)
        .with_target(prom.Dataquery().expr(SILENCE).legend_format("{{site_id}}").ref_id("A"))
        .unit("h")
        .thresholds(thresholds((None, "green"), (1, "orange"), (6, "red")))
        .span(8)
        .height(8)
    )
    return [lag, dead, silence]


def build() -> builders.Dashboard:
    return with_panels(
        new_dashboard(UID, TITLE, "Status of every site and model, worst first.")
        .with_variable(model_variable())
        .with_variable(finding_variable()),
        explainer(EXPLANATION, height=9),
        _matrix_panel(),
        _history_panel(),
        _severity_panel(),
        _alerts_by_severity_panel(),
        *_pipeline_panels(),
    )
