"""Factories for kafka-python clients, and the records they deliver; nothing is created at
import time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from monitor.events import MAX_EVENT_BYTES, Event
from monitor.service.broker import is_reachable
from monitor.service.settings import KafkaSettings

log = structlog.get_logger(__name__)


def make_consumer(bootstrap: list[str], settings: KafkaSettings) -> KafkaConsumer:
    """A group member on the inference and label topics that never commits on its own."""
    return KafkaConsumer(
        settings.inference_topic,
        settings.labels_topic,
        bootstrap_servers=bootstrap,
        group_id=settings.group_id,
        client_id=settings.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_records=settings.max_poll_records,
        request_timeout_ms=max(settings.request_timeout_ms, settings.session_timeout_ms + 5_000),
        # Fetch a little more than the contract allows, so oversize records are seen and refused.
        max_partition_fetch_bytes=2 * MAX_EVENT_BYTES,
    )


def make_producer(bootstrap: list[str], settings: KafkaSettings) -> KafkaProducer:
    """A producer that waits for every in-sync replica (a dead letter must not be lost)."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=settings.enable_idempotence,
        linger_ms=5,
        retries=5,
        max_request_size=2 * MAX_EVENT_BYTES,
        request_timeout_ms=settings.request_timeout_ms,
    )


def ensure_topics(
    bootstrap: list[str], names: Iterable[str], partitions: int = 3, replication: int = 1
) -> None:
    """Create missing topics (idempotent). Production clusters usually pre-create them."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="radsentry-admin")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, partitions, replication) for name in names if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
            log.info("topics created", topics=[t.name for t in missing])
    finally:
        admin.close()


def broker_reachable(bootstrap: list[str], timeout_ms: int = 2_000) -> bool:
    """True when a broker answers a metadata request (fast False when none accepts TCP)."""
    if not any(is_reachable(address, timeout=timeout_ms / 1000) for address in bootstrap):
        return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="radsentry-readyz",
            request_timeout_ms=timeout_ms,
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def all_topics(settings: KafkaSettings) -> list[str]:
    topics = [settings.inference_topic, settings.labels_topic]
    return [*topics, *(settings.dlq_topic(t) for t in topics), settings.alerts_topic]


@dataclass(frozen=True, slots=True)
class Delivered:
    """A valid event and where it came from."""

    event: Event
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused record: its coordinates, reason and a fingerprint of its payload."""

    topic: str
    partition: int
    offset: int
    code: str
    reason: str
    payload_sha256: str
    payload_bytes: int
