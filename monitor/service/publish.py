"""Publishing events to their topics (the simulator and tests use it; so can an edge)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from kafka import KafkaProducer

from monitor.events import Event, InferenceEvent, to_json
from monitor.service.settings import KafkaSettings


def topic_for(event: Event, settings: KafkaSettings) -> str:
    return settings.inference_topic if isinstance(event, InferenceEvent) else settings.labels_topic


def publish(
    producer: KafkaProducer,
    events: Iterable[Event],
    settings: KafkaSettings,
    *,
    rate: float | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Send events keyed by ``site_id`` (so a site's events stay in order on one partition).

    ``rate`` paces sending in events per second (None: as fast as possible). Returns the number
    sent once the broker has acknowledged all of them.
    """
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    sent = 0
    for event in events:
        if stop is not None and stop.is_set():
            break
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.send(topic_for(event, settings), key=event.site_id.encode(), value=to_json(event))
        sent += 1
    producer.flush()
    return sent
