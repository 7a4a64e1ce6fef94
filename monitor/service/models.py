"""Database tables (SQLAlchemy 2 typed models). Rows never leave the store modules.

Only contract fields are stored: pseudonymous study keys, allowlisted metadata and pixel
statistics. Dead letters keep where the record was and why it was refused, never its payload.
Schema changes go through Alembic (``monitor/service/migrations``); a test keeps the two equal.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false, text

JsonDocument = JSONB()
Timestamp = DateTime(timezone=True)


REASON_MAX_CHARS = 2000
"""The longest reason or note that is recorded (alert notes, retrain requests, signatures,
promotions, the change log): the API refuses a longer one (422), and the stores clip the ones
they compose themselves, such as an exception's text."""


def clip_reason(text: str) -> str:
    """``text`` cut to :data:`REASON_MAX_CHARS`."""
    return text[:REASON_MAX_CHARS]


class Base(DeclarativeBase):
    pass


class ProcessedEvent(Base):
    """Inbox: one row per accepted event_id, the idempotency key of every handler."""

    __tablename__ = "processed_events"

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    schema_id: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    processed_at: Mapped[datetime] = mapped_column(Timestamp)


class InferenceEventRow(Base):
    __tablename__ = "inference_events"
    __table_args__ = (
        Index("ix_inference_events_site_time", "site_id", "occurred_at"),
        Index("ix_inference_events_study", "site_id", "model_name", "study_key"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    study_key: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16))
    dicom_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JsonDocument)
    pixel_stats: Mapped[dict[str, float] | None] = mapped_column(JsonDocument, nullable=True)
    scores: Mapped[dict[str, float]] = mapped_column(JsonDocument)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    dicom_uri: Mapped[str | None] = mapped_column(String(512), nullable=True)
    embedding: Mapped[list[float] | None] = mapped_column(JsonDocument, nullable=True)
    """inference-event/v2's projected penultimate features (at most 32 numbers), else NULL."""
    embedding_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class LabelEventRow(Base):
    __tablename__ = "label_events"
    __table_args__ = (
        Index("ix_label_events_site_time", "site_id", "occurred_at"),
        Index("ix_label_events_study", "site_id", "model_name", "study_key"),
    )

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    study_key: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    labels: Mapped[dict[str, int]] = mapped_column(JsonDocument)
    source: Mapped[str] = mapped_column(String(16))


class DeadLetter(Base):
    """One row per refused record, unique on its source coordinates (so counts are exact)."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("uq_dead_letters_source", "topic", "partition", "offset", unique=True),
        Index("ix_dead_letters_code", "topic", "code"),
    )

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True)
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    code: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    payload_bytes: Mapped[int] = mapped_column(Integer)
    dead_lettered_at: Mapped[datetime] = mapped_column(Timestamp)


class DriftStreamRow(Base):
    """One monitored stream's engine state, saved in the transaction that stores its events.

    ``state_version`` grows with every save: a consumer whose cached state has another version
    (after a partition moved, or a re-baselining through the API) reloads it.
    """

    __tablename__ = "drift_streams"

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    reference_state: Mapped[bytes] = mapped_column(LargeBinary)
    """The reference rows, saved apart because they rarely change (monitor.drift.state)."""
    state_version: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    events_seen: Mapped[int] = mapped_column(BigInteger)
    last_source: Mapped[str | None] = mapped_column(String(300), nullable=True)
    """``topic[partition]@offset`` of the last event reflected in ``state``."""
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class DriftCheckRow(Base):
    """One scored window (or online block) of one detector."""

    __tablename__ = "drift_checks"
    __table_args__ = (
        Index("ix_drift_checks_stream", "site_id", "model_name", "detector", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(String(32))
    window_start: Mapped[datetime] = mapped_column(Timestamp)
    window_end: Mapped[datetime] = mapped_column(Timestamp)
    n_window: Mapped[int] = mapped_column(Integer)
    is_drift: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    statistic: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    effect_size: Mapped[float | None] = mapped_column(Float, nullable=True)
    effect_size_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attributions: Mapped[list[dict[str, Any]]] = mapped_column(JsonDocument)
    severity: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """For a drifting check: info, warning or critical; NULL when quiet or skipped."""
    skipped: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reference_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    checked_at: Mapped[datetime] = mapped_column(Timestamp)


class AlertRow(Base):
    """A drift episode's alert; ``status`` is people's (open -> acknowledged -> resolved),
    ``drift_active`` is the data's (False once the engine saw enough quiet checks)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_site_status", "site_id", "status", "occurred_at"),
        Index("ix_alerts_unpublished", "published_at"),
    )

    alert_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(String(32))
    features: Mapped[list[str]] = mapped_column(JsonDocument)
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    since: Mapped[datetime] = mapped_column(Timestamp)
    window_start: Mapped[datetime] = mapped_column(Timestamp)
    window_end: Mapped[datetime] = mapped_column(Timestamp)
    statistic: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    effect_size: Mapped[float] = mapped_column(Float)
    effect_size_name: Mapped[str] = mapped_column(String(64))
    explanation: Mapped[str] = mapped_column(Text)
    config_fingerprint: Mapped[str] = mapped_column(String(64))
    reference_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    status: Mapped[str] = mapped_column(String(16))
    drift_active: Mapped[bool] = mapped_column(Boolean)
    drifting_checks: Mapped[int] = mapped_column(Integer)
    last_drift_at: Mapped[datetime] = mapped_column(Timestamp)
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    ended_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    published_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    severity: Mapped[str] = mapped_column(String(16), server_default="warning")
    """info, warning or critical (``monitor.drift.severity``); the highest seen in the episode."""
    decision_asked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    """When the episode, open ``decision_after_s``, asked for a decision (event time)."""
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class ReferenceChangeRow(Base):
    """Every reference a stream has had: automatic, re-baselined (who, why) or uploaded."""

    __tablename__ = "reference_changes"
    __table_args__ = (Index("ix_reference_changes_stream", "site_id", "model_name"),)

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    reference_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    generation: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    n_events: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp)


class CurrentLabelRow(Base):
    """The label in force per (site, model, study, finding): the latest by event time wins."""

    __tablename__ = "labels_current"
    __table_args__ = (
        Index("ix_labels_current_expiry", "site_id", "expired_at", "labelled_at"),
        Index(
            "ix_labels_current_pending",
            "labelled_at",
            postgresql_where=text("NOT matched AND expired_at IS NULL"),
        ),
        Index("ix_labels_current_joined", "site_id", "model_name", "finding", "labelled_at"),
    )

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    finding: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[int] = mapped_column(Integer)
    label_event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    source: Mapped[str] = mapped_column(String(16))
    labelled_at: Mapped[datetime] = mapped_column(Timestamp)
    """Event time of the label in force."""
    first_labelled_at: Mapped[datetime] = mapped_column(Timestamp)
    revisions: Mapped[int] = mapped_column(Integer)
    """Label events seen for this finding beyond the first (corrections and repeats)."""
    expired_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    """Set when no prediction had arrived within the horizon; an expired label is not joined."""
    matched: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """A prediction of the study has arrived: the label can no longer expire. Only the labels
    still waiting (not matched, not expired) are in ``ix_labels_current_pending``, which is all
    that expiry reads."""


class LabelChangeRow(Base):
    """A correction: a later label event changed the label in force."""

    __tablename__ = "label_changes"
    __table_args__ = (Index("ix_label_changes_study", "site_id", "model_name", "study_key"),)

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    study_key: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str] = mapped_column(String(64))
    old_label: Mapped[int] = mapped_column(Integer)
    new_label: Mapped[int] = mapped_column(Integer)
    old_event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    new_event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    changed_at: Mapped[datetime] = mapped_column(Timestamp)
    """Event time of the correcting label."""
    recorded_at: Mapped[datetime] = mapped_column(Timestamp)


class PerformanceSnapshotRow(Base):
    """Metrics of one (site, model version, finding) over one window, as computed at a time."""

    __tablename__ = "performance_snapshots"
    __table_args__ = (
        Index("ix_performance_snapshots_stream", "site_id", "model_name", "finding", "computed_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger(), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str] = mapped_column(String(64))
    window: Mapped[str] = mapped_column(String(16))
    """"rolling" (the latest labelled predictions) or "cumulative" (all of the version)."""
    computed_at: Mapped[datetime] = mapped_column(Timestamp)
    predicted: Mapped[int] = mapped_column(Integer)
    labelled: Mapped[int] = mapped_column(Integer)
    expired_labels: Mapped[int] = mapped_column(Integer)
    label_delay_hours: Mapped[dict[str, float] | None] = mapped_column(JsonDocument, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    subgroups: Mapped[list[dict[str, Any]]] = mapped_column(JsonDocument)
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    """The label-free estimate (rolling window only): values, trust, comparison with realised."""
    config_fingerprint: Mapped[str] = mapped_column(String(64))


class PerformanceBucketRow(Base):
    """Sufficient statistics of the labelled predictions of one key in one time bucket.

    The key is (site, model, version, finding, subgroup field and value, operating threshold);
    ``bucket`` is a UTC day of prediction time (``YYYY-MM-DD``) or ``total`` (every day: the
    cumulative window in one row). Kept up to date in the batch transaction that joins a label
    (``monitor/service/performance/summaries.py``); docs/performance.md says how they merge.
    """

    __tablename__ = "performance_buckets"
    __table_args__ = (
        # A refresh reads each stream's rows of a few buckets (``total`` and the rolling
        # window's days) across all its subgroups: the primary key puts the subgroup before the
        # bucket, so without this index the read scanned every day of the stream's history.
        Index(
            "ix_performance_buckets_stream_bucket",
            "site_id",
            "model_name",
            "model_version",
            "finding",
            "bucket",
        ),
        # ... and every stream's all-cases ``total`` row, to see which streams changed.
        Index(
            "ix_performance_buckets_totals",
            "site_id",
            "model_name",
            "model_version",
            "finding",
            postgresql_where=text("bucket = 'total' AND subgroup_field = ''"),
            sqlite_where=text("bucket = 'total' AND subgroup_field = ''"),
        ),
    )

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    finding: Mapped[str] = mapped_column(String(64), primary_key=True)
    subgroup_field: Mapped[str] = mapped_column(String(64), primary_key=True)
    """Empty for all cases; else a metadata field whose value the subgroup shares."""
    subgroup_value: Mapped[str] = mapped_column(String(128), primary_key=True)
    """The field's value (empty with a field: the cases missing it)."""
    bucket: Mapped[str] = mapped_column(String(10), primary_key=True)
    """Before the threshold in the key: the latest days of a key are one backward index scan."""
    threshold: Mapped[float] = mapped_column(Float, primary_key=True)
    """The events' operating threshold; -1 for events that carried none (scored at 0.5)."""
    summary: Mapped[bytes] = mapped_column(LargeBinary)
    """``PerformanceSummary.to_bytes()`` (the key and layout are the row's; format 2, or format 1
    in rows not rewritten since 2026-12-07: ``performance/_summary_bytes.py``)."""
    delays: Mapped[dict[str, int]] = mapped_column(JsonDocument)
    """Label delay sketch (``DelaySketch.to_dict()``); empty in subgroup rows."""
    n: Mapped[int] = mapped_column(Integer)
    """Labelled cases summarised (``summary.n``): rolling windows pick their days by it."""
    first_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    """Prediction time of the earliest case summarised (None while empty)."""
    last_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class PredictionCountRow(Base):
    """Predictions of one (site, model, version) per UTC day, and in all (``bucket`` total):
    the denominator of label completeness, without counting ``inference_events``."""

    __tablename__ = "prediction_counts"

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(10), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger())


class PerformanceAlarmRow(Base):
    """Alarm state of the performance rules of one (site, model version, finding): one
    ``AlarmState`` per rule, the open alerts, the error-rate CUSUM and its label watermark."""

    __tablename__ = "performance_alarms"

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    finding: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class RetrainRequestRow(Base):
    """A request to train a candidate model, from an alert (unique per model and alert) or
    from a person (who and why); the job that serves it updates status and details."""

    __tablename__ = "retrain_requests"
    __table_args__ = (
        Index("uq_retrain_requests_alert", "model_name", "alert_id", unique=True),
        Index("ix_retrain_requests_model", "model_name", "created_at"),
        Index("ix_retrain_requests_status", "status", "created_at"),
    )

    request_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    trigger: Mapped[str] = mapped_column(String(16))
    """"alert" or "manual"."""
    alert_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    """pending -> running -> succeeded | failed."""
    policy_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    """Also the job's heartbeat: a running request not updated within the lease is reclaimed."""
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    """The job's stage and counts (cases, epochs), and at the end the champion/candidate
    comparison on the validation side."""
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The registered model version (alias ``challenger``) the job produced."""
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ChangeLogRow(Base):
    """One governed event in the append-only, hash-chained change log.

    ``entry_hash`` = SHA-256(``prev_hash`` + canonical JSON of the entry); the first entry's
    ``prev_hash`` is 64 zeros. On PostgreSQL triggers refuse UPDATE, DELETE and TRUNCATE.
    """

    __tablename__ = "change_log"
    __table_args__ = (Index("ix_change_log_action", "action", "recorded_at"),)

    seq: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    plan_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    """Which audit key signed the entry (SHA-256 of its raw public key); None only for entries
    written before entries were signed (``ChangeLogUnsignedRow``)."""
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    """Hex of the Ed25519 signature of ``entry_hash`` (``audit/keys.py``)."""


class ChangeLogUnsignedRow(Base):
    """How many entries the log held when entries began to be signed (migration 0014): those
    are reported as unsigned history; any other unsigned entry is a forgery. One row; no row
    (an emptied test database) means none."""

    __tablename__ = "change_log_unsigned"

    through_seq: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(Timestamp)


class ChangeLogCheckpointRow(Base):
    """A signed checkpoint: Ed25519 over ``"{seq}:{head_hash}"`` (``audit.signing``)."""

    __tablename__ = "change_log_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(Timestamp)
    key_id: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the raw public key: which key signed."""
    signature: Mapped[str] = mapped_column(String(128))
    """Hex of the 64-byte Ed25519 signature."""


class CandidateRow(Base):
    """A registered model version under PCCP change control.

    ``status``: candidate -> passed | failed | out_of_scope (the gate's outcome) -> approved ->
    promoted -> rolled_back; a candidate that is not yet promoted may be rejected. Every
    transition runs in one transaction with this row locked (``pccp.store``;
    the rules are ``pccp.lifecycle``'s).
    """

    __tablename__ = "candidates"
    __table_args__ = (
        Index("uq_candidates_version", "model_name", "model_version", unique=True),
        Index("ix_candidates_status", "status", "created_at"),
    )

    candidate_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    site_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The site whose alert asked for the retrain, if any (site managers see their own)."""
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    proposed_by: Mapped[str] = mapped_column(String(128))
    triggered_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """Who asked for the retrain that produced it (a person, or ``retrain-policy``)."""
    status: Mapped[str] = mapped_column(String(16))
    plan_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    plan_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    plan_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approvals_required: Mapped[int | None] = mapped_column(Integer, nullable=True)
    champion_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The champion the gate compared against."""
    report: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    """The gate's evidence (``pccp.gate.GateReport`` as JSON); aggregates only."""
    previous_champion: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Set on promotion: the version a rollback restores."""
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    evaluated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    promoted_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    promoted_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    rolled_back_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    rolled_back_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class SignatureRow(Base):
    """An electronic signature on a candidate: an approval or a rejection, with who signed,
    when, the meaning of the signature and the signer's reason (21 CFR 11.50)."""

    __tablename__ = "candidate_signatures"
    __table_args__ = (
        Index("uq_candidate_signatures_signer", "candidate_id", "signer", unique=True),
    )

    signature_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    candidate_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    signer: Mapped[str] = mapped_column(String(128))
    signer_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    """The printed name (the token's name claim); None on signatures made before it was kept."""
    decision: Mapped[str] = mapped_column(String(16))
    """"approve" or "reject"."""
    meaning: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(Timestamp)
    change_log_seq: Mapped[int] = mapped_column(BigInteger())
    """The change-log entry that records this signature."""


JOB_STORE_TABLE = "apscheduler_jobs"
"""The scheduler's job store (``monitor.service.scheduler``): APScheduler's own table, not a
model. ``radsentry migrate`` creates it, so that the schema's owner owns it and the services
only get privileges on it (``monitor.service.roles``)."""
