"""Prometheus metrics of the runtime. Labels are bounded: site, topic, reject code; never event
ids, study keys or free text."""

from __future__ import annotations

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
DRIFT_DETECTED = Gauge(
    "radsentry_drift_detected", "1 when the latest check found drift, else 0.", _DETECTOR_LABELS
)
DRIFT_CHECKS = Counter(
    "radsentry_drift_checks",
    "Windows (or online blocks) checked, by outcome: drift, quiet or skipped.",
    [*_DETECTOR_LABELS, "outcome"],
)
PERFORMANCE = Gauge(
    "radsentry_performance",
    "Latest performance snapshot: metric is auroc, sensitivity, specificity, ece, "
    "label_completeness, or (rolling window) auroc_estimated, sensitivity_estimated, "
    "specificity_estimated from the label-free estimate; NaN when too few cases.",
    ["site_id", "model_name", "model_version", "finding", "window", "metric"],
)
ALERTS_OPENED = Counter(
    "radsentry_alerts_opened", "Drift episodes opened (alerts raised).", _DETECTOR_LABELS
)

RETRAIN_JOBS = Counter(
    "radsentry_retrain_jobs",
    "Retraining job attempts by outcome: succeeded, failed (for good) or retried.",
    ["outcome"],
)
RETRAIN_JOB_SECONDS = Histogram(
    "radsentry_retrain_job_seconds",
    "Wall time of one retraining job attempt, by outcome.",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
