"""What every RadSentry dashboard shares: data sources, variables, tag, folder, the explanatory
text panel, the traffic-light status and the filters queries use.

Variables (docs/dashboards.md, "Variables"): ``prometheus`` and ``postgres`` pick the data sources;
``site`` is single-valued with no "All" (a site manager looks at one site; Grafana selects the
first site when the saved one is missing, so the default is one site, never all of them);
``model`` and ``finding`` are multi-valued with "All" as the default. Queries write them as
``site_id="$site"`` and ``model_name=~"$model"`` in PromQL and ``${site:sqlstring}``,
``${model:sqlstring}`` in SQL (quoted, comma-separated: ``model_name IN (${model:sqlstring})``).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as viz_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import stat, text
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as viz
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.text import TextMode

from dashboards import FOLDER as FOLDER
from dashboards.sql import SqlAnnotation

TAG = "radsentry"

PROMETHEUS_TYPE = "prometheus"
POSTGRES_TYPE = "grafana-postgresql-datasource"
PROMETHEUS_UID = "radsentry-prometheus"
POSTGRES_UID = "radsentry-postgres"
"""Uids of the provisioned data sources (dashboards/provisioning/datasources/radsentry.yaml),
the defaults of the data-source variables."""

PROMETHEUS = model.DataSourceRef(type_val=PROMETHEUS_TYPE, uid="${prometheus}")
POSTGRES = model.DataSourceRef(type_val=POSTGRES_TYPE, uid="${postgres}")

# PromQL selectors and SQL conditions on the variables.
SITE = 'site_id="$site"'
SITE_MODEL = 'site_id="$site", model_name=~"$model"'
SITE_MODEL_FINDING = 'site_id="$site", model_name=~"$model", finding=~"$finding"'
SQL_SITE = "site_id = ${site:sqlstring}"
SQL_MODEL = "model_name IN (${model:sqlstring})"
SQL_FINDING = "finding IN (${finding:sqlstring})"
NOTIFYING = 'severity!="info"'
"""The alerts that notify, warning and critical (docs/drift.md, "Severity"): only they change
the traffic light or count as open alerts; info alerts are listed in the alert tables. ``!=``
also keeps series scraped before ``radsentry_alerts_open`` had its ``severity`` label."""

ALL = model.VariableOption(text="All", value="$__all")


def prometheus_variable() -> builders.DatasourceVariable:
    return (
        builders.DatasourceVariable("prometheus")
        .label("Prometheus")
        .type(PROMETHEUS_TYPE)
        .current(model.VariableOption(text="RadSentry Prometheus", value=PROMETHEUS_UID))
    )


def postgres_variable() -> builders.DatasourceVariable:
    return (
        builders.DatasourceVariable("postgres")
        .label("PostgreSQL")
        .type(POSTGRES_TYPE)
        .current(model.VariableOption(text="RadSentry PostgreSQL", value=POSTGRES_UID))
    )


def site_variable() -> builders.QueryVariable:
    """One site at a time: no "All", no multi-select, no saved value (Grafana takes the first
    site in alphabetical order)."""
    return (
        builders.QueryVariable("site")
        .label("Site")
        .datasource(PROMETHEUS)
        .query("label_values(radsentry_events_consumed_total, site_id)")
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(False)
        .include_all(False)
    )


def _multi_variable(name: str, label: str, query: str) -> builders.QueryVariable:
    # No custom "All" value: Grafana then expands All to every value, which both PromQL's
    # `=~"$var"` and SQL's `IN (${var:sqlstring})` understand.
    return (
        builders.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query(query)
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(ALL)
    )


def model_variable() -> builders.QueryVariable:
    return _multi_variable("model", "Model", "label_values(radsentry_drift_statistic, model_name)")


def finding_variable() -> builders.QueryVariable:
    return _multi_variable("finding", "Finding", "label_values(radsentry_performance, finding)")


def new_dashboard(uid: str, title: str, description: str) -> builders.Dashboard:
    """A dashboard with the shared settings; variables and panels are the caller's."""
    return (
        builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .time("now-7d", "now")
        .refresh("5m")
        .timezone("browser")
        .with_variable(prometheus_variable())
        .with_variable(postgres_variable())
    )


def with_panels(
    dashboard: builders.Dashboard, *panels: cogbuilder.Builder[model.Panel]
) -> builders.Dashboard:
    """Add ``panels`` in order; the SDK lays them out left to right, 24 columns a row."""
    for panel in panels:
        dashboard.with_panel(panel)
    return dashboard


def explainer(markdown: str, height: int = 6) -> text.Panel:
    """The full-width text panel at the top of every dashboard: how to read it."""
    return (
        text.Panel()
        .title("How to read this dashboard")
        .mode(TextMode.MARKDOWN)
        .content(markdown.strip())
        .span(24)
        .height(height)
    )


# Traffic light: 0 OK, 1 watch, 2 alert.
STATUS_MAPPINGS: list[model.ValueMapping] = [
    model.ValueMap(
        options={
            "0": model.ValueMappingResult(text="OK", color="green", index=0),
            "1": model.ValueMappingResult(text="Watch", color="orange", index=1),
            "2": model.ValueMappingResult(text="Alert", color="red", index=2),
        }
    )
]


# Alert severity (docs/drift.md, "Severity"): only warning and critical notify.
SEVERITY_MAPPINGS: list[model.ValueMapping] = [
    model.ValueMap(
        options={
            "critical": model.ValueMappingResult(color="red", index=0),
            "warning": model.ValueMappingResult(color="orange", index=1),
            "info": model.ValueMappingResult(color="blue", index=2),
        }
    )
]
SQL_SEVERITY_RANK = "CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END"
"""Most serious first in an ``ORDER BY``."""


def severity_cell() -> list[model.DynamicConfigValue]:
    """A table column of severities, each cell coloured: critical red, warning amber, info
    blue."""
    return [
        config_value("custom.cellOptions", {"type": "color-background"}),
        config_value("mappings", SEVERITY_MAPPINGS),
    ]


def status_thresholds() -> builders.ThresholdsConfig:
    return (
        builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps(
            [
                model.Threshold(value=None, color="green"),
                model.Threshold(value=1, color="orange"),
                model.Threshold(value=2, color="red"),
            ]
        )
    )


def status_expr(selector: str, by: str) -> str:
    """PromQL of the traffic light per ``by``: 2 (red) with an open, unacknowledged warning or
    critical alert; 1 (amber) when the latest check of a detector found drift or such an alert
    is acknowledged; 0 (green) otherwise. Info alerts do not notify, so they change nothing
    here (their drifting check still shows amber while it lasts). Performance rules raise
    alerts too, so they count."""
    unacknowledged = f'radsentry_alerts_open{{{selector}, status="open", {NOTIFYING}}}'
    acknowledged = f'radsentry_alerts_open{{{selector}, status="acknowledged", {NOTIFYING}}}'
    return (
        f"max by ({by}) (\n"
        f"  radsentry_drift_detected{{{selector}}}\n"
        f"  or 2 * clamp_max({unacknowledged}, 1)\n"
        f"  or clamp_max({acknowledged}, 1)\n"
        ")"
    )


def thresholds(*steps: tuple[float | None, str]) -> builders.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (from minus infinity)."""
    return (
        builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def transformation(id_val: str, options: dict[str, object]) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(id_val=id_val, options=options)


DASHED: list[model.DynamicConfigValue] = [
    model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
    model.DynamicConfigValue(id_val="custom.lineWidth", value=1),
]


ALERT_ANNOTATIONS = f"""
SELECT occurred_at AS "time", COALESCE(ended_at, resolved_at) AS timeend,
       model_name || ' / ' || detector || ': ' || COALESCE(explanation, '') AS text,
       concat_ws(',', model_name, detector, status) AS tags
FROM grafana.alerts
WHERE {SQL_SITE} AND {SQL_MODEL}
  AND occurred_at <= $__timeTo()
  AND COALESCE(ended_at, resolved_at, now()) >= $__timeFrom()
ORDER BY occurred_at
"""


def alerts_annotation() -> builders.AnnotationQuery:
    """The site's alerts (drift and performance rules) as red regions on every time chart,
    from when each was raised to when its episode ended or it was resolved."""
    return (
        builders.AnnotationQuery()
        .name("Alerts")
        .datasource(POSTGRES)
        .enable(True)
        .icon_color("red")
        .target(SqlAnnotation(ALERT_ANNOTATIONS))
    )


def config_value(id_val: str, value: object) -> model.DynamicConfigValue:
    """One property of a field override (``custom.lineStyle``, ``unit``, ``mappings``...)."""
    return model.DynamicConfigValue(id_val=id_val, value=value)


def dashed_thresholds() -> viz_builders.GraphThresholdsStyleConfig:
    """Thresholds drawn as dashed lines on a time series."""
    return viz_builders.GraphThresholdsStyleConfig().mode(viz.GraphThresholdsStyleMode.DASHED)


def stat_panel() -> stat.Panel:
    """A stat panel showing each series' last value (no sparkline unless the caller adds one)."""
    return (
        stat.Panel()
        .reduce_options(viz_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(viz.BigValueGraphMode.NONE)
    )
