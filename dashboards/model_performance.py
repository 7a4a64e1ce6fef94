"""Model performance at one site: realised metrics from labelled cases against the label-free
estimates, with their intervals; how many labels have arrived and how late; calibration; and
the subgroups."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, table, timeseries
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus as prom

from dashboards.common import (
    DASHED,
    POSTGRES,
    PROMETHEUS,
    SITE_MODEL_FINDING,
    SQL_FINDING,
    SQL_MODEL,
    SQL_SITE,
    alerts_annotation,
    config_value,
    dashed_thresholds,
    explainer,
    finding_variable,
    model_variable,
    new_dashboard,
    site_variable,
    thresholds,
    with_panels,
)
from dashboards.sql import Sql, SqlAnnotation

UID = "radsentry-model-performance"
TITLE = "RadSentry: model performance"

EXPLANATION = """
**How well does each model do at this site?** Site, model and finding at the top.

* **AUROC, sensitivity, specificity** (rolling window of the latest labelled cases): solid =
  realised on cases with a label; dashed = the 95% interval; dotted = *estimated* without labels
  (CBPE), which is available before labels arrive. Realised below the plan's floor, or the
  estimate falling while labels lag: tell the ML-ops team.
* **Label completeness and delay**: share of predictions with a label in force, and how many
  hours labels take (median and 90th percentile). Low completeness means wide intervals and a
  realised metric that lags; chase the reporting workflow.
* **Reliability diagram** (one per finding): observed rate of the finding against the model's
  mean score per score bin; on the diagonal (mean score) when calibrated.
* **Subgroups**: the same metrics per sex, age band, scanner...; a group far below the others
  needs a look even when the total is fine.
* Markers: red = alerts, blue = promotions and rollbacks of a model version.
"""

WINDOW = 'window="rolling"'

PROMOTION_ANNOTATIONS = f"""
SELECT promoted_at AS "time", 'Promoted ' || model_name || ' v' || model_version AS text,
       'promotion,' || model_name AS tags
FROM grafana.candidates
WHERE {SQL_MODEL} AND promoted_at BETWEEN $__timeFrom() AND $__timeTo()
UNION ALL
SELECT rolled_back_at, 'Rolled back ' || model_name || ' v' || model_version
       || ' (champion again: v' || COALESCE(previous_champion, '?') || ')',
       'rollback,' || model_name
FROM grafana.candidates
WHERE {SQL_MODEL} AND rolled_back_at BETWEEN $__timeFrom() AND $__timeTo()
ORDER BY 1
"""

LABEL_COMPLETENESS = f'radsentry_performance{{{SITE_MODEL_FINDING}, metric="label_completeness"}}'

LABEL_DELAY = f"""
SELECT computed_at AS "time", model_name, model_version, finding,
       label_delay_p50_hours AS "delay p50", label_delay_p90_hours AS "delay p90"
FROM grafana.performance_windows
WHERE {SQL_SITE} AND {SQL_MODEL} AND {SQL_FINDING} AND "window" = 'rolling'
  AND $__timeFilter(computed_at)
ORDER BY 1
"""

ECE = f'radsentry_performance{{{SITE_MODEL_FINDING}, {WINDOW}, metric="ece"}}'

RELIABILITY = f"""
SELECT model_name || ' v' || model_version || ' ' || to_char(bin_lower, 'FM0.00') || '-'
         || to_char(bin_upper, 'FM0.00') AS bin,
       observed_rate AS "observed rate", mean_score AS "mean score", cases
FROM grafana.reliability_bins
WHERE {SQL_SITE} AND {SQL_MODEL} AND {SQL_FINDING} AND "window" = 'cumulative'
ORDER BY model_name, model_version, bin_lower
"""

SUBGROUPS = f"""
SELECT finding, model_name, model_version, "window", field, value, cases, positives,
       auroc, sensitivity, specificity, computed_at
FROM grafana.subgroup_performance
WHERE {SQL_SITE} AND {SQL_MODEL} AND {SQL_FINDING}
ORDER BY finding, model_name, model_version, "window", sensitivity NULLS LAST, field, value
"""


def metric_queries(metric: str) -> dict[str, str]:
    """Realised value, its interval, and the label-free estimate of one metric (rolling)."""
    selector = f'{SITE_MODEL_FINDING}, {WINDOW}, metric="{metric}"'
    return {
        "realised": f"radsentry_performance{{{selector}}}",
        "lower": f"radsentry_performance_lower{{{selector}}}",
        "upper": f"radsentry_performance_upper{{{selector}}}",
        "estimated": (
            f'radsentry_performance{{{SITE_MODEL_FINDING}, {WINDOW}, metric="{metric}_estimated"}}'
        ),
    }


def _metric_panel(metric: str, title: str) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(
            f"Realised {metric} with its 95% interval (dashed) and the label-free "
            "estimate (dotted), rolling window."
        )
        .datasource(PROMETHEUS)
        .unit("percentunit")
        .min(0)
        .max(1)
        .override_by_regexp("/ (lower|upper)$/", DASHED)
        .override_by_regexp(
            "/ estimated$/",
            [
                config_value("custom.lineStyle", {"fill": "dot", "dash": [0, 10]}),
            ],
        )
        .span(8)
        .height(9)
    )
    for ref_id, (kind, expr) in zip("ABCD", metric_queries(metric).items(), strict=True):
        panel.with_target(
            prom.Dataquery()
            .expr(expr)
            .ref_id(ref_id)
            .legend_format(f"{{{{model_name}}}} v{{{{model_version}}}} {{{{finding}}}} {kind}")
        )
    return panel


def _labels_panels() -> list[timeseries.Panel]:
    completeness = (
        timeseries.Panel()
        .title("Label completeness")
        .description("Share of predictions with a label in force, per window.")
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery()
            .expr(LABEL_COMPLETENESS)
            .ref_id("A")
            .legend_format("{{model_name}} v{{model_version}} {{finding}} {{window}}")
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .span(12)
        .height(8)
    )
    delay = (
        timeseries.Panel()
        .title("Label delay (hours)")
        .description("Hours from prediction to label: median and 90th percentile, rolling window.")
        .datasource(POSTGRES)
        .with_target(Sql(LABEL_DELAY).time_series().ref_id("A"))
        .unit("h")
        .span(12)
        .height(8)
    )
    return [completeness, delay]


def _calibration_panels() -> list[barchart.Panel | timeseries.Panel | table.Panel]:
    reliability = (
        barchart.Panel()
        .title("Reliability diagram: $finding")
        .description(
            "Per score bin (all labelled cases of the version): observed rate vs mean "
            "score. Calibrated when the two bars match."
        )
        .datasource(POSTGRES)
        .with_target(Sql(RELIABILITY).ref_id("A"))
        .x_field("bin")
        .x_tick_label_rotation(-45)
        .unit("percentunit")
        .override_by_name(
            "cases",
            [
                config_value("custom.hideFrom", {"legend": True, "tooltip": False, "viz": True}),
                config_value("unit", "none"),
            ],
        )
        .repeat("finding")
        .repeat_direction("h")
        .max_per_row(3)
        .span(24)
        .height(9)
    )
    ece = (
        timeseries.Panel()
        .title("Expected calibration error")
        .description("ECE of the rolling window; the plan's calibration limit is typically 0.05.")
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery()
            .expr(ECE)
            .ref_id("A")
            .legend_format("{{model_name}} v{{model_version}} {{finding}}")
        )
        .thresholds(thresholds((None, "green"), (0.05, "orange"), (0.1, "red")))
        .thresholds_style(dashed_thresholds())
        .span(8)
        .height(10)
    )
    subgroups = (
        table.Panel()
        .title("Subgroups")
        .description("Latest snapshot per window; lowest sensitivity first.")
        .datasource(POSTGRES)
        .with_target(Sql(SUBGROUPS).ref_id("A"))
        .decimals(3)
        .filterable(True)
        .span(16)
        .height(10)
    )
    return [reliability, ece, subgroups]


def build() -> builders.Dashboard:
    dashboard = (
        new_dashboard(
            UID,
            TITLE,
            "Realised vs estimated performance, labels, calibration "
            "and subgroups of the models at one site.",
        )
        .with_variable(site_variable())
        .with_variable(model_variable())
        .with_variable(finding_variable())
        .annotation(alerts_annotation())
        .annotation(
            builders.AnnotationQuery()
            .name("Promotions and rollbacks")
            .datasource(POSTGRES)
            .enable(True)
            .icon_color("blue")
            .target(SqlAnnotation(PROMOTION_ANNOTATIONS))
        )
    )
    return with_panels(
        dashboard,
        explainer(EXPLANATION, height=8),
        _metric_panel("auroc", "AUROC: realised vs estimated"),
        _metric_panel("sensitivity", "Sensitivity: realised vs estimated"),
        _metric_panel("specificity", "Specificity: realised vs estimated"),
        *_labels_panels(),
        *_calibration_panels(),
    )
