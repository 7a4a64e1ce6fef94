"""Ingestion against the real bundled broker and a real PostgreSQL database."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select, text

from monitor.events import MAX_EVENT_BYTES, to_json
from monitor.service.health import Health
from monitor.service.kafka import make_producer
from monitor.service.models import DeadLetter, InferenceEventRow
from monitor.service.settings import KafkaSettings
from tests.factories import inference_event, label_event, study_key
from tests.integration.helpers import (
    committed_lag,
    count_rows,
    ingest_until,
    read_all,
    send,
)

pytestmark = pytest.mark.integration


def test_duplicates_are_stored_once(pg_engine: Engine, kafka_settings: KafkaSettings) -> None:
    n = 600
    events = [inference_event(i, site_id=f"site-0{i % 3 + 1}") for i in range(n)]
    resent = events[::10]  # 10% published twice, as a retrying producer would
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, events + resent)

    stats = ingest_until(pg_engine, kafka_settings, lambda s: s.stored + s.duplicates == n + 60)

    assert count_rows(pg_engine)["inference_events"] == n
    assert count_rows(pg_engine)["processed_events"] == n
    assert stats.duplicates == len(resent)
    topic = kafka_settings.inference_topic
    assert REGISTRY.get_sample_value("radsentry_events_duplicate_total", {"topic": topic}) == 60
    consumed = [
        REGISTRY.get_sample_value(
            "radsentry_events_consumed_total", {"topic": topic, "site_id": f"site-0{k}"}
        )
        for k in (1, 2, 3)
    ]
    assert consumed == [200, 200, 200]
    assert committed_lag(kafka_settings.bootstrap_servers, kafka_settings) == 0

    # A later redelivery of already stored events (e.g. a replay from offset 0) changes nothing.
    send(producer, kafka_settings, events[:100])
    stats = ingest_until(pg_engine, kafka_settings, lambda s: s.duplicates == 100)
    assert stats.stored == 0
    assert count_rows(pg_engine)["inference_events"] == n
    producer.close()


def test_labels_are_stored_with_their_study_key(
    pg_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, [inference_event(i) for i in range(20)])
    send(producer, kafka_settings, [label_event(i, label=i % 2) for i in range(20)])
    ingest_until(pg_engine, kafka_settings, lambda s: s.stored == 40)
    with pg_engine.connect() as connection:
        rows = connection.execute(text("SELECT study_key, labels FROM label_events")).all()
    assert {key for key, _ in rows} == {study_key(i) for i in range(20)}
    assert sorted(labels["lesion"] for _, labels in rows) == [0] * 10 + [1] * 10
    producer.close()


def _poison_records() -> dict[str, tuple[bytes, str]]:
    """Refused records and the reject code each must get."""
    good = orjson.loads(to_json(inference_event(10_000)))
    wrong_version = {**good, "schema": "inference-event/v3"}
    nan_score = to_json(inference_event(10_001)).replace(b'"lesion":0.3', b'"lesion":NaN')
    phi_metadata = {**good, "metadata": {**good["metadata"], "PatientName": "Doe^John"}}
    out_of_range = {**good, "prediction": {"scores": {"lesion": 1.7}}}
    return {
        "garbage": (b"\x00\x9f\x92\x96 not json", "not_json"),
        "wrong_version": (orjson.dumps(wrong_version), "unknown_schema"),
        "nan_score": (nan_score, "not_json"),
        "phi_metadata": (orjson.dumps(phi_metadata), "invalid"),
        "out_of_range": (orjson.dumps(out_of_range), "invalid"),
        "label_on_inference_topic": (to_json(label_event(5)), "wrong_topic"),
        "oversize": (b" " * (MAX_EVENT_BYTES + 1), "oversize"),
    }


def test_poison_records_go_to_the_dead_letter_topic(
    pg_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    poison = _poison_records()
    topic = kafka_settings.inference_topic
    # All on one partition (same key), interleaved with good events, so ordering is checkable.
    for i, (raw, _) in enumerate(poison.values()):
        producer.send(topic, key=b"site-01", value=to_json(inference_event(i)))
        producer.send(topic, key=b"site-01", value=raw)
    producer.send(topic, key=b"site-01", value=to_json(inference_event(99)))
    producer.flush()

    stats = ingest_until(
        pg_engine, kafka_settings, lambda s: s.stored == len(poison) + 1 and s.dead_lettered
    )

    assert stats.dead_lettered == len(poison)
    assert REGISTRY.get_sample_value(
        "radsentry_events_dead_lettered_total", {"topic": topic, "reason": "invalid"}
    ) == sum(code == "invalid" for _, code in poison.values())
    assert count_rows(pg_engine)["inference_events"] == len(poison) + 1
    assert committed_lag(kafka_settings.bootstrap_servers, kafka_settings) == 0
    with pg_engine.connect() as connection:
        ledger = connection.execute(select(DeadLetter.__table__).order_by(DeadLetter.offset)).all()
    assert [row.code for row in ledger] == [code for _, code in poison.values()]
    assert "NaN" in ledger[2].reason and "metadata.PatientName" in ledger[3].reason

    dead = read_all(kafka_settings.bootstrap_servers, kafka_settings.dlq_topic(topic), len(poison))
    assert len(dead) == len(poison)
    by_offset = {int(dict(r.headers)["radsentry-source-offset"]): r for r in dead}
    for row in ledger:
        headers = dict(by_offset[row.offset].headers)
        assert headers["radsentry-reason"].decode() == row.reason
        assert headers["radsentry-code"].decode() == row.code
        assert headers["radsentry-source-partition"].decode() == str(row.partition)
    # The PHI value never reaches the dead-letter topic; the rest of the record is kept.
    phi_record = by_offset[ledger[3].offset]
    assert b"Doe^John" not in phi_record.value
    assert orjson.loads(phi_record.value)["metadata"]["PatientName"] == "[redacted]"
    # Undecodable payloads are fingerprinted, not copied.
    assert by_offset[ledger[0].offset].value == b""
    producer.close()


def test_database_outage_rewinds_and_loses_nothing(
    pg_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    """A batch whose transaction fails is retried from its first offset, not skipped; the
    consumer stays live but is not ready meanwhile (its /readyz)."""
    with pg_engine.begin() as connection:
        connection.execute(text("ALTER TABLE inference_events RENAME TO inference_events_away"))
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, [inference_event(i) for i in range(50)])
    health = Health(stale_after_s=60)
    during: list[dict[str, object]] = []

    def heal_after_failures(stats: object) -> bool:
        if getattr(stats, "failures", 0) >= 2:
            if not during:
                during.append(health.report())
            with pg_engine.begin() as connection:
                connection.execute(
                    text("ALTER TABLE IF EXISTS inference_events_away RENAME TO inference_events")
                )
        return getattr(stats, "stored", 0) == 50

    stats = ingest_until(pg_engine, kafka_settings, heal_after_failures, health=health)
    assert stats.failures >= 2
    assert during[0]["live"] and not during[0]["ready"] and during[0]["state"] == "retrying"
    after = health.report()
    assert after["ready"] and after["state"] == "consuming"
    with pg_engine.connect() as connection:
        stored = connection.scalars(select(InferenceEventRow.event_id)).all()
    assert sorted(e.int for e in stored) == [i + 1 for i in range(50)]
    producer.close()


@pytest.mark.parametrize("idempotent", [True, False])
def test_the_producer_is_idempotent_unless_turned_off(
    kafka_settings: KafkaSettings, idempotent: bool
) -> None:
    settings = kafka_settings.model_copy(update={"enable_idempotence": idempotent})
    producer = make_producer(settings.bootstrap_servers, settings)
    try:
        assert producer.config["enable_idempotence"] is idempotent
        assert producer.config["acks"] in ("all", -1)
    finally:
        producer.close()
