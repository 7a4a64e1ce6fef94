"""Prometheus metrics of the runtime. Labels are bounded: site, topic, reject code; never event
ids, study keys or free text."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
