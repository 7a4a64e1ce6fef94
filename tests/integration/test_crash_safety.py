"""kill -9 of the consumer process mid-stream, restart: every event stored exactly once.

Then SIGTERM: the consumer drains its batch, commits and exits 0 with nothing left uncommitted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from monitor.service.kafka import make_producer
from monitor.service.settings import KafkaSettings
from tests.factories import inference_event, label_event
from tests.integration.helpers import committed_lag, count_rows, send, wait_for

pytestmark = pytest.mark.integration

N_INFERENCE = 4_000
N_LABELS = 1_000


def _start_consumer(
    pg_url: str, settings: KafkaSettings, tmp_path: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RADSENTRY_DATA_DIR": str(tmp_path),
        "RADSENTRY_DATABASE__URL": pg_url,
        "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": f'["{settings.bootstrap_servers[0]}"]',
        "RADSENTRY_KAFKA__INFERENCE_TOPIC": settings.inference_topic,
        "RADSENTRY_KAFKA__LABELS_TOPIC": settings.labels_topic,
        "RADSENTRY_KAFKA__GROUP_ID": settings.group_id,
        "RADSENTRY_KAFKA__SESSION_TIMEOUT_MS": "6000",
        # Small batches so that the kill lands between many commits.
        "RADSENTRY_KAFKA__MAX_POLL_RECORDS": "100",
        "RADSENTRY_LOGGING__JSON_OUTPUT": "true",
    }
    radsentry = Path(sys.executable).with_name("radsentry")
    log = (tmp_path / "consumer.log").open("ab")
    return subprocess.Popen([str(radsentry), "consume"], env=env, stdout=log, stderr=log)


def test_kill_9_mid_stream_then_restart_stores_each_event_once(
    pg_engine: Engine, pg_url: str, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(
        producer, kafka_settings, [inference_event(i, f"site-0{i % 4}") for i in range(N_INFERENCE)]
    )
    send(producer, kafka_settings, [label_event(i, f"site-0{i % 4}") for i in range(N_LABELS)])
    producer.close()

    first = _start_consumer(pg_url, kafka_settings, tmp_path)
    wait_for(lambda: count_rows(pg_engine)["processed_events"] >= 500, 60, "a first share stored")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    stored_at_kill = count_rows(pg_engine)["processed_events"]
    assert stored_at_kill < N_INFERENCE + N_LABELS, "the kill must land mid-stream"

    second = _start_consumer(pg_url, kafka_settings, tmp_path)
    try:
        wait_for(
            lambda: count_rows(pg_engine)["processed_events"] == N_INFERENCE + N_LABELS,
            120,
            "every event stored after the restart",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        exit_code = second.wait(60)

    counts = count_rows(pg_engine)
    assert counts["inference_events"] == N_INFERENCE
    assert counts["label_events"] == N_LABELS
    assert counts["dead_letters"] == 0
    assert exit_code == 0, (tmp_path / "consumer.log").read_text()[-2000:]
    assert committed_lag(kafka_settings.bootstrap_servers, kafka_settings) == 0
    assert "stopped cleanly" in (tmp_path / "consumer.log").read_text()
