"""Prometheus metrics of the runtime. Labels are bounded: site, model, detector, topic, reject
code, window, metric, outcome; never event ids, study keys or free text.

Each process exposes the metrics it updates: the consumer (ingestion, drift, consumer lag, the
newest event per site), the jobs (performance, retraining, the audit chain's verification) and
the API (database-backed counts, :mod:`monitor.service.metrics_db`). docs/operations.md lists
every metric with the process that exposes it.
"""

from __future__ import annotations

import math

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "radsentry_events_consumed",
    "Events accepted and stored for the first time.",
    ["topic", "site_id"],
)
EVENTS_DUPLICATE = Counter(
    "radsentry_events_duplicate",
    "Redelivered or re-published events skipped by the inbox.",
    ["topic"],
)
EVENTS_DEAD_LETTERED = Counter(
    "radsentry_events_dead_lettered",
    "Records refused and sent to the dead-letter topic, by reject code.",
    ["topic", "reason"],
)
PROCESSING_SECONDS = Histogram(
    "radsentry_event_processing_seconds",
    "Time from a record's broker timestamp to the commit of its batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SECONDS = Histogram(
    "radsentry_ingest_batch_seconds",
    "Time to validate, store and commit one polled batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "radsentry_consumer_lag",
    "Records behind the end offsets, summed over the partitions of the topic this consumer "
    "holds (last known high watermark minus position, after each poll).",
    ["topic"],
)
SITE_LAST_EVENT = Gauge(
    "radsentry_site_last_event_timestamp_seconds",
    "Unix time of the newest stored inference event's occurred_at, per site.",
    ["site_id"],
)
INGEST_FAILURES = Counter(
    "radsentry_ingest_failures",
    "Batches that could not be stored or committed and were retried.",
)

_DETECTOR_LABELS = ["site_id", "model_name", "detector"]
DRIFT_STATISTIC = Gauge(
    "radsentry_drift_statistic", "Test statistic of the latest check.", _DETECTOR_LABELS
)
DRIFT_P_VALUE = Gauge(
    "radsentry_drift_p_value",
    "Adjusted p-value of the latest check (detectors that have one).",
    _DETECTOR_LABELS,
)
DRIFT_EFFECT_SIZE = Gauge(
    "radsentry_drift_effect_size", "Effect size of the latest check.", _DETECTOR_LABELS
)
DRIFT_THRESHOLD = Gauge(
    "radsentry_drift_threshold",
    "Threshold of the latest check: the detector compares its p-value (or, without one, its "
    "statistic) to it.",
    _DETECTOR_LABELS,
)
DRIFT_EFFECT_THRESHOLD = Gauge(
    "radsentry_drift_effect_threshold",
    "Effect threshold of the latest check learned from the reference's chunk-to-chunk "
    "variation (set only where thresholds are learned): the effect size must reach it.",
    _DETECTOR_LABELS,
)
DRIFT_TIME_IN_ALARM = Gauge(
    "radsentry_drift_time_in_alarm",
    "Share of the detector's latest 50 checks after which an alert episode was open (0 to 1): "
    "how much of the time its panel is red.",
    _DETECTOR_LABELS,
)
DRIFT_DETECTED = Gauge(
    "radsentry_drift_detected", "1 when the latest check found drift, else 0.", _DETECTOR_LABELS
)
DRIFT_CHECKS = Counter(
    "radsentry_drift_checks",
    "Windows (or online blocks) checked, by outcome: drift, quiet or skipped.",
    [*_DETECTOR_LABELS, "outcome"],
)
_PERFORMANCE_LABELS = ["site_id", "model_name", "model_version", "finding", "window", "metric"]
PERFORMANCE = Gauge(
    "radsentry_performance",
    "Latest performance snapshot: metric is auroc, sensitivity, specificity, ece, "
    "label_completeness, or (rolling window) auroc_estimated, sensitivity_estimated, "
    "specificity_estimated from the label-free estimate; NaN when too few cases.",
    _PERFORMANCE_LABELS,
)
PERFORMANCE_LOWER = Gauge(
    "radsentry_performance_lower",
    "Lower confidence bound of radsentry_performance (auroc, sensitivity, specificity); absent "
    "when the snapshot has no interval.",
    _PERFORMANCE_LABELS,
)
PERFORMANCE_UPPER = Gauge(
    "radsentry_performance_upper",
    "Upper confidence bound of radsentry_performance (auroc, sensitivity, specificity); absent "
    "when the snapshot has no interval.",
    _PERFORMANCE_LABELS,
)
PERFORMANCE_SUMMARIES_MISMATCHED = Gauge(
    "radsentry_performance_summaries_mismatched",
    "Cumulative windows whose sufficient statistics differed from the raw rows at the last "
    "verification (scheduler job performance-verify); 0 when all agreed.",
)
PERFORMANCE_SUMMARIES_LAST_VERIFIED = Gauge(
    "radsentry_performance_summaries_last_verified_timestamp_seconds",
    "Unix time of the last completed verification of the performance statistics.",
)
_HEALTH_LABELS = ["site_id", "model_name", "model_version"]
HEALTH_SCORE = Gauge(
    "radsentry_health_score",
    "Health of the stream's latest drift window, 0 to 100: 100 = like the reference, 12.5 points "
    "lost per reference spread of the weighted detectors (docs/performance.md, health score); "
    "NaN when no detector has learned moments.",
    _HEALTH_LABELS,
)
HEALTH_LOWER = Gauge(
    "radsentry_health_score_lower", "Lower bound of radsentry_health_score's band.", _HEALTH_LABELS
)
HEALTH_UPPER = Gauge(
    "radsentry_health_score_upper", "Upper bound of radsentry_health_score's band.", _HEALTH_LABELS
)
HEALTH_WEIGHTS_LEARNED = Gauge(
    "radsentry_health_weights_learned",
    "1 when the health score's weights were learned from labelled windows, 0 for default "
    "(equal) weights.",
    _HEALTH_LABELS,
)
ALERTS_OPENED = Counter(
    "radsentry_alerts_opened", "Drift episodes opened (alerts raised).", _DETECTOR_LABELS
)

RETRAIN_JOBS = Counter(
    "radsentry_retrain_jobs",
    "Retraining job attempts by outcome: succeeded, failed (for good), retried, or stopped "
    "(asked to stop mid-training; the request waits, its attempt not counted).",
    ["outcome"],
)
# Every outcome exported from the start: a counter series born at 1 hides its first increase
# from increase()/rate(), and the alert on failed jobs would miss a process's first failure.
for _outcome in ("succeeded", "failed", "retried", "stopped"):
    RETRAIN_JOBS.labels(outcome=_outcome)
RETRAIN_JOB_SECONDS = Histogram(
    "radsentry_retrain_job_seconds",
    "Wall time of one retraining job attempt, by outcome.",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)

AUDIT_CHAIN_OK = Gauge(
    "radsentry_audit_chain_ok",
    "1 when the change log's hash chain and its signed checkpoints verified at the last check "
    "(at the start of the API and the scheduler, then scheduler job audit-verify), 0 when not; "
    "NaN until this process has checked.",
)
# NaN, not prometheus_client's 0, until a check: every process serving this registry (the
# consumer too) exported "0", which the RadSentryAuditChainBroken rule (== 0) read as broken.
AUDIT_CHAIN_OK.set(math.nan)
AUDIT_CHAIN_LAST_VERIFIED = Gauge(
    "radsentry_audit_chain_last_verified_timestamp_seconds",
    "Unix time of the last completed verification of the change log (ok or not).",
)
