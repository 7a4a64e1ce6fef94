"""Database tables (SQLAlchemy 2 typed models). Rows never leave the store modules.

Only contract fields are stored: pseudonymous study keys, allowlisted metadata and pixel
statistics. Dead letters keep where the record was and why it was refused, never its payload.
Schema changes go through Alembic (``monitor/service/migrations``); a test keeps the two equal.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonDocument = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)


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

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    code: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    payload_bytes: Mapped[int] = mapped_column(Integer)
    dead_lettered_at: Mapped[datetime] = mapped_column(Timestamp)
