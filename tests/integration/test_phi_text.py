"""Identifiers typed into allowlisted text fields, on real DICOM files and real processes.

The edge: ``radsentry extract`` in a subprocess drops each such field and names it, and writes
neither the values nor the input paths. The consumer: a ``radsentry consume`` process, given
events whose text fields carry the same values (an edge that bypassed the screen), dead-letters
each one with the field named and the value redacted, in the DLQ topic, the dead_letters table
and its log alike (docs/security.md, "Edge: DICOM free text").
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select, text

from monitor.dicom import extract_features
from monitor.events import REDACTED, InferenceEvent, Prediction, to_json
from monitor.service.ingest.edge import file_key_for
from monitor.service.kafka import make_producer
from monitor.service.models import Base, DeadLetter, InferenceEventRow
from monitor.service.settings import KafkaSettings
from tests.faults.harness import Process, radsentry_env
from tests.integration.helpers import read_all, wait_for
from tests.phi_files import CLEAN, HOSTILE, NAME_IN_PATH, SECRETS, write_files

pytestmark = pytest.mark.integration

SITE_KEY = "integration-site-key-of-at-least-32-bytes"
RADSENTRY = str(Path(sys.executable).with_name("radsentry"))


def _assert_no_secret(where: str, content: str | bytes, *also: str) -> None:
    haystack = content.decode(errors="replace") if isinstance(content, bytes) else content
    for secret in (*SECRETS, *also):
        assert secret not in haystack, f"{secret!r} leaked into {where}"


def test_extract_process_drops_identifier_text_and_writes_no_path(tmp_path: Path) -> None:
    clean, hostile = write_files(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env |= {"RADSENTRY_EDGE__HMAC_KEY": SITE_KEY, "RADSENTRY_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [RADSENTRY, "extract", "--file-key", str(clean.parent)],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    by_key = {line["file_key"]: line for line in lines}
    assert by_key[file_key_for(clean, SITE_KEY.encode())]["phi_dropped"] == {}
    metadata = by_key[file_key_for(clean, SITE_KEY.encode())]["metadata"]
    assert {keyword: metadata[keyword] for keyword in CLEAN} == CLEAN
    for kind, case in HOSTILE.items():
        line = by_key[file_key_for(hostile[kind], SITE_KEY.encode())]
        assert line["phi_dropped"] == {case.keyword: case.rule.value}, kind
        assert case.keyword not in line["metadata"], kind
    assert b"5 text fields dropped as possible PHI" in done.stderr
    for stream, written in (("stdout", done.stdout), ("stderr", done.stderr)):
        _assert_no_secret(f"extract's {stream}", written, NAME_IN_PATH, str(tmp_path))


def _smuggled(base: InferenceEvent) -> list[dict[str, Any]]:
    """One event per hostile case: the real extractor's event with the value put back."""
    documents = []
    for case in HOSTILE.values():
        document = orjson.loads(to_json(base))
        document["event_id"] = str(uuid.uuid4())
        document["metadata"][case.keyword] = case.value
        documents.append(document)
    return documents


def test_consumer_process_dead_letters_identifier_text_redacted(
    pg_engine: Engine, pg_url: str, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    clean, _ = write_files(tmp_path)
    features = extract_features(clean, SITE_KEY.encode())
    event = InferenceEvent(
        event_id=uuid.uuid4(),
        site_id="site-phi",
        model_name="cxr-lesion",
        model_version="1.0.0",
        occurred_at=datetime(2026, 4, 7, 9, 30, tzinfo=UTC),
        study_key=features.study_key,
        modality=features.modality,
        metadata=features.metadata,
        pixel_stats=features.pixel_stats,
        prediction=Prediction(scores={"lesion": 0.42}, threshold=0.5),
    )
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    topic = kafka_settings.inference_topic
    for document in (orjson.loads(to_json(event)), *_smuggled(event)):
        producer.send(topic, key=b"site-phi", value=orjson.dumps(document))
    producer.flush()
    producer.close()

    env = radsentry_env(pg_url, tmp_path / "data", kafka=kafka_settings)
    consumer = Process(["consume", "--metrics-port", "0"], env, tmp_path / "consume.log").start()
    try:
        wait_for(lambda: _dead_letters(pg_engine) == len(HOSTILE), 90, "the dead letters")
    finally:
        exit_code = consumer.stop()
    assert exit_code == 0, consumer.text()[-3000:]

    with pg_engine.connect() as connection:
        stored = connection.scalars(select(InferenceEventRow.event_id)).all()
        rows = connection.execute(select(DeadLetter.code, DeadLetter.reason)).all()
    assert [str(event_id) for event_id in stored] == [str(event.event_id)]
    assert {code for code, _ in rows} == {"phi"}
    for case in HOSTILE.values():
        assert any(reason.startswith(f"metadata.{case.keyword}") for _, reason in rows)

    dead = read_all(kafka_settings.bootstrap_servers, kafka_settings.dlq_topic(topic), 5)
    assert len(dead) == len(HOSTILE)
    for record in dead:
        headers = dict(record.headers)
        assert headers["radsentry-code"] == b"phi"
        redacted = orjson.loads(record.value)
        keyword = headers["radsentry-reason"].decode().split(":")[0].split(".")[1]
        assert redacted["metadata"][keyword] == REDACTED
        assert redacted["study_key"] == features.study_key  # valid fields kept for replay
        _assert_no_secret("a dead-letter value", record.value)
        _assert_no_secret("dead-letter headers", b"\n".join(v for _, v in record.headers))
    _assert_no_secret("the database", _database_text(pg_engine))
    log = consumer.text()
    assert log.count("record dead-lettered") == len(HOSTILE)
    _assert_no_secret("the consumer's log", log)


def _dead_letters(engine: Engine) -> int:
    with engine.connect() as connection:
        return len(connection.scalars(select(DeadLetter.offset)).all())


def _database_text(engine: Engine) -> str:
    with engine.connect() as connection:
        return "\n".join(
            str(row)
            for table in Base.metadata.sorted_tables
            for row in connection.execute(
                text(f'SELECT row_to_json(t)::text FROM "{table.name}" t')
            )
        )
