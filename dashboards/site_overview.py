"""Site overview: the site manager's page. Is each model OK at my site, what do the detectors
say, which features drift, and how do today's images compare with the reference?"""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as viz_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.models import common as viz
from grafana_foundation_sdk.models import dashboard as model

from dashboards.common import (
    DASHED,
    NOTIFYING,
    POSTGRES,
    PROMETHEUS,
    SITE,
    SITE_MODEL,
    SQL_MODEL,
    SQL_SEVERITY_RANK,
    SQL_SITE,
    STATUS_MAPPINGS,
    alerts_annotation,
    config_value,
    dashed_thresholds,
    explainer,
    model_variable,
    new_dashboard,
    severity_cell,
    site_variable,
    stat_panel,
    status_expr,
    status_thresholds,
    thresholds,
    with_panels,
)
from dashboards.sql import Sql

UID = "radsentry-site-overview"
TITLE = "RadSentry: site overview"

REFERENCE_DAYS = 91
"""The reference of the distribution panels: the first days of data of the site and model. The
drift streams' own reference (by default their first 13 weeks, ``EngineConfig``, or an uploaded
one) is not in the contract's views; for a stream that started with the site's data this is
the same period."""

EXPLANATION = f"""
**One site, every model.** Pick the site (top left); *Model* narrows the models.

* **Status per model**: green = no drift in the latest checks and no alert; amber = a detector's
  latest check found drift, or an alert is acknowledged and being worked on; red = an open alert
  nobody has acknowledged yet. Only warning and critical alerts count, here and in *Open
  alerts*: info alerts do not notify, they are listed in the table below but do not turn the
  light red. Red: open the alert (red markers on the time charts, table below), acknowledge it,
  and follow the runbook.
* **Health score**: one number per model, 0 to 100: 100 = the detectors look like the
  reference, lower = worse (12.5 points per reference spread of the weighted detectors); dashed:
  its 90% band. The weights come from how well each detector predicted drops of realised AUROC
  at this site (or are equal, "default weights", without enough labels: GET
  /sites/{{site_id}}/health says which). Red regions are the alert episodes.
* **Detector value vs threshold**: each detector's p-value (or its statistic, for detectors
  without one) over time, dashed: its threshold. A p-value *below* its threshold, or a statistic
  *above* it, is drift. Red markers are alerts (hover for the explanation).
* **Effect vs learned threshold**: how big each detector's change is, dashed: the threshold
  learned from the reference's own variation, chunk to chunk (week to week with weekly
  windows). Drift needs a significant test *and* an effect above it; the alert's explanation
  says how far: "N x its learned threshold". Empty where thresholds are not learned.
* **Time in alarm**: the share of each detector's latest 50 checks inside an open alert episode.
  A bar red most of the time means the alarm needs re-baselining or tuning, not more attention.
* **Features that drift most**: the features named by alert explanations in the time range.
* **Alerts not resolved**: open critical first; severity critical (red), warning (amber), info
  (blue). Info alerts are shown but do not notify. *needs_decision*: the drift has lasted
  weeks; decide (re-baseline if it is the new normal, or investigate), then acknowledge.
* **Reference vs current**: pixel statistics and DICOM metadata of the first {REFERENCE_DAYS}
  days of data (the reference) against the selected time range. A new scanner, protocol or
  population shows up here first.
"""

STATUS = status_expr(SITE_MODEL, "model_name")
LAST_EVENT_AGE = f"time() - radsentry_site_last_event_timestamp_seconds{{{SITE}}}"
EVENT_RATE = f"sum(rate(radsentry_events_consumed_total{{{SITE}}}[$__rate_interval])) * 3600"
UNACKNOWLEDGED = f'radsentry_alerts_open{{{SITE_MODEL}, status="open", {NOTIFYING}}}'
OPEN_ALERTS = f"sum({UNACKNOWLEDGED}) or vector(0)"
# The value each detector compares with its threshold: its p-value, or its statistic when it
# has none (`or` keeps the p-value series where both exist).
DETECTOR_VALUE = (
    f"radsentry_drift_p_value{{{SITE_MODEL}}}\n  or radsentry_drift_statistic{{{SITE_MODEL}}}"
)
DETECTOR_THRESHOLD = f"radsentry_drift_threshold{{{SITE_MODEL}}}"
# Only detectors with a learned threshold: each effect line has its dashed threshold, on the
# effect's own scale (per-feature detectors: the leading feature's effect and threshold).
LEARNED_THRESHOLD = f"radsentry_drift_effect_threshold{{{SITE_MODEL}}}"
EFFECT_SIZE = (
    f"radsentry_drift_effect_size{{{SITE_MODEL}}}\n"
    f"  and on (site_id, model_name, detector) {LEARNED_THRESHOLD}"
)
TIME_IN_ALARM = f"radsentry_drift_time_in_alarm{{{SITE_MODEL}}}"
HEALTH = {
    "health": f"radsentry_health_score{{{SITE_MODEL}}}",
    "lower": f"radsentry_health_score_lower{{{SITE_MODEL}}}",
    "upper": f"radsentry_health_score_upper{{{SITE_MODEL}}}",
}

# Open before acknowledged, then the most serious; a decision asked for before the rest.
OPEN_ALERTS_TABLE = f"""
SELECT occurred_at, severity, model_name, model_version, detector, status, needs_decision,
       CASE WHEN needs_decision THEN decision_reason END AS decision_reason,
       since, features, explanation
FROM grafana.alerts
WHERE {SQL_SITE} AND {SQL_MODEL} AND status <> 'resolved'
ORDER BY CASE status WHEN 'open' THEN 0 ELSE 1 END, {SQL_SEVERITY_RANK},
         needs_decision DESC, occurred_at DESC
LIMIT 50
"""

TOP_FEATURES = f"""
SELECT feature, count(*) AS alerts, count(DISTINCT detector) AS detectors
FROM grafana.alert_features
WHERE {SQL_SITE} AND {SQL_MODEL} AND $__timeFilter(occurred_at)
GROUP BY feature
ORDER BY alerts DESC, feature
LIMIT 10
"""

PIXEL_REFERENCE_VS_CURRENT = f"""
WITH scoped AS (
  SELECT * FROM grafana.pixel_stats_daily WHERE {SQL_SITE} AND {SQL_MODEL}
), reference AS (
  SELECT stat, sum(events * p05) / NULLIF(sum(events), 0) AS p05,
         sum(events * p50) / NULLIF(sum(events), 0) AS p50,
         sum(events * p95) / NULLIF(sum(events), 0) AS p95
  FROM scoped WHERE day < (SELECT min(day) FROM scoped) + {REFERENCE_DAYS}
  GROUP BY stat
), current AS (
  SELECT stat, sum(events) AS events, sum(events * p05) / NULLIF(sum(events), 0) AS p05,
         sum(events * p50) / NULLIF(sum(events), 0) AS p50,
         sum(events * p95) / NULLIF(sum(events), 0) AS p95
  FROM scoped WHERE $__timeFilter(day::timestamptz)
  GROUP BY stat
)
SELECT COALESCE(r.stat, c.stat) AS stat,
       r.p05 AS reference_p05, r.p50 AS reference_p50, r.p95 AS reference_p95,
       c.p05 AS current_p05, c.p50 AS current_p50, c.p95 AS current_p95,
       (c.p50 - r.p50) / NULLIF(r.p95 - r.p05, 0) AS median_shift,
       c.events AS current_events
FROM reference r FULL JOIN current c ON c.stat = r.stat
ORDER BY abs((c.p50 - r.p50) / NULLIF(r.p95 - r.p05, 0)) DESC NULLS LAST, 1
"""

METADATA_REFERENCE_VS_CURRENT = f"""
WITH scoped AS (
  SELECT * FROM grafana.metadata_daily WHERE {SQL_SITE} AND {SQL_MODEL}
), reference AS (
  SELECT field, value, sum(events) AS events
  FROM scoped WHERE day < (SELECT min(day) FROM scoped) + {REFERENCE_DAYS}
  GROUP BY field, value
), current AS (
  SELECT field, value, sum(events) AS events
  FROM scoped WHERE $__timeFilter(day::timestamptz)
  GROUP BY field, value
), shares AS (
  SELECT COALESCE(r.field, c.field) AS field, COALESCE(r.value, c.value) AS value,
         COALESCE(r.events, 0)::float
           / NULLIF(sum(COALESCE(r.events, 0)) OVER (PARTITION BY COALESCE(r.field, c.field)), 0)
           AS reference_share,
         COALESCE(c.events, 0)::float
           / NULLIF(sum(COALESCE(c.events, 0)) OVER (PARTITION BY COALESCE(r.field, c.field)), 0)
           AS current_share
  FROM reference r FULL JOIN current c ON c.field = r.field AND c.value = r.value
)
SELECT field, value, reference_share, current_share,
       current_share - reference_share AS change
FROM shares
ORDER BY abs(COALESCE(current_share, 0) - COALESCE(reference_share, 0)) DESC, field, value
LIMIT 30
"""


def _status_panel() -> stat.Panel:
    return (
        stat_panel()
        .title("Status per model")
        .description(
            "Green OK, amber watch (drift in a latest check or an acknowledged alert), "
            "red alert (an open alert). Only warning and critical alerts count: info alerts "
            "are listed in the table below but do not turn the light red (they do not notify)."
        )
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery().expr(STATUS).instant().legend_format("{{model_name}}").ref_id("A")
        )
        .mappings(STATUS_MAPPINGS)
        .thresholds(status_thresholds())
        .color_mode(viz.BigValueColorMode.BACKGROUND)
        .text_mode(viz.BigValueTextMode.VALUE_AND_NAME)
        .span(12)
        .height(6)
    )


def _feed_panels() -> list[stat.Panel]:
    last_event = (
        stat_panel()
        .title("Time since the newest event")
        .description(
            "Event time of the newest stored study of this site. Hours without events "
            "on a working day mean the feed from the site stopped."
        )
        .datasource(PROMETHEUS)
        .with_target(prom.Dataquery().expr(LAST_EVENT_AGE).instant().ref_id("A"))
        .unit("s")
        .thresholds(thresholds((None, "green"), (3600, "orange"), (6 * 3600, "red")))
        .color_mode(viz.BigValueColorMode.BACKGROUND)
        .span(4)
        .height(6)
    )
    rate = (
        stat_panel()
        .title("Studies per hour")
        .datasource(PROMETHEUS)
        .with_target(prom.Dataquery().expr(EVENT_RATE).ref_id("A"))
        .unit("short")
        .graph_mode(viz.BigValueGraphMode.AREA)
        .span(4)
        .height(6)
    )
    alerts = (
        stat_panel()
        .title("Open alerts")
        .description(
            "Warning and critical alerts nobody has acknowledged yet. Info alerts are listed "
            "in the table below but not counted here: they do not notify."
        )
        .datasource(PROMETHEUS)
        .with_target(prom.Dataquery().expr(OPEN_ALERTS).instant().ref_id("A"))
        .thresholds(thresholds((None, "green"), (1, "red")))
        .color_mode(viz.BigValueColorMode.BACKGROUND)
        .span(4)
        .height(6)
    )
    return [last_event, rate, alerts]


def _health_panel() -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title("Health score")
        .description(
            "Health of each model's latest drift window, 0 to 100: 100 = like the reference, "
            "lower = worse; dashed: its 90% band. Each detector's effect is standardised by "
            "the reference's chunk-to-chunk variation and weighted by how well it predicted "
            "drops of realised AUROC here (equal default weights without enough labels). "
            "Red regions: alert episodes. Components and weights: GET /sites/{site_id}/health."
        )
        .datasource(PROMETHEUS)
        .min(0)
        .max(100)
        .thresholds(thresholds((None, "red"), (50, "orange"), (80, "green")))
        .thresholds_style(dashed_thresholds())
        .override_by_regexp("/ (lower|upper)$/", DASHED)
        .span(24)
        .height(8)
    )
    for ref_id, (kind, expr) in zip("ABC", HEALTH.items(), strict=True):
        suffix = "" if kind == "health" else f" {kind}"
        panel.with_target(
            prom.Dataquery()
            .expr(expr)
            .ref_id(ref_id)
            .legend_format(f"{{{{model_name}}}} v{{{{model_version}}}}{suffix}")
        )
    return panel


def _detector_panel() -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title("Detector value vs threshold")
        .description(
            "p-value (or statistic) of each detector's latest check; dashed: its "
            "threshold. Red markers: alerts."
        )
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery()
            .expr(DETECTOR_VALUE)
            .legend_format("{{model_name}} {{detector}}")
            .ref_id("A")
        )
        .with_target(
            prom.Dataquery()
            .expr(DETECTOR_THRESHOLD)
            .legend_format("{{model_name}} {{detector}} threshold")
            .ref_id("B")
        )
        .override_by_regexp("/ threshold$/", DASHED)
        .span(12)
        .height(9)
    )


def _effect_panel() -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title("Effect vs learned threshold")
        .description(
            "Effect size of each detector's latest check (per-feature detectors: the leading "
            "feature's); dashed: its threshold, learned from the reference's own week-to-week "
            "variation (between window-sized chunks of the reference: weeks when the windows "
            "are weekly). An effect above it with a significant test is drift; the alert's "
            'explanation says how far: "N x its learned threshold". Empty where '
            "thresholds are not learned (drift.learned off)."
        )
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery()
            .expr(EFFECT_SIZE)
            .legend_format("{{model_name}} {{detector}}")
            .ref_id("A")
        )
        .with_target(
            prom.Dataquery()
            .expr(LEARNED_THRESHOLD)
            .legend_format("{{model_name}} {{detector}} learned threshold")
            .ref_id("B")
        )
        .override_by_regexp("/ learned threshold$/", DASHED)
        .span(12)
        .height(9)
    )


def _time_in_alarm_panel() -> bargauge.Panel:
    return (
        bargauge.Panel()
        .title("Time in alarm")
        .description(
            "Share of each detector's latest 50 checks after which an alert episode was open. "
            "A bar red most of the time means the alarm needs re-baselining (POST "
            "/sites/{site_id}/reference) or tuning, not more attention."
        )
        .datasource(PROMETHEUS)
        .with_target(
            prom.Dataquery()
            .expr(TIME_IN_ALARM)
            .instant()
            .legend_format("{{model_name}} {{detector}}")
            .ref_id("A")
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "green"), (0.1, "orange"), (0.3, "red")))
        .orientation(viz.VizOrientation.HORIZONTAL)
        .display_mode(viz.BarGaugeDisplayMode.BASIC)
        .reduce_options(viz_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .span(12)
        .height(9)
    )


def _distribution_panels() -> list[table.Panel]:
    pixels = (
        table.Panel()
        .title(f"Pixel statistics: reference (first {REFERENCE_DAYS} days) vs current")
        .description(
            "Event-weighted daily percentiles. median_shift: the current median's "
            "move in units of the reference's 5-95% spread; beyond ±0.5 look closer."
        )
        .datasource(POSTGRES)
        .with_target(Sql(PIXEL_REFERENCE_VS_CURRENT).ref_id("A"))
        .override_by_name(
            "median_shift",
            [
                config_value("custom.cellOptions", {"type": "color-background"}),
                config_value(
                    "thresholds", thresholds((None, "red"), (-0.5, "green"), (0.5, "red")).build()
                ),
            ],
        )
        .decimals(2)
        .span(12)
        .height(10)
    )
    metadata = (
        table.Panel()
        .title(f"DICOM metadata: reference (first {REFERENCE_DAYS} days) vs current")
        .description(
            "Share of studies per value of each allowlisted field; largest changes "
            "first. A new value (reference share 0) is a new scanner or protocol."
        )
        .datasource(POSTGRES)
        .with_target(Sql(METADATA_REFERENCE_VS_CURRENT).ref_id("A"))
        .unit("percentunit")
        .decimals(1)
        .span(12)
        .height(10)
    )
    return [pixels, metadata]


NEEDS_DECISION_MAPPINGS: list[model.ValueMapping] = [
    model.ValueMap(
        options={
            "true": model.ValueMappingResult(text="yes", color="purple", index=0),
            "false": model.ValueMappingResult(text="no", index=1),
        }
    )
]


def _alert_panels() -> list[barchart.Panel | table.Panel]:
    features = (
        barchart.Panel()
        .title("Features that drift most")
        .description("How many alerts in the time range named each feature.")
        .datasource(POSTGRES)
        .with_target(Sql(TOP_FEATURES).ref_id("A"))
        .x_field("feature")
        .orientation(viz.VizOrientation.HORIZONTAL)
        .span(12)
        .height(9)
    )
    alerts = (
        table.Panel()
        .title("Alerts not resolved")
        .description(
            "Open first, most serious first (critical red, warning amber, info blue), then "
            "acknowledged. Info alerts are shown here and kept for reports, but they do not "
            "notify: only warning and critical are published on radsentry.alerts and may start "
            "a retraining. needs_decision: the drift has "
            "lasted long enough (14 days) to ask a person; decision_reason says what to "
            "decide. Acknowledging the alert answers it. Explanations are machine-written."
        )
        .datasource(POSTGRES)
        .with_target(Sql(OPEN_ALERTS_TABLE).ref_id("A"))
        .override_by_name("severity", severity_cell())
        .override_by_name(
            "needs_decision",
            [
                config_value("custom.cellOptions", {"type": "color-text"}),
                config_value("mappings", NEEDS_DECISION_MAPPINGS),
            ],
        )
        .span(24)
        .height(10)
    )
    return [features, alerts]


def build() -> builders.Dashboard:
    return with_panels(
        new_dashboard(
            UID, TITLE, "Drift status, detectors, alerts and input distributions of one site."
        )
        .with_variable(site_variable())
        .with_variable(model_variable())
        .annotation(alerts_annotation()),
        explainer(EXPLANATION, height=12),
        _status_panel(),
        *_feed_panels(),
        _health_panel(),
        _detector_panel(),
        _effect_panel(),
        _time_in_alarm_panel(),
        *_alert_panels(),
        *_distribution_panels(),
    )
